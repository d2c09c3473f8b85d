"""Downstream benchmark (issue #11): policies learnt from mixed-quality data, weighted by wvm's
labels vs plain BC, the time ramp and ground-truth progress. A thin caller of `wvm policy-bench`
(wvm/policy/), run from the repository root so its defaults land in data/policy_bench/ and
reports/policy/:

    .venv/bin/python benchmarks/policy_learning.py            # full: 5 tasks x 11 runs x 3 seeds x 50 trials, ~2 h
    .venv/bin/python benchmarks/policy_learning.py --quick    # 1 task, 1 seed, 10 trials, a few minutes

Every option of `wvm policy-bench --help` passes through (e.g. --checkpoint, --workers 2).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    os.chdir(ROOT)
    from wvm.cli import main

    sys.exit(main(["policy-bench", *sys.argv[1:]]))
