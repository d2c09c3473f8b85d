"""`wvm policy-bench` (issue #11): the weighting and interval maths on hand-computed cases, and
one end-to-end --quick run whose reported numbers must come from real rollouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from wvm.policy.data import Episode, control_frames, time_ramp
from wvm.policy.methods import RUNS, Run, build_samples
from wvm.policy.model import episode_samples, weighted_bc_loss
from wvm.policy.stats import bootstrap_difference, hierarchical_bootstrap, wilson_interval

ROOT = Path(__file__).resolve().parents[1]


def test_wilson_interval_by_hand():
    # p = 0.5, n = 10, z = 1.96: centre (0.5 + 0.19207) / 1.38415 = 0.5,
    # half-width 1.96 * sqrt(0.025 + 0.0096036) / 1.38415 = 0.26341
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    # no successes: the upper bound is (z^2 / n) / (1 + z^2 / n) = 0.38415 / 1.38415
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_bootstrap_estimates_and_degenerate_intervals():
    # mean over seeds of trial means: (3/4 + 1/4) / 2
    est, low, high = hierarchical_bootstrap([[np.array([1, 0, 1, 1]), np.array([0, 0, 1, 0])]])
    assert est == pytest.approx(0.5) and 0.0 <= low < 0.5 < high <= 1.0
    # every trial identical: nothing to resample, the interval collapses
    assert hierarchical_bootstrap([[np.ones(5), np.ones(5)], [np.zeros(3)]]) == (0.5, 0.5, 0.5)
    # difference of two constant methods: 1.0 - 0.25, exactly
    assert bootstrap_difference([[np.ones(4)]], [[np.array([0.25] * 4)]]) == (0.75, 0.75, 0.75)
    with pytest.raises(ValueError):
        hierarchical_bootstrap([[np.ones(3), np.ones(4)]])  # seeds with different trial counts


def test_control_weights_by_hand():
    """Progress of one 10-frame episode, H = 2, so A_t = V(t + 1) - V(t) and A_9 = 0."""
    progress = np.array([0.0, 0.1, 0.3, 0.6, 1.0, 0.9, 0.7, 0.8, 0.9, 1.0])
    frames = control_frames({7: progress}, horizon=2)
    assert frames["advantage"].to_numpy() == pytest.approx([0.1, 0.2, 0.3, 0.4, -0.1, -0.2, 0.1, 0.1, 0.1, 0.0], abs=1e-6)
    assert frames["w_binary"].tolist() == [1, 1, 1, 1, 0, 0, 1, 1, 1, 1]
    # sorted: 0.4 0.3 0.2 0.1 0.1 0.1 0.1 | 0 -0.1 -0.2: the top 7 of 10 start at 0.1, so A = 0 is cut
    assert frames["w_top70"].tolist() == [1, 1, 1, 1, 0, 0, 1, 1, 1, 0]
    # min(exp(10 A), 2): e^1 > 2 is clipped; e^-1 = 0.367879, e^-2 = 0.135335, e^0 = 1
    assert frames["w_awr"].to_numpy() == pytest.approx([2, 2, 2, 2, 0.367879, 0.135335, 2, 2, 2, 1], abs=1e-6)
    assert frames["episode_index"].unique().tolist() == [7]
    assert time_ramp(5) == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    # the time ramp never falls, so binary filtering keeps every frame of it
    assert control_frames({0: time_ramp(30)}, horizon=10)["w_binary"].eq(1).all()


def test_chunks_pair_each_state_with_the_actions_that_follow():
    state = np.array([[0.0], [10.0], [20.0]], np.float32)
    action = np.array([[0.0], [1.0], [2.0]], np.float32)  # action[t] led to frame t
    s, chunk, mask = episode_samples(state, action, horizon=2)
    assert s[:, 0].tolist() == [0.0, 10.0]  # the last frame has no next action
    assert chunk[:, :, 0].tolist() == [[1.0, 2.0], [2.0, 2.0]]
    assert mask.tolist() == [[1, 1], [1, 0]]  # past the episode end: padded and masked


def test_weighted_bc_loss_by_hand():
    pred = torch.zeros(2, 2, 1)
    target = torch.tensor([[[1.0], [1.0]], [[2.0], [4.0]]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    weight = torch.tensor([1.0, 3.0])
    # sample 0: mean(1, 1) = 1; sample 1: only step 0 counts, 2^2 = 4; (1 * 1 + 3 * 4) / (1 + 3)
    assert float(weighted_bc_loss(pred, target, mask, weight)) == pytest.approx(13 / 4, rel=1e-6)


def test_methods_take_their_weights_from_the_frames_tables():
    episodes = [
        Episode(0, "t", "expert", np.zeros((3, 2), np.float32), np.zeros((3, 4), np.float32), time_ramp(3)),
        Episode(1, "t", "retry", np.ones((4, 2), np.float32), np.zeros((4, 4), np.float32), time_ramp(4)),
    ]
    table = pd.DataFrame(
        {
            "episode_index": [0, 0, 0, 1, 1, 1, 1],
            "frame_index": [0, 1, 2, 0, 1, 2, 3],
            "w_binary": [1, 0, 1, 0, 1, 1, 1],
            "w_top70": [0, 0, 1, 1, 1, 0, 0],
            "w_awr": [0.5, 2, 1, 0.25, 1, 1, 1],
        }
    )
    sources = {"wvm": table, "ramp": table, "gt": table}
    # one sample per frame but the last: 2 + 3
    assert build_samples(Run("bc"), episodes, sources, 10).weight.tolist() == [1, 1, 1, 1, 1]
    assert build_samples(Run("bc_expert"), episodes, sources, 10).weight.tolist() == [1, 1, 0, 0, 0]
    assert build_samples(Run("bc_binary", "wvm"), episodes, sources, 10).weight.tolist() == [1, 0, 0, 1, 1]
    assert build_samples(Run("bc_top70", "gt"), episodes, sources, 10).kept().episode.tolist() == [1, 1]
    assert build_samples(Run("awr", "ramp"), episodes, sources, 10).weight.tolist() == [0.5, 2, 0.25, 1, 1]
    assert [r.name for r in RUNS][:3] == ["bc", "bc_expert", "bc_binary/wvm"] and len(RUNS) == 14


def test_episode_filter_keeps_the_top_70_percent_of_episodes_by_quality():
    from wvm.policy.data import EPISODE_WEIGHT, with_episode_filter

    progress = {
        0: [0.0, 0.25, 0.5, 0.75, 1.0],  # steady to the end: quality 1
        1: [0.0, 0.5, 0.5, 0.5, 1.0],  # ends at 1, flat 2 of 4 steps: 1 * (1 - 0.5 / 2) = 0.75
        2: [0.0, 0.3, 0.6, 0.6, 0.6],  # stops at 0.6, flat 2 of 4: 0.6 * 0.75 = 0.45
    }
    frames = pd.DataFrame(
        [{"episode_index": i, "frame_index": t, "progress": v} for i, values in progress.items() for t, v in enumerate(values)]
    )
    kept = with_episode_filter(frames).groupby("episode_index")[EPISODE_WEIGHT].agg(["min", "max"])
    # the cut is the 30th percentile of (1, 0.75, 0.45): 0.45 + 0.6 * 0.3 = 0.63, so 2 of 3 episodes stay
    assert kept["min"].tolist() == kept["max"].tolist() == [1.0, 1.0, 0.0]
    # the time ramp rates every episode alike: a filter that keeps them all (= plain BC)
    ramp = pd.DataFrame([{"episode_index": i, "frame_index": t, "progress": t / 4} for i in range(3) for t in range(5)])
    assert with_episode_filter(ramp)[EPISODE_WEIGHT].tolist() == [1.0] * 15


def test_agreement_with_ground_truth_weights_by_hand():
    """The report's offline check of the labels: share of sample frames (all but each episode's
    last) given ground truth's weight, and the correlation of the chunk advantages."""
    from wvm.policy.report import agreement_with_truth

    truth = np.array([0.0, 0.1, 0.2, 0.3, 0.3, 0.3, 0.5, 0.7, 0.85, 1.0])  # pauses at frames 3-5
    episodes = [Episode(0, "t", "hesitation", np.zeros((10, 2), np.float32), np.zeros((10, 4), np.float32), truth)]
    # H = 2, so A_t = V(t + 1) - V(t): 0.1 0.1 0.1 0 0 0.2 0.2 0.15 0.15, and 0 at the last frame;
    # the top 7 of 10 are the positive ones, so frames 3, 4 and 9 are dropped
    gt = control_frames({0: truth}, horizon=2)
    assert gt["w_top70"].tolist() == [1, 1, 1, 0, 0, 1, 1, 1, 1, 0]
    sources = {"gt": gt, "wvm": gt.copy(), "ramp": control_frames({0: time_ramp(10)}, horizon=2)}
    table = agreement_with_truth(episodes, sources)
    assert table.loc["wvm (value model)"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    ramp = table.loc["time ramp"]
    # the ramp keeps every sample frame (A = 1/9 on frames 0-8); truth keeps 7 of those 9
    assert ramp["same binary weight"] == pytest.approx(1.0)  # truth's A >= 0 everywhere
    assert ramp["same top-70 % weight"] == pytest.approx(7 / 9)
    assert np.isnan(ramp["advantage correlation"])  # constant advantage: no correlation to speak of


@pytest.mark.slow
def test_policy_bench_quick_end_to_end(tmp_path):
    """The whole command on 1 task; then one saved policy is rolled out again and must repeat
    its recorded trials exactly (MuJoCo is deterministic), so the report's numbers are real
    rollouts. A rerun must reuse everything and report the same numbers."""
    work, out = tmp_path / "work", tmp_path / "report"
    cmd = [sys.executable, "-m", "wvm.cli", "policy-bench", "--quick", "--work", str(work), "--out", str(out)]
    # While the shipped model is being replaced, point this at a checkpoint that loads.
    if os.environ.get("WVM_POLICY_BENCH_CHECKPOINT"):
        cmd += ["--checkpoint", os.environ["WVM_POLICY_BENCH_CHECKPOINT"]]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    results = json.loads((out / "results.json").read_text())
    records = results["records"]
    assert (out / "report.md").exists() and (out / "success.png").exists() and (out / "value_curves.png").exists()
    assert sorted(r["run"] for r in records) == sorted(r.name for r in RUNS)
    assert results["wvm_weights_check"]["match"], results["wvm_weights_check"]
    for r in records:
        assert len(r["success"]) == len(r["steps"]) == 10
        for ok, steps in zip(r["success"], r["steps"]):
            assert (1 <= steps < 500) if ok else steps == 500
    # expert-only BC learns from exactly the expert frames (all but each episode's last frame)
    truth = pd.read_parquet(str(work / "dataset") + ".labels.parquet")
    expert_lengths = truth[truth["kind"] == "expert"].groupby("episode_index").size()
    assert next(r for r in records if r["run"] == "bc_expert")["train"]["samples"] == int((expert_lengths - 1).sum())
    # the summary's success rates are the recorded rollouts'
    for r in records:
        assert summary["success"][r["run"]] == pytest.approx(np.mean(r["success"]), abs=1e-3)

    from wvm.policy.model import load_policy
    from wvm.policy.sim import EvalConfig, TaskSimulator

    record = next(r for r in records if r["run"] == "awr/wvm")
    sim = TaskSimulator(record["task"], EvalConfig(**results["config"]["eval"]))
    replay = sim.evaluate(load_policy(work / "policies" / record["task"] / "awr-wvm" / "seed0"))
    sim.close()
    assert replay["success"] == record["success"] and replay["steps"] == record["steps"]

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout[again.stdout.index("{") :])["success"] == summary["success"]


def test_bad_arguments_are_named(tmp_path):
    for args, message in (
        (["--mix", "expert=3,wobbly=2"], "unknown episode kind 'wobbly'"),
        (["--mix", "retry=3"], "at least one expert"),
        (["--trials", "0"], "expected a positive integer"),
        (["--tasks", "not-a-task"], "unknown Meta-World task"),
        (["--checkpoint", str(tmp_path)], "not a checkpoint directory"),
    ):
        done = subprocess.run([sys.executable, "-m", "wvm.cli", "policy-bench", "--work", str(tmp_path / "w"), *args], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
