"""Confidence intervals for rollout results.

Success is a Bernoulli outcome per trial: one policy's success rate gets a Wilson score interval
(well behaved at 0 and 1 successes, unlike the normal approximation). Results pooled over several
training seeds also vary with the seed, which a per-trial interval ignores, so pooled numbers get
a two-level bootstrap: resample the seeds, then the trials within each drawn seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} not in [0, {trials}]")
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def hierarchical_bootstrap(
    groups: Sequence[Sequence[np.ndarray]],
    *,
    draws: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean over groups (e.g. tasks) of the mean over seeds of the mean over trials, and its
    bootstrap interval: (estimate, low, high).

    groups[g][s] holds the per-trial outcomes of training seed s in group g (every seed of a
    group has the same number of trials). Each draw resamples, inside every group, the seeds
    with replacement and then, for each drawn seed, its trials with replacement; the groups
    themselves are fixed (we report on these tasks, not on a population of tasks)."""
    estimate = float(np.mean([np.mean([np.mean(t) for t in g]) for g in _check(groups)]))
    low, high = np.quantile(bootstrap_draws(groups, draws, seed), [(1 - level) / 2, (1 + level) / 2])
    return estimate, float(low), float(high)


def bootstrap_difference(
    a: Sequence[Sequence[np.ndarray]],
    b: Sequence[Sequence[np.ndarray]],
    *,
    draws: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """estimate(a) - estimate(b) and the bootstrap interval of that difference; the two sides
    are resampled independently (their policies are trained apart)."""
    estimate = hierarchical_bootstrap(a, draws=1)[0] - hierarchical_bootstrap(b, draws=1)[0]
    diff = bootstrap_draws(a, draws, seed) - bootstrap_draws(b, draws, seed + 1)
    low, high = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2])
    return estimate, float(low), float(high)


def bootstrap_draws(groups: Sequence[Sequence[np.ndarray]], draws: int, seed: int) -> np.ndarray:
    """`draws` bootstrap replicates of the mean over groups of seed means of trial means."""
    rng = np.random.default_rng(seed)
    totals = np.zeros(draws)
    for g in _check(groups):
        outcomes = np.asarray([np.asarray(t, dtype=np.float64) for t in g])  # (seeds, trials)
        seeds, trials = outcomes.shape
        picked = rng.integers(0, seeds, size=(draws, seeds))
        resampled = rng.integers(0, trials, size=(draws, seeds, trials))
        totals += outcomes[picked[:, :, None], resampled].mean(axis=(1, 2))
    return totals / len(groups)


def _check(groups: Sequence[Sequence[np.ndarray]]) -> Sequence[Sequence[np.ndarray]]:
    if not groups:
        raise ValueError("no groups to bootstrap")
    for g in groups:
        if len(g) == 0:
            raise ValueError("every group needs at least one seed")
        if len({len(t) for t in g}) != 1 or len(g[0]) == 0:
            raise ValueError("every seed of a group needs the same, non-zero number of trials")
    return groups
