"""Training data: episodes from episode stores (with optional ground-truth labels), the
sampling grid shared with inference, clip sampling with video rewinding, and augmentation."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from pipelines import fs as fsx
from schemas.ground_truth import GROUND_TRUTH
from schemas.validate import conform
from wvm.metrics import ground_truth

log = logging.getLogger(__name__)


def sampling_stride(length: int, fps: float, samples_per_episode: int, max_interval_s: float) -> float:
    """Source frames between two model samples (fractional): an episode spans exactly
    `samples_per_episode` samples whatever its length, fps or speed (more when samples would be
    further apart than max_interval_s, never more than one per frame). Progress per sample is
    then about the same for every expert episode, which is what lets the model generalise
    across robots and frame rates. Training and inference both use this."""
    if length <= 1:
        return 1.0
    samples = max(samples_per_episode, math.ceil((length - 1) / max(fps * max_interval_s, 1e-9)) + 1)
    return max((length - 1) / (min(samples, length) - 1), 1.0)


def sample_positions(length: int, fps: float, samples_per_episode: int, max_interval_s: float) -> np.ndarray:
    """Frame indices of the samples: evenly spaced, first and last frame included."""
    if length <= 1:
        return np.zeros(1, dtype=np.int64)
    stride = sampling_stride(length, fps, samples_per_episode, max_interval_s)
    count = int(round((length - 1) / stride)) + 1
    return np.unique(np.round(np.linspace(0, length - 1, count)).astype(np.int64))


@dataclass
class TrainingEpisode:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    values: np.ndarray  # float32 (T,) ground-truth progress
    task: str
    kind: str  # expert | hesitation | retry
    fps: float
    source: str  # for logs: store url + episode index


def load_episodes(store_url: str, labels_url: str | None = None, camera: str | None = None) -> list[TrainingEpisode]:
    """Every episode of an episode store with its ground truth: from a labels table when one
    is given, else normalised time t/(T-1) (the expert-data target)."""
    from pipelines.store import EpisodeStore

    store = EpisodeStore(store_url)
    labels = ground_truth_by_episode(labels_url) if labels_url else {}
    episodes = []
    for row in store.episodes().to_pylist():
        cam = camera or row["cameras"][0]
        frames = store.read_frames(row, cam)
        label = labels.get(row["source_episode_index"])
        if label is not None:
            if len(label) != row["length"]:
                raise ValueError(f"{labels_url}: episode {row['source_episode_index']} has {len(label)} labels for {row['length']} frames")
            kind = str(label["kind"].iloc[0])
            values = ground_truth(row["length"], kind, int(label["seg_start"].iloc[0]), int(label["seg_end"].iloc[0]))
        else:
            kind, values = "expert", ground_truth(row["length"], "expert")
        episodes.append(
            TrainingEpisode(frames, values.astype(np.float32), row["task"], kind, row["fps"], f"{store_url}#{row['source_episode_index']}")
        )
    log.info("loaded %d episodes (%d frames) from %s", len(episodes), sum(len(e.values) for e in episodes), store_url)
    return episodes


def ground_truth_by_episode(labels_url: str) -> dict:
    """A ground-truth labels table (schemas.ground_truth), split per episode, frames in order."""
    fs, path = fsx.filesystem(labels_url)
    table = conform(fsx.read_parquet(fs, path), GROUND_TRUTH, labels_url).to_pandas()
    return {int(i): g.sort_values("frame_index") for i, g in table.groupby("episode_index")}


def clip_indices(
    length: int, stride: float, horizon: int, rng: np.random.Generator, rewind_p: float = 0.5, plateau_p: float = 0.1
) -> np.ndarray:
    """Frame indices of one clip (prefix, h current, h future), with video rewinding.

    rising: the episode as recorded; falling (rewind_p): forward to a turn point, then the same
    frames backwards; flat (plateau_p): forward to a turn point, then that frame repeated.
    Labels follow the frames, so falling clips teach regression and flat clips hesitation.
    Indices past either end are clamped (padding with the first / last frame).
    """
    n = 1 + 2 * horizon
    steps = np.arange(n, dtype=np.float64)
    mode = rng.random()
    turn = int(rng.integers(1, n - 1))
    if mode < plateau_p:
        steps = np.minimum(steps, turn)
    elif mode < plateau_p + rewind_p:
        steps = np.where(steps <= turn, steps, 2 * turn - steps)
    start = rng.uniform(-stride, max(length - 1 - stride, 0))
    return np.clip(np.round(start + stride * steps), 0, length - 1).astype(np.int64)


class ClipSampler:
    """Draws training clips: random episode, stride jittered around the inference stride
    (so other speeds and frame rates look familiar), random position and rewinding."""

    def __init__(
        self, episodes: list[TrainingEpisode], horizon: int, samples_per_episode: int, max_interval_s: float, anchor_frame: bool
    ):
        self.episodes, self.horizon, self.anchor_frame = episodes, horizon, anchor_frame
        self.strides = [sampling_stride(len(e.values), e.fps, samples_per_episode, max_interval_s) for e in episodes]
        self.offsets = np.cumsum([0] + [len(e.values) for e in episodes])

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(episode ids (B,), global frame indices (B, clip), values (B, clip)); with an anchor,
        column 0 is the episode's first frame."""
        ids = rng.integers(0, len(self.episodes), batch_size)
        frames, values = [], []
        for i in ids:
            episode = self.episodes[i]
            stride = max(1.0, self.strides[i] * float(np.exp(rng.uniform(np.log(0.67), np.log(1.5)))))
            idx = clip_indices(len(episode.values), stride, self.horizon, rng)
            if self.anchor_frame:
                idx = np.concatenate([[0], idx])
            frames.append(self.offsets[i] + idx)
            values.append(episode.values[idx])
        return ids, np.stack(frames), np.stack(values).astype(np.float32)


def augment(frames: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """One random view of an episode, the same for all its frames: crop (scale 0.7-1),
    brightness, contrast and saturation. uint8 (T, H, W, 3) -> float (T, 3, size, size) in
    [-1, 1], the encoder's input (as `wvm.model.preprocess` makes it at inference)."""
    t, h, w, _ = frames.shape
    scale = rng.uniform(0.7, 1.0)
    aspect = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    ch = min(h, int(round(h * np.sqrt(scale / aspect))))
    cw = min(w, int(round(w * np.sqrt(scale * aspect))))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    x = frames[:, y0 : y0 + ch, x0 : x0 + cw].permute(0, 3, 1, 2).float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x * rng.uniform(0.8, 1.2)  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * rng.uniform(0.8, 1.2) + mean  # contrast
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * rng.uniform(0.7, 1.3) + gray  # saturation
    return x.clamp(0, 1) * 2 - 1
