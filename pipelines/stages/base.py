"""A stage is a small class with one job: `setup()` once per worker, then `process(item)` per
item. A stage is a dataclass whose fields are its whole config (hashable, `unsafe_hash=True`);
what `setup` builds lives in private attributes. Engines ship the config to workers and keep one
set-up instance per worker and config. They know nothing about Dask, Beam or Prefect."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic, TypeVar

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
