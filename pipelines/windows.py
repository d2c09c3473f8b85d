"""From model requests to a value for every frame of an episode.

The model reads an episode at N evenly spaced samples (`sample_positions`, which training uses
too; the first and last frames are always samples, shorter episodes use every frame and pad
the request).
One request per episode: each sampled frame is read (and encoded) once. Frames between samples
are interpolated linearly.

Callers label many episodes at a time and batch their requests together (`label_episodes`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from schemas.inference import EpisodeAnswers, stack_states


def sample_positions(length: int, samples: int) -> np.ndarray:
    """Frame indices at which the model reads an episode: `samples` evenly spaced frames, first
    and last included (every frame when the episode is shorter). The same count whatever the
    episode's length, fps or speed, so progress per sample is alike across robots and frame
    rates. Training (wvm.data) and inference both use this."""
    if length <= 1:
        return np.zeros(1, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, length - 1, min(samples, length))).astype(np.int64))


@dataclass(frozen=True)
class WindowGeometry:
    """What a request looks like: `samples_per_episode` frames of one episode."""

    samples_per_episode: int

    @property
    def window_frames(self) -> int:
        return self.samples_per_episode

    @classmethod
    def of(cls, config) -> WindowGeometry:
        return cls(config.samples_per_episode)


@dataclass
class EpisodeChain:
    """One episode's request and, once answered, its values at the samples."""

    key: str
    length: int
    fps: float
    text: str
    geometry: WindowGeometry
    samples: np.ndarray = field(init=False)
    sample_values: np.ndarray | None = field(init=False, default=None)
    ood: float = field(init=False, default=float("nan"))  # out-of-distribution score (schemas/inference.py)
    success: float = field(init=False, default=float("nan"))  # probability of success (schemas/inference.py)

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"{self.key}: cannot label an empty episode")
        self.samples = sample_positions(self.length, self.geometry.samples_per_episode)

    @property
    def done(self) -> bool:
        return self.sample_values is not None

    def request(self) -> tuple[np.ndarray, int]:
        """(frame indices padded to the request size by repeating the last, real sample count)."""
        n = self.geometry.samples_per_episode
        padded = np.concatenate([self.samples, np.full(n - len(self.samples), self.samples[-1])])
        return padded.astype(np.int64), len(self.samples)

    def add(self, values: np.ndarray, ood: float = float("nan"), success: float = float("nan")) -> None:
        self.sample_values = np.asarray(values, dtype=np.float64)[: len(self.samples)]
        self.ood, self.success = float(ood), float(success)

    def frame_values(self) -> np.ndarray:
        """float32 (length,) values for every frame."""
        return np.interp(np.arange(self.length), self.samples, self.sample_values).astype(np.float32)


# frames for (chain, frame indices) -> uint8 (K, H, W, 3)
FrameFetcher = Callable[[EpisodeChain, np.ndarray], np.ndarray]
# robot states for (chain, frame indices) -> float32 (K, S), or None when the episode has none
StateFetcher = Callable[[EpisodeChain, np.ndarray], "np.ndarray | None"]
# (frames (B, N, H, W, 3) uint8, texts, real sample counts (B,)[, states (B, N, S)]) ->
# EpisodeAnswers: a handler's answer_batch
EpisodePredictor = Callable[..., EpisodeAnswers]


def label_episodes(
    chains: Iterable[EpisodeChain], fetch: FrameFetcher, predict: EpisodePredictor, batch_size: int = 64, fetch_states: StateFetcher | None = None
) -> None:
    """Answer every chain's request, `batch_size` episodes per model call. `chains` may be a
    lazy iterator (e.g. episodes decoded in the background while the model runs); episodes of
    different frame sizes (cameras) go in separate batches. With `fetch_states`, requests carry
    the robot's state at the samples where the episode has one (schemas/inference.py STATE)."""
    pending: dict[tuple, list] = {}

    def run(items: list) -> None:
        args = [np.stack([f for _, f, _, _ in items]), [c.text for c, _, _, _ in items], np.array([k for _, _, k, _ in items], np.int32)]
        states = stack_states([s for _, _, _, s in items], items[0][1].shape[0])
        answers = predict(*args) if states is None else predict(*args, states)
        for (chain, _, _, _), v, o, s in zip(items, *answers):
            chain.add(v, o, s)

    for chain in chains:
        if chain.done:
            continue
        indices, count = chain.request()
        frames = fetch(chain, indices)
        states = fetch_states(chain, indices) if fetch_states is not None else None
        group = pending.setdefault(frames.shape, [])
        group.append((chain, frames, count, None if states is None else np.asarray(states, np.float32)))
        if len(group) >= batch_size:
            run(group)
            pending[frames.shape] = []
    for group in pending.values():
        if group:
            run(group)
