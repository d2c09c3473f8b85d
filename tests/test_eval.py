"""`wvm eval` end to end on the metaworld_mini fixture: the report's numbers are the metrics of
REFERENCE §2 (the time ramp's are known exactly), the shipped model is scored from real
inference, and the report and plots are written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import METAWORLD_MINI, ROOT

pytestmark = pytest.mark.slow


def test_eval_reports_the_reference_calibration_and_the_model(tmp_path):
    out = tmp_path / "eval"
    # the camera named explicitly (NAME=DATASET,LABELS,CAMERA; empty LABELS: the file beside it)
    bench = f"fixture={METAWORLD_MINI},,observation.images.corner"
    cmd = [sys.executable, "-m", "wvm.cli", "eval", "--bench", bench, "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    ramp, model = metrics["results"]["time ramp"]["fixture"], metrics["results"]["WVM"]["fixture"]
    # REFERENCE §2 calibration on this fixture: the ramp scores 1.00 / 0.157 / -1.00
    assert ramp["expert_voc"] == pytest.approx(1.0) and ramp["retry_voc"] == pytest.approx(-1.0)
    assert ramp["hesitation_rmse"] == pytest.approx(0.157, abs=5e-4)
    assert metrics["episodes"]["fixture"] == {"expert": 6, "hesitation": 6, "retry": 6, "failed": 0}
    # the model was really run: its numbers differ from the ramp's and its OOD score is finite
    assert model["hesitation_rmse"] != pytest.approx(ramp["hesitation_rmse"], abs=1e-3)
    assert -1 <= model["retry_voc"] <= 1 and 0 < model["ood"] < 2
    report = (out / "report.md").read_text()
    assert "| time ramp | 1.000 | 0.157 | -1.000 |" in report and "| WVM |" in report
    assert (out / "plots" / "fixture.png").stat().st_size > 10_000


def test_eval_names_a_camera_the_bench_does_not_have(tmp_path):
    bench = f"fixture={METAWORLD_MINI},,observation.images.nope"
    cmd = [sys.executable, "-m", "wvm.cli", "eval", "--bench", bench, "--out", str(tmp_path / "eval")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: {METAWORLD_MINI}: no camera 'observation.images.nope'" in result.stderr
    assert "observation.images.corner" in result.stderr and not (tmp_path / "eval").exists()
