"""Ground-truth progress and the evaluation metrics, exactly as defined in REFERENCE §2.

Per episode, then averaged over episodes by the caller. Spearman rank correlation; a constant
prediction scores 0 (Spearman is undefined there and we define it as no correlation).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def ground_truth(length: int, kind: str, seg_start: int = -1, seg_end: int = -1) -> np.ndarray:
    """Per-frame ground-truth progress of an episode of `length` frames.

    expert: t / (T - 1). A suboptimal episode with a non-progress segment [m, n], x = n - m, is
    piecewise linear through (0, 0), (m, v_m), (n, v_n), (T - 1, 1):
      hesitation: v_m = v_n = m / (T - 1 - x)
      retry:      v_m = m / (T - 2x),  v_n = max(0, (m - x) / (T - 2x))
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
    else:
        raise ValueError(f"unknown episode kind {kind!r}")
    return np.interp(t, [0, m, n, T - 1], [0.0, v_m, v_n, 1.0])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def expert_voc(pred: np.ndarray) -> float:
    """Value-Order Correlation: Spearman(predicted values in time order, frame index)."""
    return spearman(pred, np.arange(len(pred)))


def hesitation_rmse(pred: np.ndarray, gt: np.ndarray, seg_start: int, seg_end: int) -> float:
    """RMSE(pred, ground truth) over the hesitation frames [m, n] (inclusive)."""
    s = slice(seg_start, seg_end + 1)
    return float(np.sqrt(np.mean((np.asarray(pred)[s] - np.asarray(gt)[s]) ** 2)))


def retry_voc(pred: np.ndarray, gt: np.ndarray, seg_start: int, seg_end: int) -> float:
    """Spearman(pred, ground truth) over the regression frames [m, n] (inclusive)."""
    s = slice(seg_start, seg_end + 1)
    return spearman(np.asarray(pred)[s], np.asarray(gt)[s])


def episode_metric(kind: str, pred: np.ndarray, gt: np.ndarray, seg_start: int, seg_end: int) -> tuple[str, float]:
    """The one metric that applies to an episode of this kind, as (name, value)."""
    if kind == "expert":
        return "expert_voc", expert_voc(pred)
    if kind == "hesitation":
        return "hesitation_rmse", hesitation_rmse(pred, gt, seg_start, seg_end)
    if kind == "retry":
        return "retry_voc", retry_voc(pred, gt, seg_start, seg_end)
    raise ValueError(f"unknown episode kind {kind!r}")
