"""The nightly flow: for every configured source, ingest what is new or changed, label what
the model has not labelled, build the QC report, and publish a `latest.json` pointer, last
and atomically. A night with nothing new writes nothing.

    <out>/stores/<source>/          episode store per source
    <out>/labels/<source>/          labels per source (versions/<model>/...)
    <out>/reports/<run_id>/         QC report (report.html + plots)
    <out>/runs/<run_id>.json        what each publishing run did
    <out>/latest.json               the last successful run: report, labels, model versions
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile

from prefect import flow
from prefect.artifacts import create_link_artifact, create_table_artifact

from flows.runtime import Progress, dask_task_runner, exclusive, summary_artifact
from pipelines import fs as fsx
from pipelines.engines.prefect import PrefectEngine
from pipelines.inference import ModelSpec
from pipelines.driver import new_run_id
from pipelines.ingest import IngestConfig, run_ingest
from pipelines.labels_store import LabelsStore
from pipelines.relabel import RelabelConfig, run_relabel
from pipelines.report import LabelsSource, build_report
from pipelines.store import utcnow

LATEST = "latest.json"


def source_name(uri: str) -> str:
    """A readable, unique directory name for a source: its last path part plus a short hash."""
    canonical = fsx.canonical_uri(uri)
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", canonical.rstrip("/").rsplit("/", 1)[-1])[:40]
    return f"{tail}-{hashlib.sha1(canonical.encode()).hexdigest()[:6]}"


def read_latest(out: str) -> dict | None:
    fs, root = fsx.filesystem(out)
    path = fsx.join(root, LATEST)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return json.load(f)


def source_rows(results: dict, quality: dict | None) -> list[dict]:
    """One row per source for the run's table artifact: what was new, labelled and failed
    tonight, how fast, and the labelled dataset's quality (None on a night with no report)."""
    rows = []
    for name, r in results.items():
        ingest, relabel = r["ingest"], r["relabel"]
        q = (quality or {}).get(name, {})
        rows.append({
            "source": name,
            "episodes new": ingest["episodes_written"],
            "episodes labelled": relabel["episodes_labelled"],
            "episodes failed": ingest["failed"] + relabel["failed"],
            "ingest frames/s": round(ingest["frames_written"] / ingest["seconds"], 1) if ingest["seconds"] else None,
            "relabel frames/s": round(relabel["frames_per_second"], 1),
            "episodes in labels": q.get("episodes"),
            "mean quality": round(q["mean_quality"], 3) if "mean_quality" in q else None,
            "untrusted": q.get("untrusted"),
        })  # fmt: skip
    return rows


def sources_artifact(results: dict, quality: dict | None) -> None:
    create_table_artifact(key="nightly-sources", table=source_rows(results, quality), description="per source: new, labelled, failed, throughput, quality")


@flow(name="wvm-nightly", task_runner=dask_task_runner())
def nightly_flow(
    sources: list[str],
    out: str,
    backend: str = "triton",
    triton_url: str = "127.0.0.1:8001",
    checkpoint: str | None = None,
    on_error: str = "skip",
    partition_frames: int = 1000,
) -> dict:
    run_id = new_run_id()
    model = ModelSpec(backend=backend, triton_url=triton_url, checkpoint=checkpoint)
    fs, root = fsx.filesystem(out)
    with exclusive(out):
        previous = read_latest(out)
        results, new_work, failures = {}, False, []
        for uri in sources:
            name = source_name(uri)
            store, labels = fsx.join(out, "stores", name), fsx.join(out, "labels", name)
            ingest = run_ingest(
                IngestConfig(source=uri, store=store, on_error=on_error, partition_frames=partition_frames),
                PrefectEngine(),
                progress=False,
                on_progress=Progress(f"ingest {name}"),
            )
            relabel = run_relabel(
                RelabelConfig(source=store, dst=labels, model=model, on_error=on_error, publish=False),
                PrefectEngine(),
                progress=False,
                on_progress=Progress(f"relabel {name}"),
            )
            new_work |= bool(ingest.episodes_written or relabel.episodes_labelled)
            new_work |= previous is None or previous["sources"].get(name, {}).get("model_key") != relabel.model_key
            failures += [{"source": name, "phase": "ingest", "failure": f} for f in ingest.as_dict()["failures"]]
            failures += [{"source": name, "phase": "relabel", "failure": f} for f in relabel.as_dict()["failures"]]
            results[name] = {
                "uri": uri,
                "store": store,
                "labels": labels,
                "model_key": relabel.model_key,
                "ingest": {k: v for k, v in ingest.as_dict().items() if k != "failures"},
                "relabel": {k: v for k, v in relabel.as_dict().items() if k not in ("failures", "outputs")},
            }
        if failures:
            create_table_artifact(key="nightly-failures", table=failures, description="episodes that failed tonight")
        if not new_work:
            summary = {"run_id": run_id, "new": False, "latest_run": previous["run_id"], "report": previous["report"]}
            sources_artifact(results, None)
            summary_artifact("nightly-summary", "Nightly run: nothing new", summary)
            return summary

        report_dir = fsx.join(out, "reports", run_id)
        report_sources = [LabelsSource(name, r["labels"], r["store"]) for name, r in results.items()]
        if fsx.local_path(fs, root):
            report = build_report(report_sources, fsx.join(root, "reports", run_id))
        else:  # object storage: build locally, upload the finished directory
            with tempfile.TemporaryDirectory() as tmp:
                report = build_report(report_sources, tmp)
                fs.put(tmp, fsx.join(root, "reports", run_id), recursive=True)
        report_html = fsx.join(report_dir, "report.html")
        for name, r in results.items():
            LabelsStore(r["labels"]).publish(r["model_key"], {"run_id": run_id, **r["relabel"]})
        summary = {
            "run_id": run_id,
            "new": True,
            "finished_at": utcnow().isoformat(),
            "report": report_html,
            "report_summary": {k: v for k, v in report.items() if k != "html"},
            "failures": len(failures),
            "sources": results,
        }
        fsx.write_json_atomic(fs, fsx.join(root, "runs", f"{run_id}.json"), summary)
        fsx.write_json_atomic(fs, fsx.join(root, LATEST), summary)  # last: the run is now published
    sources_artifact(results, report["by_source"])
    create_link_artifact(key="nightly-report", link=report_html, description="QC report of this run")
    summary_artifact("nightly-summary", f"Nightly run {run_id}", {k: v for k, v in summary.items() if k != "sources"})
    return summary
