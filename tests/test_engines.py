"""One engine contract: every engine gives the same per-item outcome for the same stage
behaviour (a value, a data error, a crash that a retry cures, a crash that never stops), and
drops set-up stages with close(). Real engines: in-process; Dask on a LocalCluster and on a
separately started `dask scheduler` + `dask worker` processes; Beam in-process and multi-process.
Prefect's task runner keeps its own retries (tests/test_flows.py). A worker process killed
mid-item is survived by the engines that own their workers' lives (Dask)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, external_dask_cluster

from pipelines.engines import base
from pipelines.engines.base import LocalEngine, run_item
from pipelines.errors import EpisodeError, PartitionFailed
from pipelines.stages.base import Stage


@dataclass(frozen=True)
class Scripted(Stage):
    """Behaves by item name: 'crash' always raises, 'flaky' crashes once, 'bad' is a data error."""

    marks: str
    name = "scripted"

    def close(self) -> None:
        with open(Path(self.marks, "closes"), "a") as f:
            f.write(f"{os.getpid()}\n")

    def process(self, item: str) -> str:
        if item == "crash":
            raise RuntimeError("boom")
        if item == "flaky":
            first = Path(self.marks, "flaky-crashed")
            if not first.exists():
                first.touch()
                raise OSError("transient")
        if item == "bad":
            raise EpisodeError("unreadable", file="f.parquet", episode=3)
        if item == "die":  # the worker process is killed (OOM killer, preemption) the first time
            first = Path(self.marks, "died")
            if not first.exists():
                first.touch()
                os._exit(137)
        return item.upper()


@contextlib.contextmanager
def engine_named(name, monkeypatch):
    if name == "local":
        with LocalEngine() as engine:
            yield engine
    elif name == "dask":
        from pipelines.engines.dask import DaskEngine

        with DaskEngine(workers=2) as engine:
            yield engine
    elif name == "dask-external":
        from pipelines.engines.dask import DaskEngine

        with external_dask_cluster() as address, DaskEngine(address=address) as engine:
            yield engine
    else:
        from pipelines.engines.beam import BeamEngine

        # Beam's multi-process workers are fresh interpreters: they import Scripted by path
        monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
        with BeamEngine(workers=2 if name == "beam-multiprocess" else 1) as engine:
            yield engine


ENGINES = ["local", "dask", pytest.param("dask-external", marks=pytest.mark.slow), "beam",
           pytest.param("beam-multiprocess", marks=pytest.mark.slow)]  # fmt: skip


@pytest.mark.parametrize("engine_name", ENGINES)
def test_every_engine_gives_the_same_outcomes(engine_name, tmp_path, monkeypatch):
    stage = Scripted(str(tmp_path))
    items = ["a", "flaky", "bad", "crash", "b"]
    with engine_named(engine_name, monkeypatch) as engine:
        outcomes = {o.key: o for o in engine.outcomes(stage, items)}
        assert sorted(outcomes) == sorted(items)  # each item exactly once
        assert outcomes["a"].value == "A" and outcomes["b"].value == "B"
        assert outcomes["flaky"].value == "FLAKY"  # cured by a retry on a fresh set-up
        assert isinstance(outcomes["bad"].error, EpisodeError) and outcomes["bad"].error.episode == 3
        failed = outcomes["crash"].error
        assert isinstance(failed, PartitionFailed) and failed.key == "crash" and failed.reason == "RuntimeError: boom"
        # --on-error skip: the crash is yielded and the rest goes on; fail: the run stops on it
        skipped = list(engine.map(Scripted(str(tmp_path)), ["a", "crash", "b"], skip_failed=True))
        assert sorted(r if isinstance(r, str) else r.key for r in skipped) == ["A", "B", "crash"]
        with pytest.raises(PartitionFailed, match="partition crash failed after retries: RuntimeError: boom"):
            list(engine.map(Scripted(str(tmp_path)), ["crash"]))
    # every crashed set-up was closed before it was set up anew (3 attempts per crash)
    closes = len((tmp_path / "closes").read_text().splitlines())
    assert closes >= 1 + 3 + 3  # flaky once, crash three times in outcomes and in map


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["dask", "dask-external"])
def test_a_worker_killed_mid_item_is_survived(engine_name, tmp_path, monkeypatch):
    # The process running "die" exits at once (as under the OOM killer): Dask's nanny starts a
    # new worker and the scheduler reruns the item there; nothing is lost or duplicated.
    with engine_named(engine_name, monkeypatch) as engine:
        started = time.monotonic()
        outcomes = {o.key: o for o in engine.outcomes(Scripted(str(tmp_path)), ["a", "die", "b", "c"])}
        assert time.monotonic() - started < 120
    assert {k: o.value for k, o in outcomes.items()} == {"a": "A", "die": "DIE", "b": "B", "c": "C"}
    assert (tmp_path / "died").exists()


def test_evicted_stages_are_closed(tmp_path):
    base.close_live_stages()
    stages = [Scripted(str(tmp_path / str(i))) for i in range(base._MAX_LIVE_STAGES + 2)]
    for stage in stages:
        Path(stage.marks).mkdir()
        assert run_item(stage, "x").value == "X"
    closed = [s for s in stages if Path(s.marks, "closes").exists()]
    assert closed == stages[:2]  # the two least recently used
    base.close_live_stages()
    assert all(Path(s.marks, "closes").read_text().count("\n") == 1 for s in stages)


@pytest.mark.slow
def test_a_cluster_whose_workers_all_left_fails_with_a_clear_error(tmp_path, monkeypatch):
    from pipelines.engines.dask import DaskEngine, NoWorkers

    @dataclass(frozen=True)
    class Slow(Scripted):
        def process(self, item: str) -> str:
            time.sleep(30)
            return item

    with external_dask_cluster(workers=1) as address, DaskEngine(address=address, no_workers_timeout_s=3) as engine:
        # the worker process goes away for good (no nanny on that host to restart it)
        engine.client.run(lambda: os.kill(os.getppid(), 9))
        started = time.monotonic()
        with pytest.raises(NoWorkers, match=rf"Dask scheduler {address} has had no workers for 3 s; 2 scripted partition"):
            list(engine.outcomes(Slow(str(tmp_path)), ["a", "b"]))
        assert time.monotonic() - started < 60


def test_beam_sweeps_results_directories_of_dead_drivers(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from pipelines.engines.beam import BeamEngine

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's own temporary directory
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    (tmp_path / f"wvm-beam-{dead}-abc").mkdir()  # what a driver killed with -9 leaves
    (tmp_path / f"wvm-beam-{os.getpid()}-live").mkdir()  # a live driver's (this process)
    with BeamEngine(workers=1) as engine:
        assert [o.value for o in engine.outcomes(Scripted(str(tmp_path)), ["a"])] == ["A"]
    assert sorted(p.name for p in tmp_path.glob("wvm-beam-*")) == [f"wvm-beam-{os.getpid()}-live"]
