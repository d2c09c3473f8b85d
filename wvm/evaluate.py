"""`wvm eval`: Expert-VOC, Hesitation-RMSE, Retry-VOC (REFERENCE §2) and Failure-AUROC for the
model and its baselines on benchmark datasets with ground truth, as a Markdown report with
per-task plot grids."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import WvmError
from pipelines.sources import open_source
from pipelines.weights import episode_summary
from pipelines.windows import EpisodeChain, label_episodes
from schemas import ground_truth as gt
from schemas import labels as spec
from schemas.ground_truth import KINDS, LABELS_SUFFIX, SUCCESS_KINDS
from wvm.data import ground_truth_by_episode, labelled_progress
from wvm.handlers import ValueModelHandler
from wvm.metrics import episode_metric, failure_auroc, ground_truth

log = logging.getLogger(__name__)

METRICS = ("expert_voc", "hesitation_rmse", "retry_voc", "failure_auroc")
METRIC_TITLES = {
    "expert_voc": "Expert-VOC ↑",
    "hesitation_rmse": "Hesitation-RMSE ↓",
    "retry_voc": "Retry-VOC ↑",
    "failure_auroc": "Failure-AUROC ↑",
}
RAMP = "time ramp"


@dataclass
class BenchEpisode:
    index: int
    task: str
    kind: str
    seg_start: int
    seg_end: int
    fps: float
    frames: np.ndarray  # uint8 (T, H, W, 3)
    truth: np.ndarray  # (T,)
    states: np.ndarray | None = None  # float32 (T, S) robot state, when the dataset records one


EXPERT_ONLY = "expert"  # --bench NAME=DATASET,expert: every episode is a successful demonstration


def load_bench(dataset: str, labels: str | None = None, camera: str | None = None) -> list[BenchEpisode]:
    """A dataset (any format pipelines.sources reads) and its ground truth (default: `<dataset>.labels.parquet` beside it;
    `labels="expert"` for a dataset of demonstrations without labels, e.g. a real robot's,
    scored by Expert-VOC only)."""
    source = open_source(dataset)
    labels = labels or dataset.rstrip("/") + LABELS_SUFFIX
    truth = None if labels == EXPERT_ONLY else ground_truth_by_episode(labels)
    camera = camera or source.default_camera()
    if camera not in source.cameras:
        raise WvmError(f"{dataset}: no camera {camera!r} to score (it has {source.cameras})")
    episodes = []
    for episode in source.episodes():
        label = truth.get(episode.index) if truth is not None else None
        if truth is not None and label is None:
            continue
        if label is not None and str(label[gt.KIND].iloc[0]) not in KINDS:
            continue  # e.g. the policy bench's noisy episodes: no metric scores them
        table = source.read_frames(episode)
        if label is None:
            kind, m, n, progress = "expert", -1, -1, ground_truth(len(table), "expert")
        else:
            m, n = int(label[gt.SEG_START].iloc[0]), int(label[gt.SEG_END].iloc[0])
            kind, progress = labelled_progress(label, len(table), f"{labels}: episode {episode.index} of {dataset}")
        frames = np.stack(list(source.decode(episode, camera, table, np.arange(len(table)))))
        episodes.append(BenchEpisode(episode.index, episode.task, kind, m, n, source.fps, frames, progress, table.state))
    return episodes


def predict(
    handler: ValueModelHandler | None, episodes: list[BenchEpisode], batch_size: int = 64, with_states: bool = True
) -> tuple[dict[int, np.ndarray], dict[int, float], float]:
    """Per-frame values and the probability of success of every episode, and the mean
    out-of-distribution score of the bench (nan where the model has none, and for the time-ramp
    baseline, handler None). Requests carry the episodes' robot states unless `with_states` is false."""
    if handler is None:
        ramps = {e.index: np.arange(len(e.truth)) / max(len(e.truth) - 1, 1) for e in episodes}
        return ramps, {e.index: float("nan") for e in episodes}, float("nan")
    by_key = {str(e.index): e for e in episodes}
    chains = [EpisodeChain(str(e.index), len(e.frames), e.fps, e.task, handler.geometry) for e in episodes]

    def states(chain: EpisodeChain, idx: np.ndarray) -> np.ndarray | None:
        known = by_key[chain.key].states
        return known[idx] if known is not None and with_states else None

    label_episodes(chains, lambda chain, idx: by_key[chain.key].frames[idx], handler.answer_batch, batch_size, states)
    return {int(c.key): c.frame_values() for c in chains}, {int(c.key): c.success for c in chains}, float(np.mean([c.ood for c in chains]))


def score(episodes: list[BenchEpisode], predictions: dict[int, np.ndarray], success: dict[int, float] | None = None) -> dict[str, float]:
    """Per-episode metrics averaged per kind, and Failure-AUROC of the episode quality score
    (pipelines.weights.episode_summary of the values and `success` probabilities, what
    episodes.parquet reports and users filter on) over successful vs failed episodes."""
    per_metric: dict[str, list[float]] = {m: [] for m in METRICS}
    for e in episodes:
        scored = episode_metric(e.kind, predictions[e.index], e.truth, e.seg_start, e.seg_end)
        if scored:
            per_metric[scored[0]].append(scored[1])
    results = {m: float(np.mean(v)) if v else float("nan") for m, v in per_metric.items()}
    success = success or {}
    quality = [episode_summary(predictions[e.index], success.get(e.index, float("nan")))[spec.QUALITY] for e in episodes]
    results["failure_auroc"] = failure_auroc(np.array(quality), np.array([e.kind in SUCCESS_KINDS for e in episodes]))
    return results


def plot_task_kind_grid(episodes, tasks: list[str], kinds: list[str], draw, title, path: Path, width: float = 2.7) -> None:
    """One row per task, one column per episode kind, the task's first episode of that kind in
    each cell: `draw(ax, episode)` plots its curves, `title(task, kind, episode)` names the cell.
    Episodes need `.task`, `.kind`; shared by the eval report and the policy bench."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not tasks or not kinds:
        return
    fig, axes = plt.subplots(len(tasks), len(kinds), figsize=(width * len(kinds), 1.9 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        for col, kind in enumerate(kinds):
            ax = axes[row][col]
            e = next((x for x in episodes if x.task == task and x.kind == kind), None)
            if e is None:
                ax.axis("off")
                continue
            draw(ax, e)
            ax.set_title(title(task, kind, e), fontsize=7)
            ax.set_ylim(-0.05, 1.05)
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=5, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_grid(episodes: list[BenchEpisode], predictions: dict[str, dict[int, np.ndarray]], path: Path) -> None:
    """Ground truth, its non-progress segment shaded, and every method's values, per task and kind."""

    def draw(ax, e: BenchEpisode) -> None:
        ax.plot(e.truth, "k-", lw=2.5, alpha=0.35, label="ground truth")
        for method, values in predictions.items():
            ax.plot(values[e.index], lw=1.1, label=method)
        if e.seg_start >= 0:
            ax.axvspan(e.seg_start, e.seg_end, color="orange", alpha=0.12)

    kinds = [k for k in KINDS if any(e.kind == k for e in episodes)]
    plot_task_kind_grid(episodes, sorted({e.task for e in episodes}), kinds, draw, lambda task, kind, e: f"{task[:24]}: {kind}", path)


def seed_groups(results: dict, groups: dict[str, list[str]]) -> dict:
    """Per group of methods (one recipe trained with several seeds), per bench and metric: the
    members' mean, min and max. Two seeds of one recipe differ by more than most changes between
    recipes, so recipes are compared by their mean, with the spread beside it."""
    out = {}
    for group, members in groups.items():
        out[group] = {}
        for bench in results[members[0]]:
            out[group][bench] = {}
            for metric in (*METRICS, "ood"):
                values = np.array([results[m][bench][metric] for m in members], dtype=np.float64)
                finite = values[np.isfinite(values)]
                out[group][bench][metric] = [float(finite.mean()), float(finite.min()), float(finite.max())] if len(finite) else [float("nan")] * 3
    return out


def evaluate(
    benches: dict[str, list[BenchEpisode]],
    handlers: dict[str, ValueModelHandler | None],
    out: str | Path,
    groups: dict[str, list[str]] | None = None,
    video_only: set[str] = frozenset(),
) -> dict:
    """Score every method on every bench; write metrics.json, report.md and plots into `out`.
    `groups` names sets of methods (seeds of one recipe) reported as mean [min, max];
    `video_only` methods are scored without the benches' robot states."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for bench, episodes in benches.items():
        predictions = {}
        for method, handler in handlers.items():
            log.info("eval %s on %s (%d episodes)", method, bench, len(episodes))
            predictions[method], success, ood = predict(handler, episodes, with_states=method not in video_only)
            results.setdefault(method, {})[bench] = {**score(episodes, predictions[method], success), "ood": ood}
        plot_grid(episodes, predictions, out / "plots" / f"{bench}.png")
    counts = {b: {k: sum(e.kind == k for e in eps) for k in KINDS} for b, eps in benches.items()}
    versions = {m: (h.version, h.checkpoint_hash) for m, h in handlers.items() if h is not None}
    grouped = seed_groups(results, groups or {})
    document = {"results": results, "episodes": counts, "models": versions}
    if groups:
        document |= {"groups": groups, "group_results": grouped}
    (out / "metrics.json").write_text(json.dumps(document, indent=2))
    (out / "report.md").write_text(render_report(results, counts, versions, list(benches), grouped))
    return results


def render_report(results: dict, counts: dict, versions: dict, benches: list[str], grouped: dict | None = None) -> str:
    lines = ["# WVM evaluation", ""]
    for bench in benches:
        c = counts[bench]
        lines += [f"## {bench}", "", ", ".join(f"{n} {k}" for k, n in c.items()) + " episodes.", ""]
        lines += ["| method | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " | OOD score |", "|---|" + "---:|" * (len(METRICS) + 1)]
        for method, per_bench in results.items():
            r = per_bench[bench]
            lines.append(f"| {method} | " + " | ".join(f"{r[m]:.3f}" for m in (*METRICS, "ood")) + " |")
        if grouped:
            lines += ["", "Seeds of one recipe, mean [min, max]:", ""]
            lines += ["| recipe | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
            for group, per_bench in grouped.items():
                r = per_bench[bench]
                lines.append(f"| {group} | " + " | ".join(f"{r[m][0]:.3f} [{r[m][1]:.3f}, {r[m][2]:.3f}]" for m in METRICS) + " |")
        lines += ["", f"Per task and kind: [plots/{bench}.png](plots/{bench}.png)", ""]
    lines += ["OOD score: the bench's mean out-of-distribution score (1 = as unfamiliar as the least familiar 1% of "
              "training episodes, or frames for models before v14; episodes above 2 are flagged untrusted when relabelling). nan: not a model.", ""]
    if versions:
        lines += ["Models: " + ", ".join(f"{m} = `{v}` (sha256 {h})" for m, (v, h) in versions.items()), ""]
    return "\n".join(lines)
