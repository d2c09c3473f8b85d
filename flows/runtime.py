"""What every flow needs from Prefect: the Dask task runner, progress artifacts, and the
guard that keeps two runs from writing the same output."""

from __future__ import annotations

import contextlib
import json
import os

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect_dask import DaskTaskRunner

from pipelines.lease import OutputLease
from pipelines.processes import reap_with_parent


def dask_task_runner() -> DaskTaskRunner:
    """A local Dask cluster by default; WVM_DASK_ADDRESS points at an existing scheduler."""
    address = os.environ.get("WVM_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    workers = int(os.environ.get("WVM_DASK_WORKERS", "2"))
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None})


class Progress:
    """A progress artifact in the Prefect UI, updated as partitions finish."""

    def __init__(self, description: str):
        self.id = create_progress_artifact(progress=0.0, description=description)

    def __call__(self, done: int, total: int) -> None:
        update_progress_artifact(self.id, progress=100.0 * done / max(total, 1))


@contextlib.contextmanager
def exclusive(output: str, timeout_s: float = 6 * 3600):
    """One run per output: a second run on the same output waits (up to `timeout_s`) for the
    first. The lease lives on the output's own filesystem, not in a Prefect server: a killed
    run's lease is taken over at once on the same machine, or when it expires (pipelines.lease),
    where a Prefect concurrency slot would stay taken with its dead server."""
    with OutputLease(output, "nightly", wait_s=timeout_s):
        yield


def summary_artifact(key: str, title: str, summary: dict) -> None:
    body = json.dumps(summary, indent=2, default=str)
    create_markdown_artifact(key=key, markdown=f"### {title}\n\n```json\n{body}\n```", description=title)


@contextlib.contextmanager
def local_prefect_server(timeout_s: int = 120):
    """One temporary Prefect server for this process and its Dask workers (left alone,
    every worker process would start an ephemeral server of its own on the same database).
    Logs and events are flushed before it stops, or the exit hangs on retries."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start(timeout=timeout_s)
    # Prefect starts the server without tying it to us: were this process killed with -9, it
    # would stay up as an orphan holding its database. The watchdog ends it with us.
    watchdog = reap_with_parent(server.server_process.pid)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
            with contextlib.suppress(RuntimeError):
                APILogWorker.instance().drain()
            EventsWorker.drain_all()
    finally:
        server.stop()
        watchdog.kill()  # SIGKILL: its trap must not fire at a pid that may be reused by now
        watchdog.wait()
