"""From windows to a value for every frame of an episode.

An episode is sampled evenly (`wvm.data.sample_positions`: `samples_per_episode` samples
whatever its length or fps, more if they would be further apart than max_sample_interval_s);
the first and last frames are always samples. Window w holds sample w as prefix and samples w+1..w+h as the
current chunk (past the end the last frame repeats). Windows slide by one sample, so every
sample is predicted by up to h overlapping windows and their predictions are averaged; the
prefix value of window w is that average for sample w (0 for the first frame: an episode
starts with no progress). Frames between samples are interpolated linearly.

Windows of one episode are sequential (each needs the previous one's values), so callers
advance many episodes in lockstep and batch their windows together (`label_episodes`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from wvm.data import sample_positions as _positions


@dataclass(frozen=True)
class WindowGeometry:
    horizon: int
    samples_per_episode: int
    max_sample_interval_s: float
    anchor_frame: bool = False  # windows start with the episode's first frame

    @property
    def window_frames(self) -> int:
        return (2 if self.anchor_frame else 1) + self.horizon

    @classmethod
    def of(cls, config) -> WindowGeometry:
        return cls(config.horizon, config.samples_per_episode, config.max_sample_interval_s, config.anchor_frame)


def sample_positions(length: int, fps: float, geometry: WindowGeometry) -> np.ndarray:
    return _positions(length, fps, geometry.samples_per_episode, geometry.max_sample_interval_s)


@dataclass
class EpisodeChain:
    """The chained windows of one episode and the running average of their predictions."""

    key: str
    length: int
    fps: float
    text: str
    geometry: WindowGeometry
    samples: np.ndarray = field(init=False)
    next_window: int = field(init=False, default=0)
    sums: np.ndarray = field(init=False)
    counts: np.ndarray = field(init=False)

    def __post_init__(self):
        if self.length < 1:
            raise ValueError(f"{self.key}: cannot label an empty episode")
        self.samples = sample_positions(self.length, self.fps, self.geometry)
        self.sums = np.zeros(len(self.samples))
        self.counts = np.zeros(len(self.samples))

    @property
    def windows(self) -> int:
        return max(len(self.samples) - 1, 0)

    @property
    def done(self) -> bool:
        return self.next_window >= self.windows

    def indices(self, w: int) -> np.ndarray:
        """Frame indices of window w: [anchor (frame 0),] prefix, current...; past the end the
        last frame repeats."""
        chunk = np.minimum(np.arange(w + 1, w + 1 + self.geometry.horizon), len(self.samples) - 1)
        anchor = [0] if self.geometry.anchor_frame else []
        return self.samples[np.concatenate([anchor, [w], chunk]).astype(np.int64)]

    def window(self) -> tuple[np.ndarray, float]:
        """(frame indices, prefix value) of the next window."""
        w = self.next_window
        prefix = 0.0 if w == 0 else self.sums[w] / self.counts[w]
        return self.indices(w), float(prefix)

    def add(self, values: np.ndarray) -> None:
        w = self.next_window
        chunk = np.arange(w + 1, w + 1 + self.geometry.horizon)
        real = chunk < len(self.samples)  # padded positions repeat the last frame: skip them
        self.sums[chunk[real]] += values[real]
        self.counts[chunk[real]] += 1
        self.next_window += 1

    def frame_values(self) -> np.ndarray:
        """float32 (length,) values for every frame."""
        # sample 0 is never in a current chunk: it keeps the episode-start value 0
        sample_values = np.divide(self.sums, self.counts, out=np.zeros_like(self.sums), where=self.counts > 0)
        return np.interp(np.arange(self.length), self.samples, sample_values).astype(np.float32)


# frames for (chain, frame indices) -> uint8 (K, H, W, 3)
FrameFetcher = Callable[[EpisodeChain, np.ndarray], np.ndarray]
# (frames (B, K, H, W, 3) uint8, texts, prefix values (B,)) -> values (B, h)
WindowPredictor = Callable[[np.ndarray, list[str], np.ndarray], np.ndarray]


def label_episodes(
    chains: Iterable[EpisodeChain], fetch: FrameFetcher, predict: WindowPredictor, batch_size: int = 64
) -> None:
    """Advance chains until done, batching the next window of every active chain.

    At most `batch_size` chains are active; a finished one is replaced by the next from
    `chains`, so batches stay full and `chains` may be a lazy iterator (e.g. episodes decoded
    in the background while the model runs). Windows of different frame sizes (episodes of
    different cameras) go in separate batches.
    """
    pending, active = iter(chains), []
    while True:
        active = [c for c in active if not c.done]
        while len(active) < batch_size and (chain := next(pending, None)) is not None:
            if not chain.done:
                active.append(chain)
        if not active:
            return
        by_shape: dict[tuple, list] = {}
        for chain in active:
            indices, prefix = chain.window()
            frames = fetch(chain, indices)
            by_shape.setdefault(frames.shape, []).append((chain, frames, prefix))
        for items in by_shape.values():
            for start in range(0, len(items), batch_size):
                group = items[start : start + batch_size]
                values = predict(
                    np.stack([f for _, f, _ in group]),
                    [c.text for c, _, _ in group],
                    np.array([p for _, _, p in group], dtype=np.float32),
                )
                for (chain, _, _), v in zip(group, values):
                    chain.add(np.asarray(v, dtype=np.float64))
