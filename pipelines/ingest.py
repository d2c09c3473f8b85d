"""Ingest: plan which source episodes the store lacks, run the ingest stage over partitions
of them on an engine, record failures. Reruns skip what is stored with the same fingerprint."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from tqdm import tqdm

from pipelines.engines.base import Engine
from pipelines.errors import EpisodeError, PartitionFailed
from pipelines.sources import Partition, open_source, plan_partitions
from pipelines.stages.ingest import DecodeOptions, IngestPartition, failure_record, failure_row
from pipelines.store import EpisodeStore
from schemas import episode_store as layout


@dataclass(frozen=True)
class IngestConfig:
    source: str
    store: str
    decode: DecodeOptions = DecodeOptions()
    partition_frames: int = 1000  # frames per partition (the unit of work and of commit); episodes are never split
    on_error: str = "fail"  # fail | skip


@dataclass
class IngestPlan:
    source_uri: str
    tasks: list[Partition]
    source_episodes: int
    already_stored: int


@dataclass
class IngestSummary:
    run_id: str
    source_episodes: int
    already_stored: int
    episodes_written: int
    frames_written: int
    partitions: int
    failed: int
    seconds: float
    failures: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["failures"] = [f"{f['file']}: episode {f['source_episode_index']}: {f['reason']}" for f in self.failures]
        return d


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def plan_ingest(config: IngestConfig) -> IngestPlan:
    """Partitions of the source episodes the store lacks (same id and fingerprint); see
    pipelines.sources.plan_partitions. The source is read and checked before the store exists."""
    source = open_source(config.source)
    config.decode.select_cameras(source)  # fail before any work on an unknown camera
    episodes = source.episodes(decode_options=config.decode.fingerprint_part())  # bad metadata: fail before writing
    store = EpisodeStore(config.store, create=True)
    stored = store.episodes()
    have = set(zip(stored.column("episode_id").to_pylist(), stored.column("fingerprint").to_pylist()))
    tasks, already = plan_partitions(episodes, lambda e: (layout.episode_id(e.source_uri, e.index), e.fingerprint) in have, config.partition_frames, source)
    return IngestPlan(source.uri, tasks, len(episodes), already)


def run_ingest(config: IngestConfig, engine: Engine, *, progress: bool = True, on_progress=None) -> IngestSummary:
    """Ingest what the store lacks. `on_progress(done, total)` is called as partitions finish."""
    started = time.monotonic()
    run_id = new_run_id()
    plan = plan_ingest(config)
    store = EpisodeStore(config.store)
    stage = IngestPartition(
        source_url=config.source,
        store_url=config.store,
        run_id=run_id,
        decode=config.decode,
        skip_bad_episodes=config.on_error == "skip",
    )
    episodes = frames = 0
    failures: list[dict] = []
    total = sum(len(t.episodes) for t in plan.tasks)
    by_id = {t.partition_id: t for t in plan.tasks}
    skip = config.on_error == "skip"
    with tqdm(total=total, desc=f"ingest ({engine.name})", unit="ep", disable=not progress) as bar:
        try:
            for result in engine.map(stage, plan.tasks, skip_failed=skip):
                if isinstance(result, PartitionFailed):  # crashed on every retry: record, go on
                    failures += [
                        failure_record(e.source_uri, e.index, file=e.file, stage="ingest", error="PartitionFailed",
                                       reason=result.reason, run_id=run_id)
                        for e in by_id[result.key].episodes
                    ]  # fmt: skip
                    task = by_id[result.key]
                else:
                    episodes += result.episodes
                    frames += result.frames
                    failures.extend(result.failures)
                    task = by_id[result.partition_id]
                bar.update(len(task.episodes))
                bar.set_postfix(frames=frames, failed=len(failures))
                if on_progress:
                    on_progress(bar.n, total)
        except EpisodeError as error:
            # on_error=fail: the failing partition is not committed, the others stay committed.
            failures.append(failure_row(plan.source_uri, error, run_id))
            store.update_failures(failures)
            raise
    store.update_failures(failures)
    return IngestSummary(
        run_id=run_id,
        source_episodes=plan.source_episodes,
        already_stored=plan.already_stored,
        episodes_written=episodes,
        frames_written=frames,
        partitions=len(plan.tasks),
        failed=len(failures),
        seconds=round(time.monotonic() - started, 2),
        failures=failures,
    )

