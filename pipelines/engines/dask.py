"""Run stages on Dask distributed: a LocalCluster by default, or an existing scheduler."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from distributed import Client, LocalCluster, wait

from pipelines.engines.base import Engine, Outcome, run_item
from pipelines.errors import PartitionFailed, WvmError
from pipelines.stages.base import Stage

POLL_S = 5.0


class NoWorkers(WvmError):
    """The scheduler has had no workers for too long: nothing can make progress."""


class DaskEngine(Engine):
    name = "dask"

    def __init__(self, address: str | None = None, workers: int = 2, retries: int = 2, no_workers_timeout_s: float = 300.0):
        self.retries = retries
        self.address = address or "a local cluster"
        # An external cluster whose workers all left (scaled to zero, preempted) would leave the
        # run waiting forever: after this long without a worker it fails, naming the scheduler.
        self.no_workers_timeout_s = no_workers_timeout_s
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
        pending, alone_since = set(futures), None
        try:
            while pending:
                try:
                    done, pending = wait(pending, timeout=POLL_S, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = set()
                for future in done:
                    if future.status == "error":  # its worker died on every retry (crashes come back as outcomes)
                        yield Outcome(key_of[future.key], error=PartitionFailed(repr(future.exception()), key=key_of[future.key]))
                    else:
                        yield future.result()
                if self.client.scheduler_info().get("workers"):
                    alone_since = None
                elif alone_since is None:
                    alone_since = time.monotonic()
                elif time.monotonic() - alone_since > self.no_workers_timeout_s:
                    raise NoWorkers(
                        f"Dask scheduler {self.address} has had no workers for {self.no_workers_timeout_s:g} s; "
                        f"{len(pending)} {stage.name} partition(s) never ran. Start workers and rerun: finished "
                        "partitions are kept."
                    )
        finally:
            self.client.cancel(futures)

    def close(self) -> None:
        super().close()
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()
