"""The Prefect layer for real: flows under prefect_test_harness (a real Prefect server), Dask
task runners, a real Triton server, real stores."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import METAWORLD_MINI, copy_dataset
from pipelines.store import EpisodeStore
from schemas import labels as spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_server():
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def run_nightly(sources, out, triton_server, **kwargs):
    from flows.nightly import nightly_flow

    return nightly_flow(sources=[str(s) for s in sources], out=str(out), triton_url=triton_server.grpc_url, **kwargs)


def labelled_frames(out: Path):
    (labels,) = (out / "labels").iterdir()
    (version,) = [p for p in (labels / spec.VERSIONS_DIR).iterdir() if p.is_dir()]
    return pq.read_table(version / spec.FRAMES_DIR)


def files(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_nightly_end_to_end_then_nothing_new_then_new_episodes(prefect_server, triton_server, tmp_path):
    source = copy_dataset(METAWORLD_MINI, tmp_path / "source")
    episodes_file = source / "meta/episodes/chunk-000/file-000.parquet"
    full = pq.read_table(episodes_file)
    pq.write_table(full.slice(0, 12), episodes_file)  # the source starts with 12 of its 18 episodes
    out = tmp_path / "out"

    first = run_nightly([source], out, triton_server)
    assert first["new"] is True and first["failures"] == 0
    latest = json.loads((out / "latest.json").read_text())
    assert latest["run_id"] == first["run_id"]
    report = Path(latest["report"])
    assert report.exists() and (report.parent / "plots" / "quality_histogram.png").exists()
    assert "Failures" in report.read_text()
    assert labelled_frames(out).num_rows == sum(full.slice(0, 12)["length"].to_pylist())

    before = files(out)
    second = run_nightly([source], out, triton_server)
    assert second["new"] is False and second["latest_run"] == first["run_id"]
    assert files(out) == before  # nothing written

    pq.write_table(full, episodes_file)  # six new episodes arrive
    third = run_nightly([source], out, triton_server)
    (result,) = third["sources"].values()
    assert result["ingest"]["episodes_written"] == 6 and result["relabel"]["episodes_labelled"] == 6
    assert result["relabel"]["already_labelled"] == 12
    frames = labelled_frames(out)
    keys = set(zip(frames["episode_index"].to_pylist(), frames["frame_index"].to_pylist()))
    assert frames.num_rows == len(keys) == 524
    assert json.loads((out / "latest.json").read_text())["run_id"] == third["run_id"]


def test_a_failing_partition_is_retried_then_recorded_without_losing_the_others(prefect_server, triton_server, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    from flows.nightly import source_name
    from pipelines.ingest import IngestConfig, plan_ingest
    from schemas.episode_store import MANIFEST_DIR

    out = tmp_path / "out"
    store = out / "stores" / source_name(str(METAWORLD_MINI))
    plan = plan_ingest(IngestConfig(str(METAWORLD_MINI), str(store), partition_frames=200))
    doomed = plan.tasks[1]
    # A directory where the partition's commit file must go: every attempt crashes (OSError).
    (store / MANIFEST_DIR / f"{doomed.partition_id}.parquet").mkdir(parents=True)

    summary = run_nightly([METAWORLD_MINI], out, triton_server, partition_frames=200)
    doomed_episodes = {e.index for e in doomed.episodes}
    assert summary["failures"] == len(doomed_episodes)
    stored = set(EpisodeStore(str(store)).episodes().column("source_episode_index").to_pylist())
    assert stored == set(range(18)) - doomed_episodes  # the others are all there...
    assert set(labelled_frames(out)["episode_index"].to_pylist()) == stored  # ...and labelled
    failures = EpisodeStore(str(store)).failures().to_pylist()
    assert {f["source_episode_index"] for f in failures} == doomed_episodes
    assert all(f["error"] == "PartitionFailed" and "IsADirectoryError" in f["reason"] for f in failures)
    # task-run states reach the API in batches after the flow returns: poll, do not read once
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=doomed.partition_id)))
            if [r.run_count for r in runs] == [3] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert [r.run_count for r in runs] == [3]  # first attempt + 2 retries


def test_two_concurrent_runs_do_not_corrupt_the_output(prefect_server, triton_server, tmp_path):
    out = tmp_path / "out"
    results, errors = {}, []

    def run(name):
        try:
            results[name] = run_nightly([METAWORLD_MINI], out, triton_server, partition_frames=150)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # one run did the work; the other waited for the output's slot and then found nothing new
    assert sorted(r["new"] for r in results.values()) == [False, True]
    frames = labelled_frames(out)
    assert frames.num_rows == len(set(zip(frames["episode_index"].to_pylist(), frames["frame_index"].to_pylist()))) == 524
    (store,) = (out / "stores").iterdir()
    assert EpisodeStore(str(store)).episodes().num_rows == 18


def test_ingest_and_relabel_flows_on_an_open_x_embodiment_dataset(prefect_server, triton_server, tmp_path):
    """flows/ingest.py and flows/relabel.py as a deployment would run them: the real RLDS
    fixture into a store, then labelled through Triton; a rerun of each does nothing new."""
    from conftest import FIXTURES
    from flows.ingest import ingest_flow
    from flows.relabel import relabel_flow

    bridge, store, labels = FIXTURES / "bridge_rlds_debug", tmp_path / "store", tmp_path / "labels"
    ingested = ingest_flow(source=str(bridge), store=str(store))
    assert (ingested["episodes_written"], ingested["frames_written"], ingested["failed"]) == (50, 500, 0)
    labelled = relabel_flow(source=str(store), dst=str(labels), triton_url=triton_server.grpc_url)
    assert (labelled["episodes_labelled"], labelled["frames_labelled"], labelled["failed"]) == (50, 500, 0)
    (version,) = [p for p in (labels / spec.VERSIONS_DIR).iterdir() if p.is_dir()]
    frames = pq.read_table(version / spec.FRAMES_DIR)
    assert frames.num_rows == 500 and len(set(frames.column("episode_id").to_pylist())) == 50
    before = files(labels)
    assert ingest_flow(source=str(bridge), store=str(store))["already_stored"] == 50
    assert relabel_flow(source=str(store), dst=str(labels), triton_url=triton_server.grpc_url)["already_labelled"] == 50
    assert files(labels) == before


def test_the_temporary_prefect_server_dies_with_a_killed_nightly(tmp_path):
    # `wvm nightly` without PREFECT_API_URL starts its own Prefect server (flows.runtime); a
    # kill -9 of the nightly must not leave that server running as an orphan.
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from conftest import ROOT

    script = "from flows.runtime import local_prefect_server\nimport time\nwith local_prefect_server() as url:\n    print(url, flush=True)\n    time.sleep(600)\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = child.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        assert urllib.request.urlopen(f"{url}/health", timeout=10).status == 200
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
            except OSError:
                break  # the server is gone
            time.sleep(0.5)
        else:
            pytest.fail(f"the Prefect server at {url} outlived its killed parent")
    finally:
        child.kill()
