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
    # one torch thread, as beside a running training
    cmd = [sys.executable, "-m", "wvm.cli", "eval", "--bench", bench, "--threads", "1", "--out", str(out)]
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


def test_seed_groups_report_the_mean_and_spread_of_a_recipes_seeds():
    from wvm.evaluate import render_report, seed_groups

    def row(e, h, r, f, ood):
        return {"b": {"expert_voc": e, "hesitation_rmse": h, "retry_voc": r, "failure_auroc": f, "ood": ood}}

    results = {"s0": row(0.9, 0.10, -0.2, 0.8, 0.3), "s1": row(0.7, 0.14, 0.4, float("nan"), 0.5), "other": row(1, 0, 1, 1, 0)}
    grouped = seed_groups(results, {"recipe": ["s0", "s1"]})
    r = grouped["recipe"]["b"]
    assert r["expert_voc"] == pytest.approx([0.8, 0.7, 0.9]) and r["hesitation_rmse"] == pytest.approx([0.12, 0.10, 0.14])
    assert r["retry_voc"] == pytest.approx([0.1, -0.2, 0.4])
    assert r["failure_auroc"] == pytest.approx([0.8, 0.8, 0.8])  # a member without the metric (nan) is left out
    report = render_report(results, {"b": {"expert": 1}}, {}, ["b"], grouped)
    assert "| recipe | 0.800 [0.700, 0.900] | 0.120 [0.100, 0.140] | 0.100 [-0.200, 0.400] | 0.800 [0.800, 0.800] |" in report


@pytest.mark.parametrize(
    "group, message",
    [("r=s0", "two or more different --model names"), ("r=s0,s0", "two or more different --model names"), ("r=s0,s9", "['s9'] not among")],
)
def test_eval_names_a_bad_group_before_scoring(tmp_path, group, message):
    cmd = [sys.executable, "-m", "wvm.cli", "eval", "--bench", f"fixture={METAWORLD_MINI}", "--model", "s0=", "--model", "s1="]
    result = subprocess.run([*cmd, "--group", group, "--out", str(tmp_path / "eval")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr and message in result.stderr
    assert not (tmp_path / "eval").exists()
