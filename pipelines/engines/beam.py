"""Run stages on Apache Beam: in-process FnApiRunner by default, any runner via options.

Beam's default DirectRunner first tries to download the Prism runner binary, which hangs or
fails on machines without internet; we ask for the FnApiRunner explicitly unless the caller
names a runner. Each item's Outcome is written to a results directory by the worker (Beam has
no way to hand values back to the driver), and the driver polls it for progress.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import fs as fsx
from pipelines.engines.base import Engine, Outcome, run_item
from pipelines.errors import WvmError
from pipelines.processes import process_alive
from pipelines.stages.base import Stage


class _StageFn(beam.DoFn):
    def __init__(self, stage: Stage, results_url: str):
        self.stage, self.results_url = stage, results_url

    def process(self, element):
        index, item = element
        outcome = run_item(self.stage, item)
        fs, root = fsx.filesystem(self.results_url)
        fsx.atomic_write_bytes(fs, f"{root}/{index:08d}.pkl", pickle.dumps(outcome))
        yield index


_RESULTS_PREFIX = "wvm-beam-"


def _sweep_dead_results() -> None:
    """Remove results directories of drivers that are gone (killed mid-run, or stopped early
    while their pipeline still ran); the pid in the name tells whose a directory is."""
    for path in Path(tempfile.gettempdir()).glob(f"{_RESULTS_PREFIX}*-*"):
        pid = path.name[len(_RESULTS_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


class BeamOptionsError(WvmError):
    """Beam pipeline options that Beam cannot use (an unknown runner, a malformed option)."""


class BeamEngine(Engine):
    name = "beam"

    def __init__(self, workers: int = 2, options: Sequence[str] = (), results_url: str | None = None):
        self.options = list(options)
        self.workers = workers
        self.results_url = results_url  # must be shared storage (gs://...) for remote runners
        self._check_options()

    def _check_options(self) -> None:
        """Fail before anything is written, in words, where Beam would fail mid-run with a traceback."""
        from apache_beam.runners.runner import create_runner

        try:
            options = PipelineOptions(self.options)
            runner = options.get_all_options(retain_unknown_options=True).get("runner")
            if runner:
                create_runner(runner)
        except (ValueError, ImportError) as exc:
            raise BeamOptionsError(f"Beam options {' '.join(self.options)!r} are unusable: {exc}") from None
        except SystemExit:  # Beam's argparse exits on a malformed value, after printing why
            raise BeamOptionsError(f"Beam options {' '.join(self.options)!r} are unusable: Beam's argument parser refused them (above)") from None

    def _pipeline(self) -> beam.Pipeline:
        options = PipelineOptions(self.options)
        if any(o.startswith("--runner") for o in self.options):
            return beam.Pipeline(options=options)
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        if self.workers > 1:
            options = PipelineOptions(
                [*self.options, f"--direct_num_workers={self.workers}", "--direct_running_mode=multi_processing"]
            )
        return beam.Pipeline(runner=FnApiRunner(), options=options)

    def outcomes(self, stage: Stage, items: Sequence[Any]) -> Iterator[Outcome]:
        if not items:
            return
        local_tmp = None
        if self.results_url:
            results = fsx.join(self.results_url, uuid.uuid4().hex)
        else:
            _sweep_dead_results()
            local_tmp = tempfile.mkdtemp(prefix=f"{_RESULTS_PREFIX}{os.getpid()}-")
            results = local_tmp
        fs, root = fsx.filesystem(results)
        fs.makedirs(root, exist_ok=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with self._pipeline() as pipeline:
                    (
                        pipeline
                        | "items" >> beam.Create(list(enumerate(items)))
                        | "spread" >> beam.Reshuffle()
                        | stage.name >> beam.ParDo(_StageFn(stage, results))
                    )
            except BaseException as exc:  # surfaced in the driver thread below
                failure.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        seen: set[str] = set()
        try:
            while True:
                finished = not thread.is_alive()
                fs.invalidate_cache(root)  # object-store listings are cached per instance
                for path in sorted(fs.ls(root, detail=False)):
                    if path.endswith(".pkl") and path not in seen:
                        seen.add(path)
                        with fs.open(path, "rb") as f:
                            yield pickle.load(f)
                if finished:
                    break
                thread.join(0.5)
            if failure:
                raise failure[0]
        finally:
            # After an early stop (first error) the pipeline may still be running: leave its dir.
            if local_tmp and not thread.is_alive():
                shutil.rmtree(local_tmp, ignore_errors=True)
