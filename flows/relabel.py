"""Relabel flow: one dataset or episode store labelled by one model, partitions as tasks."""

from __future__ import annotations

from prefect import flow

from flows.runtime import Progress, dask_task_runner, exclusive, summary_artifact
from pipelines.engines.prefect import PrefectEngine
from pipelines.inference import ModelSpec
from pipelines.relabel import RelabelConfig, run_relabel


@flow(name="wvm-relabel", task_runner=dask_task_runner())
def relabel_flow(
    source: str,
    dst: str,
    backend: str = "triton",
    triton_url: str = "127.0.0.1:8001",
    checkpoint: str | None = None,
    on_error: str = "skip",
    publish: bool = True,
) -> dict:
    model = ModelSpec(backend=backend, triton_url=triton_url, checkpoint=checkpoint)
    with exclusive(dst):
        config = RelabelConfig(source=source, dst=dst, model=model, on_error=on_error, publish=publish)
        summary = run_relabel(config, PrefectEngine(), progress=False, on_progress=Progress(f"relabel {source}")).as_dict()
    summary_artifact("relabel-summary", f"Relabel of {source}", summary)
    return summary
