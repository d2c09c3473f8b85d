"""The Source interface: what every dataset reader implements, and all the rest of the project
sees of a dataset format.

A reader lists its episodes from metadata (cheap, no decoding), reads one episode's per-frame
table, and decodes one camera's frames at given rows of that table. Ingest and relabel plan and
run partitions from any Source (pipelines.sources.plan); they never see a format's files.

Adding a format: one module in this package with a `Source` subclass whose `detect(url)` says
whether a URL holds its format, plus one line in `pipelines.sources.READERS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

# camera names that say the camera rides on the robot (not a third-person view)
EGOCENTRIC_WORDS = ("wrist", "hand", "gripper", "ego")
# how far (relative) the median timestamp step may stray from 1 / fps
FPS_TOLERANCE = 0.1
# LeRobot's own default: a query timestamp must have a video frame within 0.1 ms.
DEFAULT_TOLERANCE_S = 1e-4


@dataclass(frozen=True)
class SourceEpisode:
    """One episode of a source dataset, as listed from metadata only (no decoding)."""

    source_uri: str  # canonical URI of the dataset (enters the episode id)
    index: int  # the episode's index in the dataset
    length: int  # frames (steps)
    task: str  # task text (the value model reads it); may be empty: read_frames then refuses it
    fingerprint: str  # changes whenever the episode's data or the decode options change
    file: str  # the file that holds the episode's per-frame data (named in errors)
    # reader-private: where the episode's data lives (paths, byte offsets...); not compared
    locator: Any = field(default=None, compare=False, hash=False, repr=False)


@dataclass
class EpisodeFrames:
    """The per-frame table of one episode."""

    timestamp: np.ndarray  # float64 (N,), seconds from episode start
    frame_index: np.ndarray  # int64 (N,)
    index: np.ndarray  # int64 (N,), the dataset's global frame index (LeRobot), else frame_index
    state: np.ndarray | None = None  # float32 (N, S)
    action: np.ndarray | None = None  # float32 (N, A)

    def __len__(self) -> int:
        return len(self.frame_index)


@dataclass(frozen=True)
class EpisodeContext:
    """What a reader knows about one episode beyond its frames: the same for every episode of
    most formats; per episode in an episode store, which holds many sources."""

    fps: float
    embodiment: str
    cameras: tuple[str, ...]
    source_format: str
    has_global_index: bool


def timestamp_problem(timestamp: np.ndarray, fps: float) -> str | None:
    """What is wrong with an episode's timestamps, or None: each must be a number, they start at
    0 or later and strictly increase, and their typical step must be the declared frame rate's
    (a wrong fps would mis-time every sampled frame). Readers raise it as the episode's error."""
    finite = np.isfinite(timestamp)
    if not finite.all():
        bad = int(np.argmin(finite))
        return f"timestamp of frame {bad} is {timestamp[bad]} (not a number)"
    ok = np.concatenate([timestamp[:1] >= 0, timestamp[1:] > timestamp[:-1]])
    if not ok.all():
        bad = int(np.argmin(ok))
        after = f" after {timestamp[bad - 1]:.6f}s" if bad else ""
        return f"timestamps are not increasing from 0: frame {bad} is at {timestamp[bad]:.6f}s{after}"
    if len(timestamp) > 2 and fps > 0:
        step = float(np.median(np.diff(timestamp)))
        if abs(step * fps - 1) > FPS_TOLERANCE:
            return f"timestamps advance {step:.4f}s per frame (median) but the dataset declares {fps:g} fps ({1 / fps:.4f}s)"
    return None


class Source(ABC):
    """Read access to one dataset at a local path or fsspec URL (gs://...)."""

    # what the reader is: "lerobot", "rlds", "raw", "store" (recorded as source_format with `version`)
    name: ClassVar[str]
    # the source has LeRobot's global frame `index`, so a LeRobot progress sidecar can join it
    has_global_index: ClassVar[bool] = False

    url: str  # as given
    uri: str  # canonical (pipelines.fs.canonical_uri)
    version: str  # format version, "" when the format has none
    fps: float
    embodiment: str  # robot type / dataset name
    cameras: list[str]  # camera keys, preferred labelling camera first (see default_camera)

    @classmethod
    @abstractmethod
    def detect(cls, url: str) -> bool:
        """Whether `url` holds a dataset of this format (reads metadata only, never raises)."""

    @classmethod
    def near_miss(cls, url: str) -> tuple[str, str] | None:
        """(file, reason) when `url` looks like this format but cannot be read as it (a marker
        file missing): open_source reports that instead of "not a dataset". Never raises."""
        return None

    @property
    def source_format(self) -> str:
        return f"{self.name}/{self.version}" if self.version else self.name

    def default_camera(self) -> str:
        """The camera the model labels from unless told otherwise: the first third-person one
        (a name without wrist/hand/gripper/ego), else the first."""
        third_person = [c for c in self.cameras if not any(word in c.lower() for word in EGOCENTRIC_WORDS)]
        return (third_person or self.cameras)[0]

    def row_layout(self, episode: SourceEpisode) -> tuple[str, int, int] | None:
        """(block, offset, rows) when the source stores episodes in blocks of rows (an episode
        store's partitions): work is planned per block and outputs keep the rows, so they join
        the source row for row. None: blocks are planned from the episode order."""
        return None

    def context(self, episode: SourceEpisode) -> EpisodeContext:
        """The episode's context; its cameras start with the default one."""
        default = self.default_camera()
        cameras = (default, *(c for c in self.cameras if c != default))
        return EpisodeContext(self.fps, self.embodiment, cameras, self.source_format, self.has_global_index)

    @abstractmethod
    def camera_shape(self, camera: str) -> tuple[int, int]:
        """(height, width) of a camera's frames as the dataset declares them."""

    @abstractmethod
    def feature_dim(self, key: str) -> int:
        """Width of the per-frame "state" or "action" vector; 0 when the dataset has none."""

    @abstractmethod
    def episodes(self, *, decode_options: str = "") -> list[SourceEpisode]:
        """All episodes, ordered by index. `decode_options` enters each fingerprint, so a change
        of e.g. resize makes an episode count as changed. Bad metadata raises DatasetError."""

    @abstractmethod
    def read_frames(self, episode: SourceEpisode) -> EpisodeFrames:
        """The episode's per-frame table, validated; a bad episode raises EpisodeError."""

    @abstractmethod
    def decode(
        self,
        episode: SourceEpisode,
        camera: str,
        table: EpisodeFrames,
        rows: np.ndarray,
        *,
        size: tuple[int, int] | None = None,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        threads: int = 1,
    ) -> Iterator[np.ndarray]:
        """Yield one RGB uint8 (H, W, 3) frame per row of `table` in `rows` (increasing), resized
        to `size` (height, width) when given. Frames that cannot be decoded, or do not match
        the table (a timestamp with no video frame within `tolerance_s`), raise EpisodeError."""
