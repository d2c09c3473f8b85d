"""How two value models' labels compare downstream: per wvm-weighted method of two `wvm
policy-bench` results files on the same render, success(A) - success(B) with its bootstrap
interval (`wvm.policy.stats.bootstrap_difference`: tasks fixed, training seeds then trials
resampled, the two sides independently), and the four methods pooled. The ship rule
(reports/experiments.md) reads a new model as losing the policy bench when an interval lies
below zero.

    python scripts/policy_difference.py NEW/results.json reports/policy/results.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from wvm.policy.stats import bootstrap_difference

WVM_RUNS = ("bc_binary/wvm", "bc_top70/wvm", "awr/wvm", "bc_episodes/wvm")


def outcomes(path: str, run: str) -> list[list[np.ndarray]]:
    """Per task, per training seed: the trials' successes of `run` in a results file."""
    records = [r for r in json.load(open(path))["records"] if r["run"] == run]
    if not records:
        raise SystemExit(f"{path}: no policies of {run!r}")
    tasks = sorted({r["task"] for r in records})
    return [[np.asarray(r["success"], float) for r in sorted(records, key=lambda r: r["seed"]) if r["task"] == t] for t in tasks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="results.json of the new model's run")
    parser.add_argument("b", help="results.json of the model to compare against (same render)")
    args = parser.parse_args()
    for run in WVM_RUNS:
        estimate, low, high = bootstrap_difference(outcomes(args.a, run), outcomes(args.b, run))
        print(f"{run:16s} {estimate:+.3f} [{low:+.3f}, {high:+.3f}]")
    pooled = [sum((outcomes(path, run) for run in WVM_RUNS), []) for path in (args.a, args.b)]
    estimate, low, high = bootstrap_difference(*pooled)
    print(f"{'all four':16s} {estimate:+.3f} [{low:+.3f}, {high:+.3f}]")


if __name__ == "__main__":
    main()
