"""The policy-learning methods of the benchmark (issue #11, REFERENCE §3) and the sample weights
each one trains with.

Two methods ignore the value labels: plain BC (every frame, weight 1) and BC on the expert
episodes only (the upper reference: what a perfect episode filter would give). The three
value-weighted methods read their weight column from a label source's frames table, the same
columns `wvm relabel` writes into frames.parquet:

    bc_binary  w_binary = 1[A >= 0]
    bc_top70   w_top70  = 1[A >= c], c the dataset-level cut keeping the top 70 % of advantages
    awr        w_awr    = min(exp(10 A), 2)

and one whole-episode filter, what a team does with episodes.parquet's quality score:

    bc_episodes  w_episode70 = 1 on the episodes whose quality is in the dataset's top 70 %
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from schemas import labels as spec
from wvm.policy.data import EPISODE_WEIGHT, SOURCES, Episode, by_episode
from wvm.policy.model import Samples, episode_samples

METHODS = {
    "bc": "plain BC on every frame",
    "bc_expert": "BC on the expert episodes only (upper reference)",
    "bc_binary": "binary-filtered BC, w = 1[A >= 0]",
    "bc_top70": "top-70 % filtered BC",
    "awr": "AWR, w = min(exp(10 A), 2)",
    "bc_episodes": "BC on the top-70 % episodes by quality",
}
WEIGHT_COLUMN = {"bc_binary": spec.W_BINARY, "bc_top70": spec.W_TOP70, "awr": spec.W_AWR, "bc_episodes": EPISODE_WEIGHT}


@dataclass(frozen=True)
class Run:
    """One method, with the label source its weights come from (None: label-free)."""

    method: str
    source: str | None = None

    @property
    def name(self) -> str:
        return self.method if self.source is None else f"{self.method}/{self.source}"

    @property
    def slug(self) -> str:
        return self.name.replace("/", "-")


RUNS = (Run("bc"), Run("bc_expert"), *(Run(m, s) for m in WEIGHT_COLUMN for s in SOURCES))


def frame_weights(run: Run, episodes: list[Episode], sources: dict[str, pd.DataFrame]) -> dict[int, np.ndarray]:
    """Per-frame training weight of every episode under this run."""
    if run.method == "bc":
        return {e.index: np.ones(len(e.state), np.float32) for e in episodes}
    if run.method == "bc_expert":
        return {e.index: np.full(len(e.state), float(e.kind == "expert"), np.float32) for e in episodes}
    if run.source not in sources:
        raise ValueError(f"unknown label source {run.source!r}")
    weights = by_episode(sources[run.source], WEIGHT_COLUMN[run.method])
    return {e.index: weights[e.index] for e in episodes}


def build_samples(run: Run, episodes: list[Episode], sources: dict[str, pd.DataFrame], horizon: int) -> Samples:
    """Training samples of these episodes, weighted for this run. The sample at frame t takes
    the weight the labels give frame t (the chunk advantage looks H frames ahead from t)."""
    weights = frame_weights(run, episodes, sources)
    parts = []
    for e in episodes:
        state, chunk, mask = episode_samples(e.state, e.action, horizon)
        w = weights[e.index]
        if len(w) != len(e.state):
            raise ValueError(f"episode {e.index}: {len(w)} weights for {len(e.state)} frames")
        parts.append((state, chunk, mask, w[: len(state)], np.full(len(state), e.index, np.int64)))
    return Samples(*(np.concatenate([p[i] for p in parts]) for i in range(5)))
