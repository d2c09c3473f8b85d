"""The one loop over partitions that ingest and relabel share: run a stage on an engine, add up
what each partition wrote, turn a partition that kept crashing into one dead-letter row per
episode, show progress, and, when a data error stops a run (on_error=fail), save the failures
seen so far before re-raising it. Every engine and every job thus fails the same way."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

from tqdm import tqdm

from pipelines.engines.base import Engine
from pipelines.errors import EpisodeError, PartitionFailed
from pipelines.stages.base import PartitionTask, Stage, failure_record, failure_row


def new_run_id() -> str:
    """Sortable by start time, unique across machines."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


@dataclass
class Tally:
    """What a run's partitions wrote (summed integer fields of their results) and what failed."""

    counts: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)


def run_partitions(
    engine: Engine,
    stage: Stage,
    tasks: Sequence[PartitionTask],
    *,
    source_uri: str,
    run_id: str,
    skip_failed: bool,
    save_failures: Callable[[list[dict]], None],
    desc: str,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Tally:
    """Run `stage` over `tasks` on `engine`. Returns the tally; `save_failures` is only called
    here when a data error aborts the run (the caller saves them after a completed run, when it
    also knows which episodes have since succeeded)."""
    tally = Tally()
    by_id = {t.partition_id: t for t in tasks}
    total = sum(len(t.episodes) for t in tasks)
    with tqdm(total=total, desc=desc, unit="ep", disable=not progress) as bar:
        try:
            for result in engine.map(stage, tasks, skip_failed=skip_failed):
                if isinstance(result, PartitionFailed):  # crashed on every retry: record, go on
                    task = by_id[result.key]
                    tally.failures += [
                        failure_record(e.source_uri, e.index, file=e.file, stage=stage.name, error="PartitionFailed",
                                       reason=result.reason, run_id=run_id)
                        for e in task.source_episodes
                    ]  # fmt: skip
                else:
                    task = by_id[result.partition_id]
                    tally.counts.update({f.name: getattr(result, f.name) for f in fields(result) if f.name not in ("partition_id", "failures")})
                    tally.failures.extend(result.failures)
                bar.update(len(task.episodes))
                bar.set_postfix(frames=tally.counts["frames"], failed=len(tally.failures))
                if on_progress:
                    on_progress(bar.n, total)
        except EpisodeError as error:
            # on_error=fail: the failing partition is not committed, the others stay committed
            save_failures([*tally.failures, failure_row(source_uri, error, run_id)])
            raise
    return tally
