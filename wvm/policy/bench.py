"""`wvm policy-bench`: does weighting BC by wvm's values beat plain BC on mixed-quality data?

End to end (issue #11, REFERENCE §3, the paper's App. E protocol):
1. render a mixed-quality Meta-World dataset of reserved tasks (never seen by the value model)
2. label it with `wvm relabel` (the real pipeline) and, as controls, with the time ramp and
   ground-truth progress, turned into weights by the same functions
3. train a small chunk policy per task, method, label source and training seed
4. roll every policy out in the simulator on fixed trials
5. write the report (wvm/policy/report.py)

Every finished policy leaves `result.json` (its rollouts and a key of everything it depends
on) under <work>/policies/; a rerun with the same settings reuses it, so a killed run resumes
and a changed checkpoint retrains only the wvm-weighted policies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from pipelines.errors import WvmError
from schemas import labels as spec
from wvm.policy.data import KINDS, DataConfig, Episode, label_sources, load_episodes, relabel, render_dataset
from wvm.policy.methods import RUNS, Run, build_samples
from wvm.policy.model import PolicyConfig, load_policy, save_policy, train_policy
from wvm.policy.sim import EvalConfig, TaskSimulator

log = logging.getLogger(__name__)

# Reserved tasks (REFERENCE §4) on which a state-based MLP learns from a handful of expert demos
# (measured while building this benchmark: 10 demos gave 0.45-1.0 success); the other reserved
# tasks mostly stay near 0 with so little data, which would hide any difference between methods.
DEFAULT_TASKS = ("button-press-wall-v3", "window-close-v3", "faucet-open-v3", "plate-slide-back-v3", "dial-turn-v3")
# About one third of the episodes are expert; the rest fail to make progress in different ways.
DEFAULT_MIX = {"expert": 15, "hesitation": 6, "retry": 6, "failed": 9, "noisy": 9}
QUICK_MIX = {"expert": 6, "hesitation": 2, "retry": 2, "failed": 3, "noisy": 3}


@dataclass(frozen=True)
class BenchConfig:
    data: DataConfig
    work: Path
    out: Path
    checkpoint: str | None = None  # None: the shipped model
    seeds: int = 3  # training seeds per (task, method, source)
    horizon: int = 10  # action chunk H, also the advantage horizon of every label source
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    workers: int = 1  # processes for rendering (one task each) and for policies (one task and seed each)
    runs: tuple[Run, ...] = RUNS


def preset(quick: bool) -> dict:
    """Settings of the full benchmark (about 30 minutes on the 2-core CPU machine, 2 workers) or --quick."""
    if quick:
        return {
            "tasks": DEFAULT_TASKS[2:3],  # faucet-open: short episodes, learnable from few demos
            "mix": QUICK_MIX,
            "seeds": 1,
            "trials": 10,
            "steps": 600,
        }
    return {"tasks": DEFAULT_TASKS, "mix": DEFAULT_MIX, "seeds": 3, "trials": 50, "steps": PolicyConfig.steps}


def run_bench(config: BenchConfig) -> dict:
    if config.policy.horizon != config.horizon:
        config = replace(config, policy=replace(config.policy, horizon=config.horizon))
    train_scenes = {config.data.placement_seed + i for i in range(len(config.data.tasks))}
    if overlap := train_scenes & set(config.eval.placement_seeds()):
        raise WvmError(f"evaluation placement seeds {sorted(overlap)} are also the training scenes' seeds: choose another --eval-seed")
    config.work.mkdir(parents=True, exist_ok=True)
    timings, compute = {}, {}  # this run's wall time; the first-run cost of every step
    start = time.perf_counter()
    dataset, compute["render_s"] = render_dataset(config.data, config.work)
    timings["render_s"] = round(time.perf_counter() - start, 1)

    # A labels directory keeps the advantages of the horizon it was first written with
    # (`wvm relabel` checks only the model), so each horizon gets its own.
    labels = config.work / ("labels" if config.horizon == 10 else f"labels-h{config.horizon}")
    start = time.perf_counter()
    relabelled = relabel(dataset, labels, config.checkpoint, config.horizon)
    timings["relabel_s"] = round(time.perf_counter() - start, 1)
    model_key = relabelled["model_key"]
    compute["relabel_s"] = _first_run_seconds(config.work / f"{labels.name}-{model_key}.json", relabelled, timings["relabel_s"])

    episodes = load_episodes(dataset)
    sources = label_sources(episodes, str(labels), model_key, config.horizon)
    consistency = check_wvm_weights(sources, episodes, config.horizon)

    start = time.perf_counter()
    per_task = {task: [e for e in episodes if e.task == task] for task in config.data.tasks}
    if empty := [task for task, eps in per_task.items() if not eps]:
        raise WvmError(f"the dataset has no episode of task(s) {empty}")
    # One job per task and seed, not per task, so that no worker idles while another finishes
    # a last task (5 tasks on 2 workers would leave one idle for a third of the time).
    jobs = [(config, task, seed, per_task[task], sources, model_key) for task in config.data.tasks for seed in range(config.seeds)]
    if config.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(config.workers, len(jobs))) as pool:
            per_job = list(pool.map(_policies_job, jobs))
    else:
        per_job = [_policies_job(j) for j in jobs]
    timings["policies_s"] = round(time.perf_counter() - start, 1)
    order = {run.name: i for i, run in enumerate(config.runs)}
    records = sorted((r for rs in per_job for r in rs), key=lambda r: (config.data.tasks.index(r["task"]), order[r["run"]], r["seed"]))
    compute["policies_s"] = round(sum(r["train_s"] + r["eval_s"] for r in records), 1)

    results = {
        "config": _config_json(config),
        "model": {k: relabelled.get(k) for k in ("model_key", "model_version", "checkpoint_hash")},
        "checkpoint": config.checkpoint or "shipped default",
        "dataset": {
            "path": str(dataset),
            "episodes": {t: {k: sum(e.task == t and e.kind == k for e in episodes) for k in KINDS} for t in config.data.tasks},
            "frames": {t: int(sum(len(e.state) for e in episodes if e.task == t)) for t in config.data.tasks},
        },
        "wvm_weights_check": consistency,
        "timings": timings,
        "compute": compute,
        "records": records,
    }
    from wvm.policy.report import write_report

    start = time.perf_counter()
    summary = write_report(results, episodes, sources, config.out)
    results["agreement_with_truth"] = summary["agreement_with_truth"]
    timings["report_s"] = round(time.perf_counter() - start, 1)
    timings["total_s"] = round(sum(v for k, v in timings.items() if k != "total_s"), 1)
    (config.out / "results.json").write_text(json.dumps(results, indent=1))
    return {"report": str(config.out / "report.md"), "timings": timings, **summary}


def _first_run_seconds(path: Path, relabelled: dict, seconds: float) -> float:
    """How long `wvm relabel` took when it labelled this dataset (a rerun labels nothing and
    takes only its start-up time), remembered in the work directory."""
    if relabelled.get("episodes_labelled", 0) or not path.exists():
        path.write_text(json.dumps({"seconds": seconds}))
        return seconds
    return float(json.loads(path.read_text())["seconds"])


def _policies_job(job: tuple) -> list[dict]:
    """Every method's policy of one task and training seed."""
    config, task, seed, episodes, sources, model_key = job
    sim = TaskSimulator(task, config.eval)
    try:
        return [_policy(config, task, run, seed, build_samples(run, episodes, sources, config.horizon), sim, model_key) for run in config.runs]
    finally:
        sim.close()


def _policy(config: BenchConfig, task: str, run: Run, seed: int, samples, sim: TaskSimulator, model_key: str) -> dict:
    """Train and evaluate one policy, or reuse what an earlier run with the same key left."""
    path = config.work / "policies" / task / run.slug / f"seed{seed}"
    key = _key(config, task, run, seed, model_key, hashlib.sha256(np.ascontiguousarray(samples.weight, np.float32).tobytes()).hexdigest()[:16])
    result_file = path / "result.json"
    if result_file.exists():
        saved = json.loads(result_file.read_text())
        if saved.get("key") == key:
            return saved["record"]
    start = time.perf_counter()
    policy, train_log = train_policy(samples, config.policy, seed=seed)
    train_s = time.perf_counter() - start
    save_policy(policy, config.policy, path)
    rollouts = sim.evaluate(load_policy(path))  # evaluate what was saved, as a user would load it
    record = {
        "task": task,
        "method": run.method,
        "source": run.source,
        "run": run.name,
        "seed": seed,
        "success": rollouts["success"],
        "steps": rollouts["steps"],
        "train": train_log,
        "train_s": round(train_s, 2),
        "eval_s": rollouts["seconds"],
    }
    result_file.write_text(json.dumps({"key": key, "record": record}))
    log.info("%s %s seed %d: success %.2f (%.0fs train, %.0fs eval)", task, run.name, seed, np.mean(record["success"]), train_s, rollouts["seconds"])
    return record


def _key(config: BenchConfig, task: str, run: Run, seed: int, model_key: str, weights: str) -> str:
    """Everything a policy's result depends on; the value model and the digest of the sample
    `weights` it gave (they change with how weights are made from labels) only for wvm-weighted runs."""
    parts = {
        "data": config.data.datagen_settings(),
        "task": task,
        "run": run.name,
        "seed": seed,
        "horizon": config.horizon,
        "policy": asdict(config.policy),
        "eval": asdict(config.eval),
        "labels": [model_key, weights] if run.source == "wvm" else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def check_wvm_weights(sources: dict, episodes: list[Episode], horizon: int) -> dict:
    """Recompute the advantages and weights from the progress wvm wrote, with the controls' code
    path: they must equal the stored columns, or the three sources are not comparable."""
    from wvm.policy.data import control_frames

    wvm = sources["wvm"]
    progress = {int(i): g.sort_values(spec.FRAME_INDEX)[spec.PROGRESS].to_numpy(np.float64) for i, g in wvm.groupby(spec.EPISODE_INDEX)}
    again = control_frames(progress, horizon)
    result = {}
    for column in (spec.ADVANTAGE, *spec.WEIGHT_COLUMNS):
        result[column] = float(np.max(np.abs(again[column].to_numpy(np.float64) - wvm[column].to_numpy(np.float64))))
    result["match"] = all(v < 1e-4 for v in result.values())
    if not result["match"]:
        log.warning("frames.parquet weights differ from a recomputation from its progress: %s", result)
    return result


def _config_json(config: BenchConfig) -> dict:
    return {
        "data": config.data.datagen_settings(),
        "seeds": config.seeds,
        "horizon": config.horizon,
        "policy": asdict(config.policy),
        "eval": asdict(config.eval),
        "runs": [r.name for r in config.runs],
        "workers": config.workers,
    }
