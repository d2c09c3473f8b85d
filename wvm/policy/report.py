"""The policy-learning report: report.md, results.json and plots in the output directory.

Numbers come only from the rollout records: success rates pooled over training seeds with a
two-level bootstrap interval (seeds, then trials), a Wilson interval per single policy, mean
episode length (env steps; a failed trial counts the full limit), and the difference of every
method to plain BC. The verdict sentences are derived from those intervals, never written in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from schemas import labels as spec
from schemas.labels import AWR_DELTA
from wvm.evaluate import plot_task_kind_grid
from wvm.policy.data import KINDS, SOURCE_NAMES, SOURCES, Episode, by_episode
from wvm.policy.methods import METHODS, WEIGHT_COLUMN
from wvm.policy.stats import bootstrap_difference, hierarchical_bootstrap, wilson_interval

SOURCE_COLOURS = {None: "0.55", "wvm": "tab:blue", "ramp": "tab:orange", "gt": "tab:green"}


def _groups(records: list[dict], run: str, tasks: list[str], metric: str) -> list[list[np.ndarray]]:
    """groups[task][seed] = per-trial outcomes of `run` (success as 0/1, or env steps)."""
    groups = []
    for task in tasks:
        seeds = sorted((r for r in records if r["run"] == run and r["task"] == task), key=lambda r: r["seed"])
        groups.append([np.asarray(r[metric], dtype=np.float64) for r in seeds])
    return groups


def _fmt(estimate: float, low: float, high: float, digits: int = 2) -> str:
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def summarise(records: list[dict], tasks: list[str], runs: list[str]) -> dict:
    """Per run: mean success over tasks and its interval, difference to plain BC, episode length;
    per run and task: success and its interval."""
    summary = {}
    bc = _groups(records, "bc", tasks, "success")
    for run in runs:
        success = _groups(records, run, tasks, "success")
        steps = _groups(records, run, tasks, "steps")
        row = {
            "success": hierarchical_bootstrap(success),
            "steps": hierarchical_bootstrap(steps),
            "per_task": {t: hierarchical_bootstrap([g]) for t, g in zip(tasks, success)},
        }
        row["vs_bc"] = bootstrap_difference(success, bc) if run != "bc" else (0.0, 0.0, 0.0)
        summary[run] = row
    return summary


def _verdict(summary: dict, runs: list[str]) -> list[str]:
    """Plain statements from the intervals: better / worse / no clear difference."""

    def compare(diff: tuple[float, float, float]) -> str:
        est, low, high = diff
        if low > 0:
            return f"beats plain BC by {est:+.2f} (95 % CI {low:+.2f} to {high:+.2f})"
        if high < 0:
            return f"is worse than plain BC by {est:+.2f} (95 % CI {low:+.2f} to {high:+.2f})"
        return f"is not distinguishable from plain BC: {est:+.2f} (95 % CI {low:+.2f} to {high:+.2f})"

    lines = []
    for method in WEIGHT_COLUMN:
        for source in SOURCES:
            run = f"{method}/{source}"
            if run in summary:
                lines.append(f"- **{run}** {compare(summary[run]['vs_bc'])}.")
    if "bc_expert" in summary:
        lines.append(f"- **bc_expert** (reference) {compare(summary['bc_expert']['vs_bc'])}.")
    gaps = []
    for method in WEIGHT_COLUMN:
        w, g = summary.get(f"{method}/wvm"), summary.get(f"{method}/gt")
        if w and g:
            gaps.append(f"{method}: wvm {w['success'][0]:.2f} vs ground truth {g['success'][0]:.2f} ({w['success'][0] - g['success'][0]:+.2f})")
    if gaps:
        lines.append("- Gap to ground-truth weighting (mean success): " + "; ".join(gaps) + ".")
    return lines


def weight_shares(episodes: list[Episode], sources: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Share of the training weight that lands on each episode kind, per run (frames 0..T-2,
    the frames that become samples): what each filter actually kept."""
    kinds = [k for k in KINDS if any(e.kind == k for e in episodes)]
    rows = {}
    frames_per_kind = {k: sum(len(e.state) - 1 for e in episodes if e.kind == k) for k in kinds}
    total = sum(frames_per_kind.values())
    rows["bc"] = {k: frames_per_kind[k] / total for k in kinds}
    rows["bc_expert"] = {k: float(k == "expert") for k in kinds}
    for method, column in WEIGHT_COLUMN.items():
        for source in SOURCES:
            w = by_episode(sources[source], column)
            mass = {k: sum(float(w[e.index][:-1].sum()) for e in episodes if e.kind == k) for k in kinds}
            all_mass = sum(mass.values()) or 1.0
            rows[f"{method}/{source}"] = {k: mass[k] / all_mass for k in kinds}
    return pd.DataFrame(rows).T[kinds]


def agreement_with_truth(episodes: list[Episode], sources: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """How close each source's frame weights come to the ground truth's on the same frames
    (0..T-2, the ones that become samples): the share of frames given the same binary and
    top-70 % weight, and the correlation of the chunk advantages. An offline view of the labels
    beside the rollouts, which also vary with the policies' training."""
    indices = {e.index for e in episodes}

    def usable(source: str) -> pd.DataFrame:
        frames = sources[source].sort_values([spec.EPISODE_INDEX, spec.FRAME_INDEX])
        last = frames.groupby(spec.EPISODE_INDEX)[spec.FRAME_INDEX].transform("max")
        return frames[frames[spec.EPISODE_INDEX].isin(indices) & (frames[spec.FRAME_INDEX] < last)].reset_index(drop=True)

    truth = usable("gt")
    table = {}
    for source in ("wvm", "ramp"):
        frames = usable(source)
        advantage = frames[spec.ADVANTAGE].to_numpy(np.float64)
        table[SOURCE_NAMES[source]] = {
            "same binary weight": float(np.mean(frames[spec.W_BINARY].to_numpy() == truth[spec.W_BINARY].to_numpy())),
            "same top-70 % weight": float(np.mean(frames[spec.W_TOP70].to_numpy() == truth[spec.W_TOP70].to_numpy())),
            # constant advantages (the time ramp on episodes of one length) correlate with nothing: nan
            "advantage correlation": float(np.corrcoef(advantage, truth[spec.ADVANTAGE].to_numpy(np.float64))[0, 1]) if advantage.std() > 0 else float("nan"),
        }
    return pd.DataFrame(table).T


def awr_saturation(episodes: list[Episode], sources: dict[str, pd.DataFrame], delta: float) -> dict[str, float]:
    """Fraction of frames whose AWR weight sits at the cap delta: where exp(tau A) >= delta the
    weight no longer tells frames apart, and AWR drifts towards plain BC."""
    indices = {e.index for e in episodes}
    out = {}
    for source in SOURCES:
        frames = sources[source]
        w = frames.loc[frames[spec.EPISODE_INDEX].isin(indices), spec.W_AWR].to_numpy()
        out[source] = float(np.mean(w >= delta - 1e-6)) if len(w) else float("nan")
    return out


def progress_errors(episodes: list[Episode], sources: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean absolute error of each source's progress against ground truth, per episode kind."""
    kinds = [k for k in KINDS if any(e.kind == k for e in episodes)]
    table = {}
    for source in ("wvm", "ramp"):
        p = by_episode(sources[source], spec.PROGRESS)
        table[SOURCE_NAMES[source]] = {
            k: float(np.mean([np.mean(np.abs(p[e.index] - e.gt_progress)) for e in episodes if e.kind == k])) for k in kinds
        }
    return pd.DataFrame(table).T[kinds]


def plot_success(summary: dict, tasks: list[str], runs: list[str], path: Path) -> None:
    """One panel per task plus the mean over tasks: success of every run with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = tasks + (["mean over tasks"] if len(tasks) > 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 3.3 * len(panels)), 4.0), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        for i, run in enumerate(runs):
            est, low, high = summary[run]["success"] if panel == "mean over tasks" else summary[run]["per_task"][panel]
            source = run.split("/")[1] if "/" in run else None
            ax.bar(i, est, color=SOURCE_COLOURS[source], yerr=[[est - low], [high - est]], capsize=2, error_kw={"lw": 0.8})
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(runs, rotation=75, fontsize=6)
        ax.set_title(_short(panel), fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.tick_params(axis="y", labelsize=7)
    axes[0][0].set_ylabel("success rate (95 % CI)", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=SOURCE_COLOURS[s]) for s in (None, *SOURCES)]
    fig.legend(handles, ["no labels", *(SOURCE_NAMES[s] for s in SOURCES)], fontsize=7, loc="lower center", ncol=4 if len(panels) > 1 else 2, frameon=False)
    fig.tight_layout(rect=(0, 0.08 if len(panels) > 1 else 0.12, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_value_curves(episodes: list[Episode], sources: dict[str, pd.DataFrame], tasks: list[str], path: Path) -> None:
    """One row per task, one column per episode kind (its first episode): the progress of the
    three label sources."""
    progress = {s: by_episode(sources[s], spec.PROGRESS) for s in SOURCES}

    def draw(ax, e: Episode) -> None:
        for source, style in (("gt", "-"), ("ramp", ":"), ("wvm", "-")):
            lw = 2.5 if source == "gt" else 1.2
            alpha = 0.4 if source == "gt" else 1.0
            ax.plot(progress[source][e.index], style, color=SOURCE_COLOURS[source], lw=lw, alpha=alpha, label=SOURCE_NAMES[source])

    kinds = [k for k in KINDS if any(e.kind == k for e in episodes)]
    plot_task_kind_grid(episodes, tasks, kinds, draw, lambda task, kind, e: f"{_short(task)}: {kind} (ep {e.index})", path, width=2.6)


def write_report(results: dict, episodes: list[Episode], sources: dict[str, pd.DataFrame], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    records = results["records"]
    config = results["config"]
    tasks = config["data"]["tasks"]
    runs = [r for r in config["runs"] if any(x["run"] == r for x in records)]
    summary = summarise(records, tasks, runs)
    shares = weight_shares([e for e in episodes if e.task in tasks], sources)
    errors = progress_errors([e for e in episodes if e.task in tasks], sources)
    saturation = awr_saturation([e for e in episodes if e.task in tasks], sources, AWR_DELTA)
    agreement = agreement_with_truth([e for e in episodes if e.task in tasks], sources)
    plot_success(summary, tasks, runs, out / "success.png")
    plot_value_curves(episodes, sources, tasks, out / "value_curves.png")
    verdict = _verdict(summary, runs)
    trials, seeds = config["eval"]["trials"], config["seeds"]

    lines = [
        "# Policy learning from mixed-quality data, weighted by wvm",
        "",
        "Generated by `wvm policy-bench`. Does weighting behaviour cloning by wvm's values beat plain BC on "
        "mixed-quality data, and how close does it get to weighting by ground-truth progress?",
        "",
        f"- Value model: `{results['model']['model_key']}` ({results['checkpoint']}); labels from `wvm relabel`, read from its `frames.parquet`.",
        f"- Tasks (reserved, never seen by the value model): {', '.join(_short(t) for t in tasks)}.",
        f"- Episodes per task: {', '.join(f'{k} {v}' for k, v in config['data']['mix'].items())}; "
        f"frames per task: {', '.join(f'{_short(t)} {n}' for t, n in results['dataset']['frames'].items())}.",
        f"- Policies: MLP ({config['policy']['layers']} x {config['policy']['hidden']}) on the 39-dim state, chunks of H = {config['horizon']} actions, "
        f"{config['policy']['steps']} steps of batch {config['policy']['batch_size']}; {seeds} training seed(s) per task and method.",
        f"- Evaluation: {trials} fixed trials per task and policy, at most {config['eval']['max_steps']} env steps, "
        f"action held {config['eval']['action_repeat']} env steps per frame.",
        f"- Time on this machine: {_timing_line(results['compute'])}. This invocation: "
        f"{sum(results['timings'].get(k, 0) for k in ('render_s', 'relabel_s', 'policies_s')) / 60:.1f} min (finished steps are reused).",
        f"- Reproduce: `{_command(results)}`",
        "",
        "## Result",
        "",
        *verdict,
        "",
        "## Success rate (mean over tasks) and episode length",
        "",
        "Success: mean over tasks of the success rate pooled over seeds; 95 % interval from a two-level bootstrap "
        "(training seeds, then trials). Episode length: env steps, a failed trial counts the full limit.",
        "",
        "| method | labels | success | vs plain BC | episode length |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        method, _, source = run.partition("/")
        row = summary[run]
        vs = "" if run == "bc" else _fmt(*row["vs_bc"], digits=2)
        lines.append(f"| {METHODS[method]} | {SOURCE_NAMES.get(source, '—')} | {_fmt(*row['success'])} | {vs} | {_fmt(*row['steps'], digits=0)} |")
    lines += ["", "![success](success.png)", "", "## Success rate per task", ""]
    lines.append("| run | " + " | ".join(_short(t) for t in tasks) + " |")
    lines.append("|---|" + "---|" * len(tasks))
    for run in runs:
        lines.append(f"| {run} | " + " | ".join(_fmt(*summary[run]["per_task"][t]) for t in tasks) + " |")
    lines += [
        "",
        "## What the labels did",
        "",
        "Share of the training weight on each episode kind (rows sum to 1). Plain BC's row is the data itself; "
        "a good value model moves weight towards expert frames.",
        "",
        _markdown_table(shares, ".2f"),
        "",
        "Mean absolute error of the progress against ground truth, per episode kind:",
        "",
        _markdown_table(errors, ".3f"),
        "",
        "Agreement with ground truth's weights on the same frames (a filter that matches ground truth frame for frame "
        "trains the same policies as ground truth; the rollouts above also vary with the policies' training):",
        "",
        _markdown_table(agreement, ".3f"),
        "",
        "Frames whose AWR weight is at the cap delta = 2 (there AWR cannot tell frames apart): "
        + ", ".join(f"{SOURCE_NAMES[k]} {v:.0%}" for k, v in saturation.items())
        + ".",
        "",
        f"`frames.parquet` weights recomputed from its progress with the controls' code: "
        f"{'identical' if results['wvm_weights_check']['match'] else 'DIFFERENT: ' + str(results['wvm_weights_check'])}.",
        "",
        "Sample value curves (first episode of each kind per task):",
        "",
        "![value curves](value_curves.png)",
        "",
        "## Caveats",
        "",
        f"- Frames are recorded every {config['eval']['action_repeat']} env steps, so a chunk of H = {config['horizon']} frames spans "
        f"{config['horizon'] * config['eval']['action_repeat']} env steps, and the chunk advantage A_t = V(t + H - 1) - V(t) looks that far "
        "ahead: on episodes of a few dozen frames it smooths over short pauses and retries.",
        "- Binary filtering keeps A >= 0, so frames where progress stays flat (a pause, a stalled failure under "
        "ground truth) are kept; top-70 % and AWR are the filters that can drop them.",
        "- Noisy-action episodes have no analytic ground truth; theirs is measured in the simulator: 1 - S_t / S_0, "
        "S_t the env steps the clean expert needs to succeed from frame t's state (wvm/datagen/metaworld.py).",
        "- Intervals: pooled success rates vary with the training seed as well as the trials; with few seeds the "
        "bootstrap interval is itself rough.",
        "",
        "## Every policy",
        "",
        "<details><summary>success per training seed (Wilson 95 % interval)</summary>",
        "",
        "| task | run | seed | successes | success [95 % CI] | mean length | train samples | train s | eval s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (tasks.index(r["task"]), runs.index(r["run"]), r["seed"])):
        k, n = int(sum(r["success"])), len(r["success"])
        low, high = wilson_interval(k, n)
        lines.append(
            f"| {_short(r['task'])} | {r['run']} | {r['seed']} | {k}/{n} | {k / n:.2f} [{low:.2f}, {high:.2f}] | "
            f"{np.mean(r['steps']):.0f} | {r['train']['samples']} | {r['train_s']:.0f} | {r['eval_s']:.0f} |"
        )
    lines += ["", "</details>", ""]
    (out / "report.md").write_text("\n".join(lines))
    return {
        "success": {run: round(summary[run]["success"][0], 3) for run in runs},
        "success_ci": {run: [round(v, 3) for v in summary[run]["success"][1:]] for run in runs},
        "verdict": verdict,
        "agreement_with_truth": {
            source: {k: (None if np.isnan(v) else round(v, 4)) for k, v in row.items()} for source, row in agreement.to_dict(orient="index").items()
        },
    }


def _command(results: dict) -> str:
    """The `wvm policy-bench` command line that reruns exactly this configuration."""
    c = results["config"]
    data = c["data"]
    parts = [
        "wvm policy-bench",
        f"--tasks {','.join(data['tasks'])}",
        "--mix " + ",".join(f"{k}={v}" for k, v in data["mix"].items()),
        f"--seeds {c['seeds']} --trials {c['eval']['trials']} --steps {c['policy']['steps']} --horizon {c['horizon']}",
        f"--max-steps {c['eval']['max_steps']} --noise {data['noise_scale']} --data-seed {data['seed']} --eval-seed {c['eval']['seed']}",
    ]
    if results["checkpoint"] != "shipped default":
        parts.append(f"--checkpoint {results['checkpoint']}")
    return " ".join(parts)


def _short(task: str) -> str:
    return task.removesuffix("-v3")


def _markdown_table(frame: pd.DataFrame, fmt: str) -> str:
    lines = ["| | " + " | ".join(map(str, frame.columns)) + " |", "|---|" + "---|" * len(frame.columns)]
    for name, row in frame.iterrows():
        lines.append(f"| {name} | " + " | ".join(format(v, fmt) for v in row) + " |")
    return "\n".join(lines)


def _timing_line(timings: dict) -> str:
    names = {"render_s": "render", "relabel_s": "wvm relabel", "policies_s": "train + evaluate policies"}
    parts = [f"{names[k]} {timings[k] / 60:.1f} min" for k in names if k in timings]
    total = sum(timings.get(k, 0) for k in names)
    return ", ".join(parts) + f"; total {total / 60:.1f} min"
