"""`wvm policy-bench`: argument parsing; the work is in wvm/policy/bench.py."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from pipelines.errors import WvmError

DESCRIPTION = """\
Downstream proof of the labels (issue #11): render a mixed-quality Meta-World dataset of reserved
tasks (expert, hesitation, retry, failed and noisy-action episodes), label it with `wvm relabel`
and, as controls, with the time ramp and ground-truth progress; train small state-based chunk
policies (H = 10) with plain BC, BC on expert episodes only, binary-filtered BC, top-70 %
filtered BC and AWR (tau = 10, delta = 2) from each label source; roll every policy out in the
simulator on fixed trials; write report.md, results.json and plots into OUT.

Rendered data, labels and finished policies are kept in WORK and reused by a rerun with the
same settings, so an interrupted run resumes. The full benchmark (5 tasks, 3 seeds, 50 trials)
takes about 30 minutes on a 2-core CPU with --workers 2; --quick (1 task, 1 seed, 10 trials) a few minutes.
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _mix(text: str) -> dict[str, int]:
    from wvm.policy.data import KINDS

    mix = {}
    for part in text.split(","):
        kind, _, count = part.strip().partition("=")
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown episode kind {kind!r}; kinds: {', '.join(KINDS)}")
        try:
            mix[kind] = int(count)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected KIND=COUNT, got {part!r}") from None
        if mix[kind] < 0:
            raise argparse.ArgumentTypeError(f"negative count for {kind}")
    if mix.get("expert", 0) < 1:
        raise argparse.ArgumentTypeError("the mix needs at least one expert episode per task (BC on experts is the reference)")
    return mix


def _tasks(text: str) -> tuple[str, ...]:
    from wvm.datagen import metaworld

    tasks = tuple(t.strip() if t.strip().endswith("-v3") else f"{t.strip()}-v3" for t in text.split(",") if t.strip())
    unknown = sorted(set(tasks) - set(metaworld.all_tasks()))
    if unknown:
        raise WvmError(f"unknown Meta-World task(s): {unknown}")
    if seen := sorted(set(tasks) - set(metaworld.RESERVED_TASKS)):
        logging.warning("task(s) %s are training tasks of the value model: its labels there are not a fair test", seen)
    return tasks


def _run(args: argparse.Namespace) -> dict:
    from wvm.policy.bench import BenchConfig, preset, run_bench
    from wvm.policy.data import DataConfig
    from wvm.policy.model import PolicyConfig
    from wvm.policy.sim import EvalConfig

    defaults = preset(args.quick)
    name = "quick" if args.quick else "full"
    tasks = _tasks(args.tasks) if args.tasks else defaults["tasks"]
    if args.checkpoint and not (Path(args.checkpoint) / "config.json").is_file():
        raise WvmError(f"--checkpoint {args.checkpoint}: not a checkpoint directory (no config.json)")
    config = BenchConfig(
        data=DataConfig(
            tasks=tasks,
            mix=args.mix or defaults["mix"],
            seed=args.data_seed,
            noise_scale=args.noise,
            workers=args.workers,
        ),
        work=Path(args.work or f"data/policy_bench/{name}"),
        out=Path(args.out or ("reports/policy/quick" if args.quick else "reports/policy")),
        checkpoint=args.checkpoint,
        seeds=args.seeds or defaults["seeds"],
        horizon=args.horizon,
        policy=replace(PolicyConfig(), steps=args.steps or defaults["steps"]),
        eval=EvalConfig(trials=args.trials or defaults["trials"], seed=args.eval_seed, max_steps=args.max_steps),
        workers=args.workers,
    )
    return run_bench(config)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "policy-bench",
        help="train and roll out policies weighted by wvm labels vs plain BC (downstream benchmark)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="1 task, a small dataset, 1 seed, 10 trials (a few minutes)")
    p.add_argument("--checkpoint", default=None, help="value model for `wvm relabel` (default: the shipped model)")
    p.add_argument("--tasks", default=None, help="comma list of Meta-World tasks (default: 5 reserved tasks; --quick: faucet-open)")
    p.add_argument("--mix", type=_mix, default=None, metavar="KIND=N,...",
                   help="episodes per task per kind: expert, hesitation, retry, failed, noisy "
                        "(default expert=15,hesitation=6,retry=6,failed=9,noisy=9)")  # fmt: skip
    p.add_argument("--seeds", type=_positive, default=None, help="training seeds per task and method (default 3; --quick 1)")
    p.add_argument("--trials", type=_positive, default=None, help="rollouts per policy (default 50; --quick 10)")
    p.add_argument("--steps", type=_positive, default=None, help="policy training steps (default 1500; --quick 600)")
    p.add_argument("--max-steps", type=_positive, default=500, help="env steps per rollout before it counts as failed")
    p.add_argument("--horizon", type=_positive, default=10, help="action chunk H, also passed to `wvm relabel --horizon` (default 10)")
    p.add_argument("--noise", type=float, default=0.3, help="noisy episodes: std of the correlated xyz action noise")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the rendered dataset")
    p.add_argument("--eval-seed", type=int, default=1000, help="first seed of the fixed trial placements")
    p.add_argument("--work", default=None, help="data, labels and policies (default data/policy_bench/full or .../quick)")
    p.add_argument("--out", default=None, help="report directory (default reports/policy, --quick: reports/policy/quick)")
    p.add_argument("--workers", type=_positive, default=1, help="processes for rendering (one task each) and for policies (one task and training seed each)")
    p.set_defaults(run=_run)
