"""Engines run a stage over items. They are thin: all behaviour lives in the stages.

Every engine calls `run_item` on its workers, which keeps one set-up stage per worker and
config, and hands expected data errors (WvmError) back as values so that all engines report
them identically; anything else is a crash and is left to the engine's own retry logic.
"""

from __future__ import annotations

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


def run_item(stage: Stage, item: Any) -> Outcome:
    live = _LIVE_STAGES.get(stage)
    if live is None:
        stage.setup()
        live = _LIVE_STAGES[stage] = stage
        while len(_LIVE_STAGES) > _MAX_LIVE_STAGES:
            _LIVE_STAGES.popitem(last=False)
    else:
        _LIVE_STAGES.move_to_end(stage)
    key = live.item_key(item)
    try:
        return Outcome(key, value=live.process(item))
    except WvmError as error:
        return Outcome(key, error=error)


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
        pass

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
