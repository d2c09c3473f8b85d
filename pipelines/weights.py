"""From per-frame values to what training teams use: chunk advantages, sample weights
(REFERENCE §3) and a per-episode quality summary (definitions in schemas/README.md).

Also the rank statistics the summary's monotonicity is (`spearman`, `expert_voc`): the model
package's evaluation metrics (wvm.metrics) use these same definitions.
"""

from __future__ import annotations

import numpy as np

from schemas import labels as spec


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; a constant input scores 0 (undefined there: no correlation)."""
    from scipy.stats import spearmanr  # here: scipy.stats takes a second to import

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def expert_voc(pred: np.ndarray) -> float:
    """Value-Order Correlation: Spearman(predicted values in time order, frame index)."""
    return spearman(pred, np.arange(len(pred)))


def chunk_advantage(values: np.ndarray, horizon: int = spec.ADVANTAGE_HORIZON) -> np.ndarray:
    """A_t = V(min(t + H - 1, T - 1)) - V(t)."""
    values = np.asarray(values, dtype=np.float64)
    ahead = np.minimum(np.arange(len(values)) + horizon - 1, len(values) - 1)
    return (values[ahead] - values).astype(np.float32)


def binary_weights(advantage: np.ndarray) -> np.ndarray:
    """Binary filtered BC: w = 1[A >= 0]."""
    return (advantage >= 0).astype(np.float32)


def awr_weights(advantage: np.ndarray, tau: float = spec.AWR_TAU, delta: float = spec.AWR_DELTA) -> np.ndarray:
    """AWR: w = min(exp(tau * A), delta). Trainers renormalise to mean 1 per batch."""
    return np.minimum(np.exp(tau * np.asarray(advantage, dtype=np.float64)), delta).astype(np.float32)


def top_weights(advantage: np.ndarray, threshold: float) -> np.ndarray:
    """Top-fraction filtered BC: keep samples at or above the dataset-level cut. Compared as
    float32, the type advantages are stored in (whatever the types passed: NumPy would compare
    a float32 array with a Python float in float32 but with a NumPy float64 in float64)."""
    return (np.asarray(advantage, dtype=np.float32) >= np.float32(threshold)).astype(np.float32)


class AdvantageHistogram:
    """Streaming quantiles of advantages (which lie in [-1, 1]) with fixed 1e-4 bins: memory is
    constant however many frames, and the result does not depend on the order of the data.

    The bins are fixed, so histograms of parts of a dataset add up exactly to the histogram of
    the whole (`merge`): a partition's histogram is its summary (`summary` / `from_summary`),
    and the dataset-level cut is computed from the sum of the summaries. Bin i holds the
    advantages a with edge(i) <= a < edge(i + 1), compared as float32 (the type advantages are
    stored and compared in, see `top_weights`), so for a cut on a bin edge (every cut
    `cut_keeping` returns) `count_at_or_above(cut)` is exactly the number of frames that
    `top_weights(advantage, cut)` keeps."""

    BINS = 20_000
    LOW, HIGH = -1.0, 1.0
    # lower edges of the bins and the upper edge of the last: the values cuts take (6 decimals)
    EDGES = np.round(LOW + (HIGH - LOW) * np.arange(BINS + 1) / BINS, 6)
    _EDGES32 = EDGES.astype(np.float32)

    def __init__(self):
        self.counts = np.zeros(self.BINS, dtype=np.int64)

    def add(self, advantage: np.ndarray) -> None:
        a = np.asarray(advantage, dtype=np.float32).ravel()
        idx = np.clip(np.searchsorted(self._EDGES32, a, side="right") - 1, 0, self.BINS - 1)
        self.counts += np.bincount(idx, minlength=self.BINS)

    def merge(self, other: AdvantageHistogram) -> AdvantageHistogram:
        self.counts += other.counts
        return self

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def cut_keeping(self, fraction: float) -> float:
        """The lower edge of the bin where the top `fraction` of samples begins."""
        total = self.counts.sum()
        if total == 0:
            return 0.0
        from_top = np.cumsum(self.counts[::-1])
        first = int(np.searchsorted(from_top, fraction * total))  # bins counted from the top
        lower_bin = self.BINS - 1 - min(first, self.BINS - 1)
        return float(self.EDGES[lower_bin])

    def count_at_or_above(self, cut: float) -> int:
        """Samples in the bins at or above `cut`: for a cut on a bin edge below 1 (every cut
        `cut_keeping` returns), exactly the samples a >= cut (float32 comparison, as
        `top_weights`)."""
        first = int(np.searchsorted(self._EDGES32, np.float32(cut), side="left"))
        return int(self.counts[first:].sum())

    def summary(self) -> dict:
        """A compact, exact, JSON-able form: the non-empty bins and their counts."""
        nonzero = np.flatnonzero(self.counts)
        return {
            "bins": self.BINS,
            "range": [self.LOW, self.HIGH],
            "frames": self.total,
            "bin": nonzero.tolist(),
            "count": self.counts[nonzero].tolist(),
        }

    @classmethod
    def from_summary(cls, summary: dict) -> AdvantageHistogram:
        """The histogram `summary` describes; ValueError when it has other bins (not addable)."""
        if summary.get("bins") != cls.BINS or list(summary.get("range", ())) != [cls.LOW, cls.HIGH]:
            raise ValueError(f"histogram of {summary.get('bins')} bins over {summary.get('range')}, not {cls.BINS} over [{cls.LOW}, {cls.HIGH}]")
        histogram = cls()
        bins, counts = np.asarray(summary["bin"], dtype=np.int64), np.asarray(summary["count"], dtype=np.int64)
        if len(bins) != len(counts) or (len(bins) and (bins.min() < 0 or bins.max() >= cls.BINS)) or (counts < 0).any():
            raise ValueError("malformed histogram summary")
        np.add.at(histogram.counts, bins, counts)
        if histogram.total != summary.get("frames", histogram.total):
            raise ValueError("histogram summary: counts do not add up to its frames")
        return histogram


def episode_summary(values: np.ndarray, success: float = float("nan")) -> dict:
    """final / max progress, monotonicity (VOC against time), flat and falling fractions of
    frame steps, the model's `success` probability (NaN: the model has none), and
    quality = success * (1 - falling) * (1 - flat / 2), with final progress standing in for
    success where the model has none; all in [0, 1] (monotonicity in [-1, 1]).

    Why success rather than final progress (reports/experiments.md row 76): a failed episode's
    values can climb far before the work stops; the model's success judgement, which reads the
    whole episode, tells unseen tasks' failures from successes better than where the values end."""
    v = np.asarray(values, dtype=np.float64)
    steps = np.diff(v)
    rate = spec.FLAT_RATE / max(len(v) - 1, 1)
    flat = float(np.mean(np.abs(steps) < rate)) if len(steps) else 0.0
    falling = float(np.mean(steps < -rate)) if len(steps) else 0.0
    final = float(v[-1])
    succeeded = final if np.isnan(success) else float(success)
    return {
        spec.FINAL_PROGRESS: final,
        spec.MAX_PROGRESS: float(v.max()),
        spec.MONOTONICITY: expert_voc(v),
        spec.FLAT_FRACTION: flat,
        spec.FALLING_FRACTION: falling,
        spec.SUCCESS_PROBABILITY: float(success),
        spec.QUALITY: succeeded * (1.0 - falling) * (1.0 - flat / 2.0),
    }
