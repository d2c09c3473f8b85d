"""A stage is a small class with one job: `setup()` once per worker, then `process(item)` per
item. A stage is a dataclass whose fields are its whole config (hashable, `unsafe_hash=True`);
what `setup` builds lives in private attributes. Engines ship the config to workers and keep one
set-up instance per worker and config. They know nothing about Dask, Beam or Prefect."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from pipelines.errors import EpisodeError
from pipelines.sources import SourceEpisode
from pipelines.store import utcnow
from schemas import episode_store as layout

In = TypeVar("In")
Out = TypeVar("Out")


class Stage(ABC, Generic[In, Out]):
    name: str = "stage"

    def setup(self) -> None:
        """Acquire what every item needs (open stores, load a model). Called once per worker."""

    @abstractmethod
    def process(self, item: In) -> Out:
        """Handle one item and return its result. Results must be picklable."""

    def close(self) -> None:
        """Release what `setup` acquired (model clients, open files). Engines call it when they
        drop a set-up stage; a stage must not be used after it."""

    def item_key(self, item: In) -> str:
        """A short stable name of an item, for logs and result files."""
        return str(item)


@dataclass
class PartitionResult:
    """What a partition stage wrote; engines and the driver add these up (integer fields)."""

    partition_id: str
    episodes: int
    frames: int
    failures: list[dict] = field(default_factory=list)  # dead-letter rows of skipped episodes


class PartitionTask(Protocol):
    """What the partition stages take: a unit of work and of commit."""

    partition_id: str
    episodes: Sequence  # what the stage reads, one per episode

    @property
    def source_episodes(self) -> Sequence[SourceEpisode]:
        """The episodes as their source listed them (for dead-letter rows)."""


def failure_record(source_uri: str, episode_index: int, *, file: str, stage: str, error: str, reason: str, run_id: str) -> dict:
    """One row of a dead-letter table (schemas.episode_store.FAILURES)."""
    return {
        layout.EPISODE_ID: layout.episode_id(source_uri, episode_index),
        layout.SOURCE_URI: source_uri,
        layout.SOURCE_EPISODE_INDEX: episode_index,
        layout.FILE: file,
        layout.STAGE: stage,
        layout.ERROR: error,
        layout.REASON: reason,
        layout.RUN_ID: run_id,
        layout.FAILED_AT: utcnow(),
    }


def failure_row(source_uri: str, error: EpisodeError, run_id: str) -> dict:
    """The dead-letter row of an episode's data error."""
    return failure_record(
        source_uri, error.episode, file=error.file, stage=error.stage, error=type(error).__name__, reason=error.reason, run_id=run_id
    )
