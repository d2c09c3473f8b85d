"""Ground-truth progress and the evaluation metrics, as defined in REFERENCE §2, plus
Failure-AUROC (issue #10): how well episode quality separates successes from failures.

Per episode, then averaged over episodes by the caller. Spearman rank correlation; a constant
prediction scores 0 (Spearman is undefined there and we define it as no correlation).
`spearman` and `expert_voc` are defined with the labels they also compute (pipelines.weights:
an episode's monotonicity is its Expert-VOC).
"""

from __future__ import annotations

import numpy as np

from pipelines.weights import expert_voc, spearman


def ground_truth(length: int, kind: str, seg_start: int = -1, seg_end: int = -1) -> np.ndarray:
    """Per-frame ground-truth progress of an episode of `length` frames.

    expert: t / (T - 1). A suboptimal episode with a non-progress segment [m, n], x = n - m, is
    piecewise linear through (0, 0), (m, v_m), (n, v_n), (T - 1, 1):
      hesitation: v_m = v_n = m / (T - 1 - x)
      retry:      v_m = m / (T - 2x),  v_n = max(0, (m - x) / (T - 2x))
    failed: the work stops at frame m and never resumes (n = T - 1). The episode lasts as long
    as the same seed's expert episode, so progress follows the expert pace t / (T - 1) until m,
    then holds at m / (T - 1) and never reaches 1.
    """
    T = length
    t = np.arange(T, dtype=np.float64)
    if T == 1:
        return np.ones(1)
    if kind == "expert":
        return t / (T - 1)
    m, n = seg_start, seg_end
    if not 0 <= m < n < T:
        raise ValueError(f"segment [{m}, {n}] does not fit an episode of {T} frames")
    x = n - m
    if kind == "hesitation":
        v_m = v_n = m / (T - 1 - x)
    elif kind == "retry":
        v_m = m / (T - 2 * x)
        v_n = max(0.0, (m - x) / (T - 2 * x))
    elif kind == "failed":
        if n != T - 1:
            raise ValueError(f"a failed episode's segment must end at its last frame {T - 1}, got [{m}, {n}]")
        return np.minimum(t, m) / (T - 1)
    else:
        raise ValueError(f"unknown episode kind {kind!r}")
    return np.interp(t, [0, m, n, T - 1], [0.0, v_m, v_n, 1.0])


def hesitation_rmse(pred: np.ndarray, gt: np.ndarray, seg_start: int, seg_end: int) -> float:
    """RMSE(pred, ground truth) over the hesitation frames [m, n] (inclusive)."""
    s = slice(seg_start, seg_end + 1)
    return float(np.sqrt(np.mean((np.asarray(pred)[s] - np.asarray(gt)[s]) ** 2)))


def retry_voc(pred: np.ndarray, gt: np.ndarray, seg_start: int, seg_end: int) -> float:
    """Spearman(pred, ground truth) over the regression frames [m, n] (inclusive)."""
    s = slice(seg_start, seg_end + 1)
    return spearman(np.asarray(pred)[s], np.asarray(gt)[s])


def auroc(scores_positive: np.ndarray, scores_negative: np.ndarray) -> float:
    """Probability that a positive outranks a negative (ties count half): the area under the
    ROC curve, by the Mann-Whitney U statistic."""
    pos, neg = np.asarray(scores_positive, np.float64), np.asarray(scores_negative, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def failure_auroc(quality: np.ndarray, succeeded: np.ndarray) -> float:
    """Failure-AUROC: how well the episode quality score separates successful episodes (higher
    quality expected) from failed ones. 1 = perfect, 0.5 = chance."""
    quality, succeeded = np.asarray(quality, np.float64), np.asarray(succeeded, bool)
    return auroc(quality[succeeded], quality[~succeeded])


def episode_metric(kind: str, pred: np.ndarray, gt: np.ndarray, seg_start: int, seg_end: int) -> tuple[str, float] | None:
    """The one per-episode metric that applies to an episode of this kind, as (name, value);
    None for a failed episode (it counts in the per-bench Failure-AUROC instead)."""
    if kind == "failed":
        return None
    if kind == "expert":
        return "expert_voc", expert_voc(pred)
    if kind == "hesitation":
        return "hesitation_rmse", hesitation_rmse(pred, gt, seg_start, seg_end)
    if kind == "retry":
        return "retry_voc", retry_voc(pred, gt, seg_start, seg_end)
    raise ValueError(f"unknown episode kind {kind!r}")
