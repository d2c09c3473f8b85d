"""One engine contract: every engine gives the same per-item outcome for the same stage
behaviour (a value, a data error, a crash that a retry cures, a crash that never stops), and
drops set-up stages with close(). Real engines: in-process, a Dask LocalCluster of worker
processes, Beam's in-process runner (multi-process Beam, an external Dask cluster and Prefect
are not in this suite yet)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

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
        return item.upper()


def _engine(name):
    if name == "local":
        return LocalEngine()
    if name == "dask":
        from pipelines.engines.dask import DaskEngine

        return DaskEngine(workers=2)
    from pipelines.engines.beam import BeamEngine

    return BeamEngine(workers=1)


@pytest.mark.parametrize("engine_name", ["local", "dask", "beam"])
def test_every_engine_gives_the_same_outcomes(engine_name, tmp_path):
    stage = Scripted(str(tmp_path))
    items = ["a", "flaky", "bad", "crash", "b"]
    with _engine(engine_name) as engine:
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
