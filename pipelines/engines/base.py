"""Engines run a stage over items. They are thin: all behaviour lives in the stages.

Every engine calls `run_item` on its workers, which keeps one set-up stage per worker and
config, hands expected data errors (WvmError) back as values, and retries a crash on a fresh
set-up before handing it back as PartitionFailed, so all engines report both identically
(tests/test_engines.py). An engine's own retries only cover what a worker cannot report: its death.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.errors import PartitionFailed, WvmError
from pipelines.stages.base import Stage

_LIVE_STAGES: OrderedDict[Stage, Stage] = OrderedDict()
_MAX_LIVE_STAGES = 4  # long-lived workers see many runs; keep only the recent set-ups


@dataclass
class Outcome:
    key: str
    value: Any = None
    error: WvmError | None = None


ATTEMPTS = 3  # a crashing item is tried this often in its worker before it is a PartitionFailed
log = logging.getLogger("wvm.engine")


def _live(stage: Stage) -> Stage:
    live = _LIVE_STAGES.get(stage)
    if live is None:
        stage.setup()
        live = _LIVE_STAGES[stage] = stage
        while len(_LIVE_STAGES) > _MAX_LIVE_STAGES:
            _LIVE_STAGES.popitem(last=False)[1].close()
    else:
        _LIVE_STAGES.move_to_end(stage)
    return live


def close_live_stages() -> None:
    """Close every stage set up in this process (the local engine's, or in-process runners')."""
    while _LIVE_STAGES:
        _LIVE_STAGES.popitem(last=False)[1].close()


def run_item(stage: Stage, item: Any, attempts: int = ATTEMPTS) -> Outcome:
    """One item on a set-up stage, the same on every engine: a data error (WvmError) comes back
    as the item's error; a crash is retried on a freshly set-up stage and, after `attempts`,
    comes back as PartitionFailed, so no engine aborts a whole run for one item. An engine's own
    retries are left for what this cannot catch (a worker process that died)."""
    key = stage.item_key(item)
    crash: Exception | None = None
    for attempt in range(1, attempts + 1):
        live = _live(stage)  # a set-up error is the run's, not the item's: it propagates
        try:
            return Outcome(key, value=live.process(item))
        except WvmError as error:
            return Outcome(key, error=error)
        except Exception as exc:  # noqa: BLE001 - any crash of stage code is reported per item
            crash = exc
            log.warning("%s %s: attempt %d/%d crashed: %s: %s", stage.name, key, attempt, attempts, type(exc).__name__, exc)
            log.debug("traceback", exc_info=True)
            # the crashed instance may hold broken state: drop it, the next attempt sets up anew
            if _LIVE_STAGES.pop(stage, None) is not None:
                live.close()
    return Outcome(key, error=PartitionFailed(f"{type(crash).__name__}: {crash}", key=key))


class Engine(ABC):
    name = "engine"

    @abstractmethod
    def outcomes(self, stage: Stage, items: Sequence[Any]) -> Iterator[Outcome]:
        """Run `stage` on every item; yield each item's Outcome as it completes (any order)."""

    def map(self, stage: Stage, items: Sequence[Any], skip_failed: bool = False) -> Iterator[Any]:
        """Like `outcomes`, yielding values. The first error is raised (after stopping the
        rest), except that with `skip_failed` an item that kept crashing is yielded as its
        PartitionFailed error and the others go on (data errors are the stage's business)."""
        outcomes = self.outcomes(stage, items)
        for outcome in outcomes:
            if outcome.error is None:
                yield outcome.value
            elif skip_failed and isinstance(outcome.error, PartitionFailed):
                yield outcome.error
            else:
                outcomes.close()
                raise outcome.error

    def close(self) -> None:
        close_live_stages()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalEngine(Engine):
    """In-process, one item after another: for debugging and tiny jobs."""

    name = "local"

    def outcomes(self, stage: Stage, items: Sequence[Any]) -> Iterator[Outcome]:
        for item in items:
            yield run_item(stage, item)
