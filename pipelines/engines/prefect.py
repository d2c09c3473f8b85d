"""Run stages as Prefect tasks, one per item, on the task runner of the current flow (Dask
through prefect-dask in our flows): every partition is a task run the Prefect UI shows, with
retries and exponential backoff. Must be used inside a flow run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prefect import task
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff

from pipelines.engines.base import Engine, Outcome, run_item
from pipelines.errors import PartitionFailed
from pipelines.stages.base import Stage

RETRIES = 2


@task(
    name="partition",
    task_run_name="{stage.name}-{key}",
    retries=RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    # Data errors come back as values; a crash fails the task run, so Prefect's own retries
    # (with backoff, shown in its UI) replace run_item's in-process attempts.
)
def run_partition(stage: Stage, item: Any, key: str) -> Outcome:
    outcome = run_item(stage, item, attempts=1)
    if isinstance(outcome.error, PartitionFailed):
        raise outcome.error
    return outcome


class PrefectEngine(Engine):
    name = "prefect"

    def outcomes(self, stage: Stage, items: Sequence[Any]) -> Iterator[Outcome]:
        futures = {run_partition.submit(stage, item, stage.item_key(item)): stage.item_key(item) for item in items}
        for future in as_completed(list(futures)):
            result = future.result(raise_on_failure=False)  # waits; the exception if it failed
            if isinstance(result, Outcome):
                yield result
            elif isinstance(result, PartitionFailed):
                yield Outcome(result.key, error=result)
            else:
                key = futures[future]
                yield Outcome(key, error=PartitionFailed(f"{type(result).__name__}: {result}", key=key))
