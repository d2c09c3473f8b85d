"""Relabel: plan which episodes of a source lack labels from this model version, run the
relabel stage over partitions of them on an engine, then consolidate and (optionally)
publish. Reruns skip what is labelled; new source episodes are labelled on the next run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from pipelines import fs as fsx
from pipelines.driver import new_run_id, run_partitions
from pipelines.engines.base import Engine
from pipelines.errors import EpisodeError
from pipelines.inference import ModelSpec
from pipelines.labels_store import LabelsStore
from pipelines.lease import OutputLease
from pipelines.sources import Source, open_source, plan_partitions
from pipelines.stages.relabel import LabelEpisode, LabelPartition, LabelTask
from pipelines.store import utcnow
from pipelines.version import code_version
from schemas import episode_store as layout
from schemas import labels as spec
from schemas.episode_store import episode_id


@dataclass(frozen=True)
class RelabelConfig:
    source: str  # any dataset pipelines.sources reads, or an episode store
    dst: str
    model: ModelSpec = ModelSpec()
    camera: str | None = None  # default: each source's default camera (the first third-person one)
    camera_by_embodiment: tuple[tuple[str, str], ...] = ()  # (embodiment, camera) pairs, before `camera`
    partition_frames: int = 2000  # frames per partition
    on_error: str = "fail"  # fail | skip
    advantage_horizon: int = spec.ADVANTAGE_HORIZON
    batch_size: int = 64
    publish: bool = True  # update <dst>/latest.json and <dst>/wvm_progress.parquet at the end


@dataclass
class RelabelPlan:
    source_uri: str
    tasks: list[LabelTask]
    source_episodes: int
    already_labelled: int
    current: set[tuple[str, str]]


@dataclass
class RelabelSummary:
    run_id: str
    model_key: str
    model_version: str
    checkpoint_hash: str
    source_episodes: int
    already_labelled: int
    episodes_labelled: int
    frames_labelled: int
    windows: int
    failed: int
    seconds: float
    frames_per_second: float
    outputs: dict = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["failures"] = [f"{f[layout.FILE]}: episode {f[layout.SOURCE_EPISODE_INDEX]}: {f[layout.REASON]}" for f in self.failures]
        return d


def plan_relabel(config: RelabelConfig, source: Source, episodes: list, done: set[tuple[str, str]]) -> RelabelPlan:
    """Partitions of the source's episodes this model version has not labelled (same id and
    fingerprint), as ingest plans them (pipelines.sources.plan_partitions)."""
    ids = {(e.source_uri, e.index): episode_id(e.source_uri, e.index) for e in episodes}
    current = {(ids[e.source_uri, e.index], e.fingerprint) for e in episodes}
    partitions, already = plan_partitions(episodes, lambda e: (ids[e.source_uri, e.index], e.fingerprint) in done, config.partition_frames, source)
    tasks = []
    for partition in partitions:
        label_episodes, rows = [], 0
        for e in partition.episodes:
            context = source.context(e)
            # progress rows keep the source's own row layout where it has one (joins row for row)
            row_layout = source.row_layout(e)
            offset = row_layout[1] if row_layout else rows
            label_episodes.append(
                LabelEpisode(
                    episode_id=ids[e.source_uri, e.index],
                    fingerprint=e.fingerprint,
                    source_uri=e.source_uri,
                    episode_index=e.index,
                    task=e.task,
                    embodiment=context.embodiment,
                    fps=context.fps,
                    length=e.length,
                    camera=_camera(config, context, e),
                    offset=offset,
                    source=e,
                    has_source_index=context.has_global_index,
                )
            )
            rows = row_layout[2] if row_layout else rows + e.length
        tasks.append(LabelTask(partition.partition_id, rows, tuple(label_episodes)))
    return RelabelPlan(source.uri, tasks, len(episodes), already, current)


def _camera(config: RelabelConfig, context, episode) -> str:
    camera = dict(config.camera_by_embodiment).get(context.embodiment, config.camera)
    if camera is None:
        return context.cameras[0]
    if camera not in context.cameras:
        raise EpisodeError(f"camera {camera!r} not in source; it has {list(context.cameras)}", file=episode.file, episode=episode.index)
    return camera


def run_relabel(config: RelabelConfig, engine: Engine, *, progress: bool = True, on_progress=None) -> RelabelSummary:
    """Label what this model version lacks. `on_progress(done, total)` is called as partitions finish."""
    started = time.monotonic()
    run_id = new_run_id()
    model = config.model
    if model.checkpoint:
        model = replace(model, checkpoint=fsx.absolute(model.checkpoint))
    config = replace(config, source=fsx.absolute(config.source), dst=fsx.absolute(config.dst), model=model)
    # Who answers decides where the labels go: ask the model before planning anything.
    version, checkpoint_hash = config.model.handler().identity()
    key = spec.model_key(version, checkpoint_hash)
    source = open_source(config.source)  # a bad source fails here, before the output exists
    episodes = source.episodes()
    labels_store = LabelsStore(config.dst, create=True)
    # one writer at a time: a second relabel into the same output gets a clear OutputBusy
    with OutputLease(config.dst, "relabel"):
        labels = labels_store.version(key)
        labels.ensure(
            {
                spec.MODEL_VERSION: version,
                spec.CHECKPOINT_HASH: checkpoint_hash,
                spec.CODE_VERSION: code_version(),
                spec.CREATED_AT: utcnow().isoformat(),
                spec.HORIZON: config.advantage_horizon,
            }
        )
        committed = labels.committed()
        done = set(zip(committed.column(spec.EPISODE_ID).to_pylist(), committed.column(spec.SOURCE_FINGERPRINT).to_pylist()))
        plan = plan_relabel(config, source, episodes, done)
        stage = LabelPartition(
            source_url=config.source,
            dst_url=config.dst,
            model_key=key,
            model=config.model,
            run_id=run_id,
            code_version=code_version(),
            advantage_horizon=config.advantage_horizon,
            batch_size=config.batch_size,
            skip_bad_episodes=config.on_error == "skip",
        )
        labelling_started = time.monotonic()
        tally = run_partitions(
            engine, stage, plan.tasks, source_uri=plan.source_uri, run_id=run_id, skip_failed=config.on_error == "skip",
            save_failures=lambda rows: labels.update_failures(rows, set()), progress=progress, on_progress=on_progress,
            desc=f"relabel ({engine.name}, {config.model.backend})",
        )  # fmt: skip
        episodes, frames, failures = tally.counts["episodes"], tally.counts["frames"], tally.failures
        labelling_seconds = time.monotonic() - labelling_started
        consolidated = labels.finalize(plan.current)
        labelled = set(labels.committed().column(spec.EPISODE_ID).to_pylist())
        labels.update_failures(failures, labelled)
        summary = RelabelSummary(
            run_id=run_id,
            model_key=key,
            model_version=version,
            checkpoint_hash=checkpoint_hash,
            source_episodes=plan.source_episodes,
            already_labelled=plan.already_labelled,
            episodes_labelled=episodes,
            frames_labelled=frames,
            windows=tally.counts["windows"],
            failed=len(failures),
            seconds=round(time.monotonic() - started, 2),
            frames_per_second=round(frames / labelling_seconds, 1) if labelling_seconds > 0 and frames else 0.0,
            outputs={"labels": labels.url, **consolidated},
            failures=failures,
        )
        latest = labels_store.latest()
        unchanged = episodes == 0 and latest is not None and latest.get(spec.LATEST_MODEL_KEY) == key
        if config.publish and not unchanged:
            labels_store.publish(key, {k: v for k, v in summary.as_dict().items() if k != "failures"})
        return summary
