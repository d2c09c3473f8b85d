"""The QC report of a labelling run: an HTML page with PNG plots, for people who would rather
look than read. Built from the published outputs only (labels directories and dead-letter
tables), so it can be rebuilt at any time with `wvm report`.

Contents: histogram of episode quality, progress curves of the best and worst episodes,
counts per embodiment and task, the failures table, and, when a labels directory holds an
earlier model version, the change of every episode's quality against it.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import fs as fsx
from pipelines.labels_store import LabelsStore
from pipelines.store import EpisodeStore, StoreError, utcnow
from schemas import episode_store as layout
from schemas import labels as spec

CURVES = 4  # best and worst episodes plotted
QUALITY_BEFORE = f"{spec.QUALITY}_before"  # an episode's quality under the previous model version


@dataclass
class LabelsSource:
    name: str
    labels: str  # labels directory
    store: str | None = None  # episode store (for its ingest failures)


def _version_tables(store: LabelsStore, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    version = store.version(key)
    path = version.path(spec.EPISODES_FILE)
    episodes = fsx.read_parquet(store.fs, path).to_pandas() if store.fs.exists(path) else pd.DataFrame()
    return episodes, version.failures().to_pandas()


def _curves(store: LabelsStore, key: str, episode_ids: list[str]) -> dict[str, np.ndarray]:
    curves = {}
    for table in store.version(key).frames():
        table = table.filter(pc.is_in(table.column(spec.EPISODE_ID), value_set=pa.array(episode_ids, pa.string())))
        for episode_id, group in table.to_pandas().groupby(spec.EPISODE_ID):
            curves[episode_id] = group.sort_values(spec.FRAME_INDEX)[spec.PROGRESS].to_numpy()
    return curves


def build_report(sources: list[LabelsSource], out: str | Path, title: str = "wvm QC report") -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    all_episodes, failures, changes, curves = [], [], [], {}
    versions_used = {}
    for source in sources:
        store = LabelsStore(source.labels)
        latest = store.latest()
        versions = store.versions()
        if not versions:
            continue
        key = latest[spec.LATEST_MODEL_KEY] if latest and latest.get(spec.LATEST_MODEL_KEY) in versions else versions[-1]
        versions_used[source.name] = key
        episodes, label_failures = _version_tables(store, key)
        if len(episodes):
            episodes["source"] = source.name
            all_episodes.append(episodes)
            ranked = episodes.sort_values(spec.QUALITY)
            chosen = list(ranked[spec.EPISODE_ID][: CURVES // 2]) + list(ranked[spec.EPISODE_ID][-(CURVES // 2) :])
            for episode_id, values in _curves(store, key, chosen).items():
                row = episodes[episodes[spec.EPISODE_ID] == episode_id].iloc[0]
                curves[(source.name, episode_id)] = (values, float(row[spec.QUALITY]), str(row[spec.TASK]))
        if len(label_failures):
            failures.append(label_failures.assign(source=source.name, phase="relabel"))
        if source.store:
            try:
                ingest_failures = EpisodeStore(source.store).failures().to_pandas()
            except StoreError:
                ingest_failures = pd.DataFrame()
            if len(ingest_failures):
                failures.append(ingest_failures.assign(source=source.name, phase="ingest"))
        previous = [v for v in versions if v != key]
        if previous and len(episodes):
            # the most recently created other version is "the previous model"
            created = {v: store.version(v).model_info().get(spec.CREATED_AT, "") for v in previous}
            before_key = max(previous, key=lambda v: created[v])
            before, _ = _version_tables(store, before_key)
            if len(before):
                columns = [spec.EPISODE_ID, spec.QUALITY, spec.FINAL_PROGRESS]
                merged = episodes.merge(before[columns], on=spec.EPISODE_ID, suffixes=("", "_before"))
                merged["source"], merged["previous_version"] = source.name, before_key
                changes.append(merged)
    episodes = pd.concat(all_episodes, ignore_index=True) if all_episodes else pd.DataFrame()
    failures = pd.concat(failures, ignore_index=True) if failures else pd.DataFrame()
    changes = pd.concat(changes, ignore_index=True) if changes else pd.DataFrame()

    images = []
    if len(episodes):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        groups = list(episodes.groupby("source"))
        # stacked, so that no source's bars hide another's where their qualities overlap
        ax.hist([g[spec.QUALITY] for _, g in groups], bins=np.linspace(0, 1, 21), stacked=True, label=[n for n, _ in groups])
        ax.set_xlabel("episode quality")
        ax.set_ylabel("episodes")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "plots" / "quality_histogram.png", dpi=110)
        plt.close(fig)
        images.append(("Episode quality", "plots/quality_histogram.png"))
    if curves:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for (name, episode_id), (values, quality, task) in sorted(curves.items(), key=lambda kv: -kv[1][1]):
            t = np.linspace(0, 1, len(values))
            ax.plot(t, values, lw=1.4, label=f"q={quality:.2f} {task[:24]} ({name})")
        ax.set_xlabel("episode time (normalised)")
        ax.set_ylabel("progress")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "plots" / "best_and_worst.png", dpi=110)
        plt.close(fig)
        images.append(("Progress of the best and worst episodes", "plots/best_and_worst.png"))
    if len(changes):
        fig, ax = plt.subplots(figsize=(3.6, 3.4))
        ax.scatter(changes[QUALITY_BEFORE], changes[spec.QUALITY], s=8, alpha=0.6)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlabel("quality, previous model")
        ax.set_ylabel("quality, this model")
        fig.tight_layout()
        fig.savefig(out / "plots" / "model_change.png", dpi=110)
        plt.close(fig)
        images.append(("Change against the previous model version", "plots/model_change.png"))

    if len(episodes):  # NaN (a model without a success judgement) is never judged failed
        success = episodes[spec.SUCCESS_PROBABILITY] if spec.SUCCESS_PROBABILITY in episodes else pd.Series(np.nan, episodes.index)
        episodes = episodes.assign(judged_failed=success < spec.JUDGED_FAILED_BELOW)
    counts = (
        episodes.groupby([spec.EMBODIMENT, spec.TASK]).agg(episodes=(spec.EPISODE_ID, "count"), frames=(spec.LENGTH, "sum"),
                                                           mean_quality=(spec.QUALITY, "mean"), judged_failed=("judged_failed", "sum")).reset_index()
        if len(episodes) else pd.DataFrame()
    )  # fmt: skip
    untrusted = (
        episodes[~episodes[spec.TRUSTED]].sort_values(spec.OOD_SCORE, ascending=False)
        if len(episodes) and spec.TRUSTED in episodes
        else pd.DataFrame()
    )
    summary = {
        "generated_at": utcnow().isoformat(),
        "versions": versions_used,
        "episodes": int(len(episodes)),
        "untrusted": int(len(untrusted)),
        "frames": int(episodes[spec.LENGTH].sum()) if len(episodes) else 0,
        "mean_quality": float(episodes[spec.QUALITY].mean()) if len(episodes) else None,
        "judged_failed": int(episodes["judged_failed"].sum()) if len(episodes) else 0,
        "failures": int(len(failures)),
        "by_source": {
            str(name): {
                "episodes": int(len(group)),
                "mean_quality": float(group[spec.QUALITY].mean()),
                "untrusted": int((~group[spec.TRUSTED]).sum()) if spec.TRUSTED in group else 0,
                "judged_failed": int(group["judged_failed"].sum()),
            }
            for name, group in (episodes.groupby("source") if len(episodes) else [])
        },
        "change": {
            "episodes_compared": int(len(changes)),
            "mean_quality_delta": float((changes[spec.QUALITY] - changes[QUALITY_BEFORE]).mean()) if len(changes) else None,
        },
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    (out / "report.html").write_text(_html(title, summary, images, counts, failures, changes, untrusted))
    return {**summary, "html": str(out / "report.html")}


def _table(frame: pd.DataFrame, columns: list[str], limit: int = 200) -> str:
    if not len(frame):
        return "<p>none</p>"
    frame = frame[[c for c in columns if c in frame.columns]].head(limit)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(f'{v:.3f}' if isinstance(v, float) else str(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _html(title, summary, images, counts, failures, changes, untrusted) -> str:
    style = "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;font-size:0.85em}" \
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}img{max-width:100%}"  # fmt: skip
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{summary['episodes']} episodes, {summary['frames']} frames, mean quality "
             f"{summary['mean_quality'] if summary['mean_quality'] is None else round(summary['mean_quality'], 3)}, "
             f"{summary['judged_failed']} judged failed by the model (success probability under {spec.JUDGED_FAILED_BELOW}), "
             f"{summary['failures']} failures, {summary['untrusted']} episodes flagged untrusted. Models: {html.escape(json.dumps(summary['versions']))}. "
             f"Generated {summary['generated_at']}.</p>"]  # fmt: skip
    if len(untrusted):
        parts.append(
            f"<h2>Labels not to trust: {len(untrusted)} episodes unlike the model's training data</h2>"
            f"<p>Their frames' out-of-distribution score is above {spec.OOD_TRUST_LIMIT} (1 = as unfamiliar as the "
            "least familiar 1% of the model's training episodes). Their labels are written, flagged <code>trusted = false</code> in "
            "episodes.parquet; check them before training on them.</p>"
            + _table(untrusted, ["source", spec.EPISODE_INDEX, spec.TASK, spec.EMBODIMENT, spec.OOD_SCORE, spec.SUCCESS_PROBABILITY, spec.QUALITY], 50)
        )
    for caption, path in images:
        parts.append(f"<h2>{html.escape(caption)}</h2><img src='{path}'>")
    parts.append("<h2>Episodes per embodiment and task</h2>" + _table(counts, [spec.EMBODIMENT, spec.TASK, "episodes", "frames", "mean_quality", "judged_failed"]))
    parts.append("<h2>Failures</h2>" + _table(failures, ["source", "phase", layout.SOURCE_EPISODE_INDEX, layout.FILE, layout.ERROR, layout.REASON, layout.FAILED_AT]))
    if len(changes):
        changes = changes.assign(delta=changes[spec.QUALITY] - changes[QUALITY_BEFORE]).sort_values("delta")
        parts.append(
            "<h2>Largest quality changes against the previous model</h2>"
            + _table(changes, ["source", spec.EPISODE_INDEX, spec.TASK, QUALITY_BEFORE, spec.QUALITY, "delta", "previous_version"], 20)
        )
    parts.append("</body></html>")
    return "\n".join(parts)
