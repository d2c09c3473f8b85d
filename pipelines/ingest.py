"""Ingest: plan which source episodes the store lacks, run the ingest stage over partitions
of them on an engine, record failures. Reruns skip what is stored with the same fingerprint."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from pipelines import fs as fsx
from pipelines.driver import new_run_id, run_partitions
from pipelines.engines.base import Engine
from pipelines.lease import OutputLease
from pipelines.sources import Partition, Source, SourceEpisode, open_source, plan_partitions
from pipelines.stages.ingest import DecodeOptions, IngestPartition
from pipelines.store import EpisodeStore
from schemas import episode_store as layout

log = logging.getLogger("wvm.ingest")


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
        d["failures"] = [f"{f[layout.FILE]}: episode {f[layout.SOURCE_EPISODE_INDEX]}: {f[layout.REASON]}" for f in self.failures]
        return d


def open_checked_source(config: IngestConfig) -> tuple[Source, list[SourceEpisode]]:
    """The source and its episodes, checked before anything is written (bad metadata or an
    unknown camera fail here)."""
    source = open_source(config.source)
    config.decode.select_cameras(source)
    return source, source.episodes(decode_options=config.decode.fingerprint_part())


def plan_ingest(config: IngestConfig, checked: tuple[Source, list[SourceEpisode]] | None = None) -> IngestPlan:
    """Partitions of the source episodes the store lacks (same id and fingerprint); see
    pipelines.sources.plan_partitions. Creates the store if needed."""
    source, episodes = checked or open_checked_source(config)
    store = EpisodeStore(config.store, create=True)
    stored = store.episodes()
    have = set(zip(stored.column(layout.EPISODE_ID).to_pylist(), stored.column(layout.FINGERPRINT).to_pylist()))
    tasks, already = plan_partitions(episodes, lambda e: (layout.episode_id(e.source_uri, e.index), e.fingerprint) in have, config.partition_frames, source)
    return IngestPlan(source.uri, tasks, len(episodes), already)


def run_ingest(config: IngestConfig, engine: Engine, *, progress: bool = True, on_progress=None) -> IngestSummary:
    """Ingest what the store lacks. `on_progress(done, total)` is called as partitions finish."""
    started = time.monotonic()
    run_id = new_run_id()
    config = replace(config, source=fsx.absolute(config.source), store=fsx.absolute(config.store))
    checked = open_checked_source(config)  # a bad source fails here, before the store exists
    # one writer per store: a second ingest into it gets a clear OutputBusy (pipelines.lease)
    with OutputLease(config.store, "ingest"):
        plan = plan_ingest(config, checked)
        store = EpisodeStore(config.store)
        stage = IngestPartition(
            source_url=config.source,
            store_url=config.store,
            run_id=run_id,
            decode=config.decode,
            skip_bad_episodes=config.on_error == "skip",
        )
        tally = run_partitions(
            engine, stage, plan.tasks, source_uri=plan.source_uri, run_id=run_id, skip_failed=config.on_error == "skip",
            save_failures=store.update_failures, desc=f"ingest ({engine.name})", progress=progress, on_progress=on_progress,
        )  # fmt: skip
        store.update_failures(tally.failures)
        try:
            store.sweep_uncommitted([t.partition_id for t in plan.tasks])
        except OSError as exc:  # clean-up only: the next run tries again
            log.warning("%s: uncommitted attempts not removed: %s", config.store, exc)
    return IngestSummary(
        run_id=run_id,
        source_episodes=plan.source_episodes,
        already_stored=plan.already_stored,
        episodes_written=tally.counts["episodes"],
        frames_written=tally.counts["frames"],
        partitions=len(plan.tasks),
        failed=len(tally.failures),
        seconds=round(time.monotonic() - started, 2),
        failures=tally.failures,
    )
