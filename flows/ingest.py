"""Ingest flow: one dataset (any format pipelines.sources reads) into an episode store, partitions as Prefect tasks."""

from __future__ import annotations

from prefect import flow

from flows.runtime import Progress, dask_task_runner, exclusive, summary_artifact
from pipelines.engines.prefect import PrefectEngine
from pipelines.ingest import IngestConfig, run_ingest


@flow(name="wvm-ingest", task_runner=dask_task_runner())
def ingest_flow(source: str, store: str, on_error: str = "skip", partition_frames: int = 1000) -> dict:
    with exclusive(store):
        config = IngestConfig(source=source, store=store, on_error=on_error, partition_frames=partition_frames)
        summary = run_ingest(config, PrefectEngine(), progress=False, on_progress=Progress(f"ingest {source}")).as_dict()
    summary_artifact("ingest-summary", f"Ingest of {source}", summary)
    return summary
