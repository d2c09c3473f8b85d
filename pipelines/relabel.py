"""Relabel: plan which episodes of a source lack labels from this model version, run the
relabel stage over partitions of them on an engine, then consolidate and (optionally)
publish. Reruns skip what is labelled; new source episodes are labelled on the next run."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from pipelines.engines.base import Engine
from pipelines.errors import EpisodeError, PartitionFailed
from pipelines.ingest import new_run_id
from pipelines.labels_store import LabelsStore
from pipelines.lease import OutputLease
from pipelines.lerobot import LeRobotDataset, is_lerobot_dataset
from pipelines.stages.ingest import failure_record, failure_row
from pipelines.stages.relabel import LabelEpisode, LabelPartition, LabelTask, ModelSpec
from pipelines.store import EpisodeStore, utcnow
from schemas import labels as spec
from schemas.episode_store import episode_id


@dataclass(frozen=True)
class RelabelConfig:
    source: str  # LeRobot dataset or episode store
    dst: str
    model: ModelSpec = ModelSpec()
    camera: str | None = None  # default: the first camera of each episode
    partition_frames: int = 2000  # LeRobot sources: frames per partition
    on_error: str = "fail"  # fail | skip
    advantage_horizon: int = spec.ADVANTAGE_HORIZON
    batch_size: int = 64
    publish: bool = True  # update <dst>/latest.json and <dst>/wvm_progress.parquet at the end


@dataclass
class RelabelPlan:
    source_kind: str
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
        d["failures"] = [f"{f['file']}: episode {f['source_episode_index']}: {f['reason']}" for f in self.failures]
        return d


def _partition_id(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def plan_relabel(config: RelabelConfig, done: set[tuple[str, str]]) -> RelabelPlan:
    if is_lerobot_dataset(config.source):
        return _plan_lerobot(config, done)
    return _plan_store(config, done)


def _plan_store(config: RelabelConfig, done: set[tuple[str, str]]) -> RelabelPlan:
    """Episode-store sources: one task per store partition, aligned to its rows."""
    store = EpisodeStore(config.source)
    manifest = store.episodes().to_pylist()
    tasks, already, current = [], 0, set()
    by_partition: dict[str, list[dict]] = {}
    for row in manifest:
        current.add((row["episode_id"], row["fingerprint"]))
        if (row["episode_id"], row["fingerprint"]) in done:
            already += 1
        else:
            by_partition.setdefault(row["partition_path"], []).append(row)
    for path, rows in sorted(by_partition.items()):
        episodes = tuple(
            LabelEpisode(
                episode_id=r["episode_id"],
                fingerprint=r["fingerprint"],
                source_uri=r["source_uri"],
                episode_index=r["source_episode_index"],
                task=r["task"],
                embodiment=r["embodiment"],
                fps=r["fps"],
                length=r["length"],
                camera=_camera(config, r["cameras"], config.source),
                offset=r["offset"],
                store_row=tuple(r.items()),
                has_source_index=r["source_format"].startswith("lerobot/"),
            )
            for r in rows
        )
        pid = _partition_id(path, [(e.episode_id, e.fingerprint) for e in episodes])
        tasks.append(LabelTask(pid, store.partition_rows(rows[0]), episodes))
    return RelabelPlan("store", store.url, tasks, len(manifest), already, current)


def _plan_lerobot(config: RelabelConfig, done: set[tuple[str, str]]) -> RelabelPlan:
    """LeRobot sources: fixed blocks of the episode order, as in ingest."""
    dataset = LeRobotDataset(config.source)
    episodes = dataset.episodes()
    camera = _camera(config, dataset.cameras, config.source)
    tasks, already, current = [], 0, set()
    block, frames = [], 0

    def flush() -> None:
        todo = [e for e in block if (episode_id(e.source_uri, e.index), e.fingerprint) not in done]
        if not todo:
            return
        offsets, rows = [], 0
        for e in todo:
            offsets.append(rows)
            rows += e.length
        label_episodes = tuple(
            LabelEpisode(
                episode_id=episode_id(e.source_uri, e.index),
                fingerprint=e.fingerprint,
                source_uri=e.source_uri,
                episode_index=e.index,
                task=e.task,
                embodiment=dataset.robot_type,
                fps=dataset.fps,
                length=e.length,
                camera=camera,
                offset=offset,
                source=e,
            )
            for e, offset in zip(todo, offsets)
        )
        tasks.append(LabelTask(_partition_id([(e.episode_id, e.fingerprint) for e in label_episodes]), rows, label_episodes))

    for e in episodes:
        pair = (episode_id(e.source_uri, e.index), e.fingerprint)
        current.add(pair)
        already += pair in done
        if block and frames + e.length > config.partition_frames:
            flush()
            block, frames = [], 0
        block.append(e)
        frames += e.length
    flush()
    return RelabelPlan("lerobot", dataset.uri, tasks, len(episodes), already, current)


def _camera(config: RelabelConfig, cameras, source: str) -> str:
    if config.camera is None:
        return cameras[0]
    if config.camera not in cameras:
        raise EpisodeError(f"camera {config.camera!r} not in source; it has {list(cameras)}", file=source, episode=-1)
    return config.camera


def run_relabel(config: RelabelConfig, engine: Engine, *, progress: bool = True, on_progress=None) -> RelabelSummary:
    """Label what this model version lacks. `on_progress(done, total)` is called as partitions finish."""
    from wvm import code_version

    started = time.monotonic()
    run_id = new_run_id()
    # Who answers decides where the labels go: ask the model before planning anything.
    with config.model.handler() as handler:
        version, checkpoint_hash = handler.version, handler.checkpoint_hash
    key = spec.model_key(version, checkpoint_hash)
    labels_store = LabelsStore(config.dst, create=True)
    # one writer at a time: a second relabel into the same output gets a clear OutputBusy
    with OutputLease(config.dst, "relabel"):
        labels = labels_store.version(key)
        labels.ensure(
            {
                "model_version": version,
                "checkpoint_hash": checkpoint_hash,
                "code_version": code_version(),
                "created_at": utcnow().isoformat(),
                "advantage_horizon": config.advantage_horizon,
            }
        )
        committed = labels.committed()
        done = set(zip(committed.column("episode_id").to_pylist(), committed.column("source_fingerprint").to_pylist()))
        plan = plan_relabel(config, done)
        stage = LabelPartition(
            source_url=config.source,
            source_kind=plan.source_kind,
            dst_url=config.dst,
            model_key=key,
            model=config.model,
            run_id=run_id,
            code_version=code_version(),
            advantage_horizon=config.advantage_horizon,
            batch_size=config.batch_size,
            skip_bad_episodes=config.on_error == "skip",
        )
        episodes = frames = windows = 0
        failures: list[dict] = []
        total = sum(len(t.episodes) for t in plan.tasks)
        labelling_started = time.monotonic()
        by_id = {t.partition_id: t for t in plan.tasks}
        with tqdm(total=total, desc=f"relabel ({engine.name}, {config.model.backend})", unit="ep", disable=not progress) as bar:
            try:
                for result in engine.map(stage, plan.tasks, skip_failed=config.on_error == "skip"):
                    if isinstance(result, PartitionFailed):  # crashed on every retry: record, go on
                        failures += [
                            failure_record(e.source_uri, e.episode_index, file=f"partition {result.key}", stage="relabel",
                                           error="PartitionFailed", reason=result.reason, run_id=run_id)
                            for e in by_id[result.key].episodes
                        ]  # fmt: skip
                        bar.update(len(by_id[result.key].episodes))
                    else:
                        episodes += result.episodes
                        frames += result.frames
                        windows += result.windows
                        failures.extend(result.failures)
                        bar.update(len(by_id[result.partition_id].episodes))
                    bar.set_postfix(frames=frames, failed=len(failures))
                    if on_progress:
                        on_progress(bar.n, total)
            except EpisodeError as error:
                failures.append(failure_row(plan.source_uri, error, run_id))
                labels.update_failures(failures, set())
                raise
        labelling_seconds = time.monotonic() - labelling_started
        consolidated = labels.finalize(plan.current)
        labelled = set(labels.committed().column("episode_id").to_pylist())
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
            windows=windows,
            failed=len(failures),
            seconds=round(time.monotonic() - started, 2),
            frames_per_second=round(frames / labelling_seconds, 1) if labelling_seconds > 0 and frames else 0.0,
            outputs={"labels": labels.url, **consolidated},
            failures=failures,
        )
        latest = labels_store.latest()
        unchanged = episodes == 0 and latest is not None and latest.get("model_key") == key
        if config.publish and not unchanged:
            labels_store.publish(key, {k: v for k, v in summary.as_dict().items() if k != "failures"})
        return summary
