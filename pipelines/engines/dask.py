"""Run stages on Dask distributed: a LocalCluster by default, or an existing scheduler."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from distributed import Client, LocalCluster, as_completed

from pipelines.engines.base import Engine, Outcome, run_item
from pipelines.errors import PartitionFailed
from pipelines.stages.base import Stage


class DaskEngine(Engine):
    name = "dask"

    def __init__(self, address: str | None = None, workers: int = 2, retries: int = 2):
        self.retries = retries
        if address:
            self._cluster = None
            self.client = Client(address)
        else:
            # One single-threaded process per worker: decoders and models are not thread-safe
            # and the GIL would serialise them anyway.
            self._cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.WARNING,
            )
            self.client = Client(self._cluster)

    def outcomes(self, stage: Stage, items: Sequence[Any]) -> Iterator[Outcome]:
        if not items:
            return
        run = uuid.uuid4().hex[:8]
        keys = [f"{stage.name}-{stage.item_key(item)}-{run}" for item in items]
        futures = self.client.map(run_item, [stage] * len(items), items, key=keys, retries=self.retries)
        key_of = {k: stage.item_key(item) for k, item in zip(keys, items)}
        try:
            for future in as_completed(futures):
                if future.status == "error":  # its worker died on every retry (crashes come back as outcomes)
                    yield Outcome(key_of[future.key], error=PartitionFailed(repr(future.exception()), key=key_of[future.key]))
                else:
                    yield future.result()
        finally:
            self.client.cancel(futures)

    def close(self) -> None:
        super().close()
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()
