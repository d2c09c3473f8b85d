"""Training data: episodes from episode stores (with optional ground-truth labels), the
sampling grid shared with inference (pipelines.windows.sample_positions), clip sampling with
video rewinding, and augmentation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipelines import fs as fsx
from pipelines.errors import WvmError
from pipelines.windows import sample_positions
from schemas import episode_store as layout
from schemas import ground_truth as gt
from schemas.ground_truth import GROUND_TRUTH
from schemas.validate import conform
from wvm.metrics import ground_truth

log = logging.getLogger(__name__)


@dataclass
class TrainingEpisode:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    values: np.ndarray  # float32 (T,) ground-truth progress
    task: str
    kind: str  # expert | hesitation | retry | failed
    fps: float
    source: str  # for logs: store url + episode index
    states: np.ndarray | None = None  # float32 (T, S) the robot's state per frame, when recorded
    camera: str = ""  # the camera key its frames are from


EVERY_CAMERA = "all"  # DataSpec.camera: each camera of an episode is a training episode of its own


def load_episodes(store_url: str, labels_url: str | None = None, camera: str | None = None) -> list[TrainingEpisode]:
    """Every episode of an episode store with its ground truth: a labels table's progress when
    one is given, else normalised time t/(T-1) (the expert-data target). `camera`: one camera key
    (default: each episode's first) or EVERY_CAMERA, the same motion seen from each viewpoint."""
    from pipelines.store import EpisodeStore

    store = EpisodeStore(store_url)
    labels = ground_truth_by_episode(labels_url) if labels_url else {}
    episodes = []
    for row in store.episodes().to_pylist():
        index, length = row[layout.SOURCE_EPISODE_INDEX], row[layout.LENGTH]
        label = labels.get(index)
        if label is not None:
            kind, values = labelled_progress(label, length, f"{labels_url}: episode {index}")
        else:
            kind, values = "expert", ground_truth(length, "expert")
        cameras = row[layout.CAMERAS] if camera == EVERY_CAMERA else [camera or row[layout.CAMERAS][0]]
        states = store.read_table(row).state
        for cam in cameras:
            episodes.append(
                TrainingEpisode(
                    store.read_frames(row, cam),
                    values.astype(np.float32),
                    row[layout.TASK],
                    kind,
                    row[layout.FPS],
                    f"{store_url}#{index}/{cam}",
                    None if states is None else np.asarray(states, np.float32),
                    cam,
                )
            )
    log.info("loaded %d episodes (%d frames) from %s", len(episodes), sum(len(e.values) for e in episodes), store_url)
    return episodes


def ground_truth_by_episode(labels_url: str) -> dict:
    """A ground-truth labels table (schemas.ground_truth), split per episode, frames in order."""
    fs, path = fsx.filesystem(labels_url)
    table = conform(fsx.read_parquet(fs, path), GROUND_TRUTH, labels_url).to_pandas()
    return {int(i): g.sort_values(gt.FRAME_INDEX) for i, g in table.groupby(gt.EPISODE_INDEX)}


def labelled_progress(label, length: int, where: str) -> tuple[str, np.ndarray]:
    """An episode's kind and per-frame progress from its rows of a labels table (one of
    `ground_truth_by_episode`'s values), checked against its `length` frames. The table's own
    progress, not its kind's formula: rendered failures that pause or undo first, and measured
    ground truth, follow no single formula of their kind and segment."""
    if len(label) != length:
        raise WvmError(f"{where} has {len(label)} labels for {length} frames")
    return str(label[gt.KIND].iloc[0]), label[gt.GT_PROGRESS].to_numpy(np.float64)


EDIT_KINDS = ("hesitation", "retry", "failed")


def edit_episode(
    length: int,
    rng: np.random.Generator,
    max_lag: int = 0,
    lag_kinds: Sequence[str] = EDIT_KINDS,
    kinds: Sequence[str] = EDIT_KINDS,
) -> tuple[np.ndarray, str, int, int]:
    """Video rewinding at the episode level: splice a non-progress segment into an expert
    episode of `length` frames, as the real suboptimal kinds would look. Returns (frame index
    per step of the edited episode, kind, seg_start, seg_end), labelled by the ground-truth
    formulas of that kind (wvm.metrics.ground_truth):

    hesitation: frame m repeated x times;  retry: frames m-1 .. m-x backwards, then forward again;
    failed: the episode stops at frame m and its last frame repeats to the original length.

    With `max_lag` L > 0 the frames turn up to L steps (drawn per edit) after the segment starts,
    as a real arm coasts after the command to stop or back up (rendered episodes move on for
    about one recorded frame): the label turns at m, the frames keep advancing for the lag. A
    lag-free splice teaches that the label turns exactly where the frames do. Kinds not in
    `lag_kinds` turn with the label. The kind is drawn from `kinds`.
    """
    frames = np.arange(length)
    kind = kinds[int(rng.integers(0, len(kinds)))]
    lag = int(rng.integers(0, max_lag + 1)) if max_lag > 0 else 0  # drawn for every kind: one stream
    lag = lag if kind in lag_kinds else 0
    if kind == "failed":
        m = int(rng.integers(max(1, length // 5), max(2, 4 * length // 5)))
        return np.minimum(frames, min(m + lag, length - 1)), kind, m, length - 1
    x = int(rng.integers(max(1, length // 6), max(2, length // 2) + 1))
    if kind == "hesitation":
        m = int(rng.integers(1, length - 1))
        lag = min(lag, x - 1, length - 2 - m)  # the coast ends inside the pause and the episode
        still = frames[m + lag]
        order = np.concatenate([frames[: m + lag + 1], np.full(x - lag, still), frames[m + lag + 1 :]])
        return order, kind, m, m + x
    x = min(x, length - 2)
    m = int(rng.integers(x, length - 1))
    lag = max(0, min(lag, (x - 1) // 2, length - 1 - m))  # the arm still ends up behind m
    coast = frames[m + 1 : m + lag + 1]
    turn = m + lag  # the farthest frame reached; x - lag steps back from there
    back = np.arange(turn - 1, turn - (x - lag) - 1, -1)
    return np.concatenate([frames[: m + 1], coast, back, frames[back[-1] + 1 :]]), kind, m, m + x


def edit_failed_episode(
    steps: np.ndarray,
    truth: np.ndarray,
    rng: np.random.Generator,
    max_lag: int = 0,
    lag_kinds: Sequence[str] = EDIT_KINDS,
    kinds: Sequence[str] = ("hesitation", "retry"),
) -> tuple[np.ndarray, np.ndarray]:
    """A pause or an undo spliced into the working part of a failed episode (frames `steps`,
    progress `truth`, which holds from where the work stops). Rendered and edited suboptimal
    episodes all succeed, so without this a pause or an undo is itself evidence of success: v12
    scores failed episodes with an undo spliced in as successes (success probability 0.60
    against 0.18 as rendered; reports/experiments.md, row 71). The splice is `edit_episode`'s
    hesitation or retry (drawn from `kinds`) of the frames up to the stop, its label mapped
    back onto the failed episode's own pace: a failure that hesitates holds, one that undoes
    falls, and neither reaches 1. Returns (steps, truth) of the edited episode; unchanged if
    the work stops within the first four frames."""
    stop = int(np.argmax(truth >= truth.max()))
    if stop < 4:
        return steps, truth
    order, kind, m, end = edit_episode(stop + 1, rng, max_lag, lag_kinds, kinds)
    # the edited prefix's progress in [0, 1] is a position in the failed episode's first `stop` steps
    reached = ground_truth(len(order), kind, m, end) * stop
    rest = np.arange(stop + 1, len(steps))
    positions = np.concatenate([order, rest])
    labels = np.interp(np.concatenate([reached, rest]), np.arange(len(truth)), truth)
    return steps[positions], labels.astype(np.float32)


def reverse_episode(steps: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A successful episode played backwards: a new task, from the old goal back to the old
    start, with the same scene and motions (most manipulation reads as a plausible task in
    reverse: carry an object back, open what was closed). Its progress is 1 - the old progress
    read backwards, so every ground-truth formula maps onto itself: a pause stays a pause, an
    undo stays an undo (now of the reverse task), and it still ends at 1. Taught alongside the
    forward episodes, the same scene and motion direction are progress in one episode and
    regress in another, so progress must come from where the episode goes, not from which
    direction a task's scene usually moves in (the unseen-task retries of
    reports/experiments.md). Failed episodes have no reverse task (they start where they did
    not finish)."""
    return steps[::-1].copy(), (1.0 - truth[::-1]).astype(np.float32)


def warped_positions(length: int, samples: int, rng: np.random.Generator, shape: float = 2.0) -> np.ndarray:
    """`samples` frame indices from first to last in a random monotone order of spacing: the
    episode as if executed at a speed that changes along the way. Gaps are Gamma(shape)
    distributed (smaller shape: more uneven); repeated indices are real pauses."""
    if length <= 1 or samples <= 2:
        return sample_positions(length, samples)
    gaps = rng.gamma(shape, 1.0, samples - 1)
    cumulative = np.concatenate([[0.0], np.cumsum(gaps)])
    return np.round(cumulative / cumulative[-1] * (length - 1)).astype(np.int64)


class EpisodeSampler:
    """Draws training episodes at the model's N samples: a random episode, as recorded or (with
    probability `edit_p`, expert episodes only) edited by `edit_episode`; the sample positions
    jittered a little around the evenly spaced ones inference uses, or (with probability
    `warp_p`) warped in time (`warped_positions`), so that where a sample sits in the episode
    does not by itself tell its progress: the frames must.

    With probability `reverse_p` a successful episode (as recorded or edited) is played
    backwards as the task of going back to where it started, labelled 1 - its progress read
    backwards (`reverse_episode`). With probability `failed_edit_p` a failed episode (as
    recorded or edited) gets a pause or an undo before its work stops (`edit_failed_episode`)."""

    def __init__(
        self,
        episodes: list[TrainingEpisode],
        samples: int,
        edit_p: float = 0.5,
        warp_p: float = 0.0,
        edit_lag: int = 0,
        edit_lag_kinds: Sequence[str] = EDIT_KINDS,
        reverse_p: float = 0.0,
        failed_edit_p: float = 0.0,
    ):
        self.episodes, self.samples, self.edit_p, self.warp_p = episodes, samples, edit_p, warp_p
        self.edit_lag, self.edit_lag_kinds, self.reverse_p = edit_lag, tuple(edit_lag_kinds), reverse_p
        self.failed_edit_p = failed_edit_p
        self.offsets = np.cumsum([0] + [len(e.values) for e in episodes])

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(episode ids (B,), global frame indices (B, N), values (B, N), valid (B, N)); padding
        positions repeat the last frame and are not valid."""
        n = self.samples
        ids = rng.integers(0, len(self.episodes), batch_size)
        frames = np.zeros((batch_size, n), np.int64)
        values = np.zeros((batch_size, n), np.float32)
        valid = np.zeros((batch_size, n), bool)
        for row, i in enumerate(ids):
            episode = self.episodes[i]
            steps, truth, kind = np.arange(len(episode.values)), episode.values, episode.kind
            if episode.kind == "expert" and len(steps) >= 4 and rng.random() < self.edit_p:
                steps, kind, m, end = edit_episode(len(steps), rng, self.edit_lag, self.edit_lag_kinds)
                truth = ground_truth(len(steps), kind, m, end)
            # drawn only when enabled: recipes without it keep their random stream
            if kind == "failed" and self.failed_edit_p and rng.random() < self.failed_edit_p:
                steps, truth = edit_failed_episode(steps, truth, rng, self.edit_lag, self.edit_lag_kinds)
            if kind in gt.SUCCESS_KINDS and rng.random() < self.reverse_p:
                steps, truth = reverse_episode(steps, truth)
            positions = sample_positions(len(steps), n)
            k = len(positions)
            if k > 2 and rng.random() < self.warp_p:
                positions = warped_positions(len(steps), k, rng)
            elif k > 2:  # jitter inner samples by up to a third of the spacing
                spacing = (len(steps) - 1) / (k - 1)
                jitter = np.round(rng.uniform(-spacing / 3, spacing / 3, k - 2)).astype(np.int64)
                positions[1:-1] = np.clip(positions[1:-1] + jitter, 1, len(steps) - 2)
                positions = np.sort(positions)
            frames[row, :k] = self.offsets[i] + steps[positions]
            frames[row, k:] = frames[row, k - 1]
            values[row, :k] = truth[positions]
            valid[row, :k] = True
        return ids, frames, values, valid


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
