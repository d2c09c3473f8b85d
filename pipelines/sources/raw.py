"""Raw episode folders ("wvm-raw"): the small format to record to when there is no converter
to LeRobot or RLDS at hand. One folder per episode, one video per camera:

    <root>/wvm_raw.json
        {"format": "wvm-raw", "version": 1, "robot_type": "so100", "fps": 30,
         "cameras": ["front", "wrist"]}
    <root>/episodes/<name>/episode.json
        {"task": "put the cup in the sink"}              optional "fps": this episode's rate
    <root>/episodes/<name>/<camera>.mp4                  one video per camera in `cameras`
    <root>/episodes/<name>/frames.parquet                optional per-frame table:
        timestamp  float64, seconds from the episode start (default: k / fps)
        state      list<float32>, the robot state      (optional column)
        action     list<float32>, the commanded action (optional column)

- Episodes are ordered by folder name; an episode's index is its position in that order (so
  name them sortably, e.g. 000017 or 2024-05-01T10-22-31, and only ever add new names).
- Frame k of an episode is at `timestamp[k]` (or k / fps) in every camera's video: decoding
  looks frames up by presentation time, within 0.1 ms. Without frames.parquet the episode has
  as many frames as the first camera's video.
- `cameras` lists the cameras in order of preference: the first is the one values are labelled
  from unless told otherwise, so put a third-person camera first. Each name is a file name.
- All frames of a camera have one size (read from the first episode's video).
- `state` / `action` have the same width in every frame and episode (0 columns: none).
- Videos: any codec FFmpeg decodes. `write_raw_episode` writes H.264 at CRF 0 in yuv444p
  (lossless apart from the RGB->YUV rounding) with no B-frames, so frames seek cheaply.

Errors: no wvm_raw.json: not this format. wvm_raw.json unreadable or wrong: DatasetError. One
bad episode (episode.json missing or not JSON, no task text, a camera's video missing, a bad
frames.parquet, timestamps not increasing or not matching the video): EpisodeError for that
episode when it is read; the others are unaffected.

Writing: `write_raw_dataset_info(root, robot_type, fps, cameras)` then `write_raw_episode(...)`
per episode, on a local directory (PyAV writes mp4 to local files); copy the folder to gs://
afterwards if needed. Reading works on local paths and fsspec URLs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import fs as fsx
from pipelines.errors import DatasetError, EpisodeError
from pipelines.sources.base import DEFAULT_TOLERANCE_S, EpisodeContext, EpisodeFrames, Source, SourceEpisode, timestamp_problem
from pipelines.sources.video import decode_at_timestamps

FORMAT = "wvm-raw"
VERSION = 1
INFO_FILE = "wvm_raw.json"
FRAMES_FILE = "frames.parquet"
EPISODE_FILE = "episode.json"
# Key and column names of this format (module docstring); this module owns them, though some
# read like our own columns (schemas/episode_store.py).
FPS = "fps"  # wvm_raw.json and episode.json
CAMERAS = "cameras"  # wvm_raw.json
ROBOT_TYPE = "robot_type"  # wvm_raw.json
TASK = "task"  # episode.json
TIMESTAMP = "timestamp"  # frames.parquet
STATE = "state"  # frames.parquet
ACTION = "action"  # frames.parquet


@dataclass(frozen=True)
class RawEpisode:
    """Where one episode's files are (the locator of its SourceEpisode)."""

    directory: str
    fps: float
    videos: dict[str, str] = field(default_factory=dict)  # camera -> video path, present files only
    frames: str | None = None  # frames.parquet path when present
    problem: str = ""  # why the episode cannot be read ("" when it can), raised by read_frames


class RawSource(Source):
    """Read access to a wvm-raw dataset (module docstring) at a local path or fsspec URL."""

    name = "raw"

    @classmethod
    def detect(cls, url: str) -> bool:
        try:
            fs, path = fsx.filesystem(url)
            return fs.exists(f"{path.rstrip('/')}/{INFO_FILE}")
        except Exception:  # an unreachable URL is not this format; open_source says what is wrong
            return False

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.uri = fsx.canonical_uri(self.url)
        self.fs, root = fsx.filesystem(self.url)
        self.root = root.rstrip("/")
        info_path = self._path(INFO_FILE)
        try:
            with self.fs.open(info_path, "rb") as f:
                info = json.load(f)
        except FileNotFoundError:
            raise DatasetError(f"not a raw dataset: {INFO_FILE} is missing", file=info_path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{INFO_FILE} is not valid JSON: {exc}", file=info_path) from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise DatasetError(f'{INFO_FILE} must be an object with "format": "{FORMAT}"', file=info_path)
        if info.get("version") != VERSION:
            raise DatasetError(f"unsupported {FORMAT} version {info.get('version')!r}; supported: {VERSION}", file=info_path)
        cameras = info.get(CAMERAS)
        if not isinstance(cameras, list) or not cameras or len(set(map(str, cameras))) != len(cameras) or not all(map(_file_name, cameras)):
            raise DatasetError(f'"{CAMERAS}" must be a non-empty list of distinct names (each a file name)', file=info_path)
        self.fps = _positive(info.get(FPS), f'"{FPS}"', info_path)
        self.version = str(VERSION)
        self.embodiment = str(info.get(ROBOT_TYPE) or "unknown")
        self.cameras = cameras
        self._shapes: dict[str, tuple[int, int]] = {}
        self._dims: dict[str, int] = {}

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def _episode_dirs(self) -> list[str]:
        directory = self._path("episodes")
        try:
            listing = self.fs.ls(directory, detail=True)
        except FileNotFoundError:
            raise DatasetError("the dataset has no episodes/ directory", file=directory) from None
        return sorted(self.fs._strip_protocol(e["name"]).rstrip("/") for e in listing if e["type"] == "directory")

    # -- metadata ---------------------------------------------------------------------------

    def camera_shape(self, camera: str) -> tuple[int, int]:
        """(height, width) of the camera's video in the first episode with a readable one."""
        if camera not in self._shapes:
            for directory in self._episode_dirs():
                try:
                    with self._open_video(f"{directory}/{camera}.mp4") as container:
                        context = container.streams.video[0].codec_context
                        self._shapes[camera] = (int(context.height), int(context.width))
                    break
                except (OSError, IndexError, av.error.FFmpegError):  # missing or broken: that episode's error
                    continue
            else:
                raise DatasetError(f"no episode has a readable video for camera {camera!r}", file=self._path("episodes"))
        return self._shapes[camera]

    def feature_dim(self, key: str) -> int:
        """Width of "state" / "action" in the first episode's frames.parquet; 0 without one."""
        if key not in self._dims:
            self._dims[key] = 0
            for directory in self._episode_dirs():
                path = f"{directory}/{FRAMES_FILE}"
                if self.fs.exists(path):
                    with self.fs.open(path, "rb") as f:
                        parquet = pq.ParquetFile(f)
                        if key in parquet.schema_arrow.names and parquet.metadata.num_rows:
                            first = parquet.read_row_group(0, columns=[key]).column(key)
                            self._dims[key] = int(pc.list_value_length(first)[0].as_py() or 0)
                    break
        return self._dims[key]

    def context(self, episode: SourceEpisode) -> EpisodeContext:
        return replace(super().context(episode), fps=episode.locator.fps)  # an episode may set its own fps

    def episodes(self, *, decode_options: str = "") -> list[SourceEpisode]:
        episodes = []
        for index, directory in enumerate(self._episode_dirs()):
            files = {self.fs._strip_protocol(p): fsx.file_token(info) for p, info in self.fs.find(directory, detail=True).items()}
            task, fps, problem = self._episode_json(directory)
            videos = {c: f"{directory}/{c}.mp4" for c in self.cameras if f"{directory}/{c}.mp4" in files}
            frames = f"{directory}/{FRAMES_FILE}" if f"{directory}/{FRAMES_FILE}" in files else None
            length = 0
            if not problem:
                try:
                    length = self._length(frames, videos)
                except (OSError, IndexError, pa.ArrowInvalid, av.error.FFmpegError) as exc:
                    problem = f"cannot read the episode's length: {exc}"
            content = {"dir": directory.rsplit("/", 1)[-1], "files": {p[len(directory) :]: t for p, t in files.items()}, "fps": fps}
            fingerprint = hashlib.sha256(json.dumps({**content, "options": decode_options}, sort_keys=True).encode()).hexdigest()[:32]
            locator = RawEpisode(directory, fps, videos, frames, problem)
            episodes.append(SourceEpisode(self.uri, index, length, task, fingerprint, frames or f"{directory}/{EPISODE_FILE}", locator=locator))
        return episodes

    def _episode_json(self, directory: str) -> tuple[str, float, str]:
        """(task, fps, problem) from an episode.json; a bad one is that episode's problem."""
        path = f"{directory}/{EPISODE_FILE}"
        try:
            with self.fs.open(path, "rb") as f:
                meta = json.load(f)
            if not isinstance(meta, dict):
                raise ValueError("it is not a JSON object")
            fps = _positive(meta.get(FPS, self.fps), f'"{FPS}"', path)
            return str(meta.get(TASK) or "").strip(), fps, ""
        except FileNotFoundError:
            return "", self.fps, f"{path} is missing"
        except (ValueError, UnicodeDecodeError, DatasetError) as exc:  # JSONDecodeError is a ValueError
            return "", self.fps, f"{path} is unusable: {getattr(exc, 'reason', exc)}"

    def _length(self, frames: str | None, videos: dict[str, str]) -> int:
        """Rows of frames.parquet, else the frame count of the first camera's video."""
        if frames:
            with self.fs.open(frames, "rb") as f:
                return pq.ParquetFile(f).metadata.num_rows
        if not videos:
            return 0
        with self._open_video(next(iter(videos.values()))) as container:
            stream = container.streams.video[0]
            if stream.frames:  # the container's own count (mp4: its sample table)
                return int(stream.frames)
            return sum(1 for packet in container.demux(stream) if packet.size)  # demuxed, not decoded

    def _open_video(self, path: str):
        local = fsx.local_path(self.fs, path)
        return av.open(local) if local else av.open(self.fs.open(path, "rb"))

    # -- per-episode data -------------------------------------------------------------------

    def read_frames(self, episode: SourceEpisode) -> EpisodeFrames:
        """The frames.parquet table (or k / fps), validated; every camera's video must exist."""
        ep: RawEpisode = episode.locator
        fail = lambda reason, file=episode.file: EpisodeError(reason, file=file, episode=episode.index)
        if ep.problem:
            raise fail(ep.problem)
        if not episode.task:
            raise fail("episode has no task text (the value model reads it)", f"{ep.directory}/{EPISODE_FILE}")
        if missing := [c for c in self.cameras if c not in ep.videos]:
            raise fail(f"video file for camera {missing[0]!r} is missing", f"{ep.directory}/{missing[0]}.mp4")
        if episode.length == 0:
            raise fail("episode is empty: no frames")
        frame_index = np.arange(episode.length, dtype=np.int64)
        frames = EpisodeFrames(timestamp=frame_index / ep.fps, frame_index=frame_index, index=frame_index.copy())
        if ep.frames is None:
            return frames
        try:
            with self.fs.open(ep.frames, "rb") as f:
                table = pq.read_table(f)
        except (OSError, pa.ArrowInvalid) as exc:
            raise fail(f"{FRAMES_FILE} is not valid parquet: {exc}") from None
        if table.num_rows != episode.length:
            raise fail(f"{FRAMES_FILE} has {table.num_rows} rows but listing found {episode.length} (the file changed)")
        if TIMESTAMP in table.column_names:
            ts = frames.timestamp = table.column(TIMESTAMP).to_numpy().astype(np.float64)
            if problem := timestamp_problem(ts, ep.fps):
                raise fail(problem)
        for key in (STATE, ACTION):
            if key in table.column_names:
                column, dim = table.column(key), self.feature_dim(key)
                lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
                if np.any(lengths != dim):  # a null row has length NaN
                    bad = int(np.argmax(lengths != dim))
                    raise fail(f"column {key!r} has {lengths[bad]} values at frame {bad}; the dataset's width is {dim}")
                setattr(frames, key, pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(lengths), dim))
        return frames

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
        """Frames by timestamp from the camera's mp4, decoded once, in order."""
        ep: RawEpisode = episode.locator
        path = ep.videos.get(camera) or f"{ep.directory}/{camera}.mp4"
        if not self.fs.exists(path):
            raise EpisodeError(f"video file for camera {camera!r} is missing", file=path, episode=episode.index)
        yield from decode_at_timestamps(
            lambda: self._open_video(path),
            np.asarray(table.timestamp[np.asarray(rows, dtype=np.int64)], dtype=np.float64),
            size=size,
            tolerance_s=tolerance_s,
            declared=self.camera_shape(camera),
            threads=threads,
            file=path,
            episode=episode.index,
        )


def _file_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _positive(value, name: str, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise DatasetError(f"{name} must be a positive number, got {value!r}", file=path)
    return float(value)


# -- writing ------------------------------------------------------------------------------------


def write_raw_dataset_info(root: str | os.PathLike, robot_type: str, fps: float, cameras: list[str]) -> Path:
    """Create a wvm-raw dataset folder (or rewrite its wvm_raw.json)."""
    root = Path(root)
    (root / "episodes").mkdir(parents=True, exist_ok=True)
    info = {"format": FORMAT, "version": VERSION, ROBOT_TYPE: robot_type, FPS: fps, CAMERAS: list(cameras)}
    (root / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return root


def write_raw_episode(
    root: str | os.PathLike,
    name: str,
    task: str,
    frames_by_camera: dict[str, np.ndarray],
    fps: float,
    state: np.ndarray | None = None,
    action: np.ndarray | None = None,
) -> Path:
    """Write one episode folder: `frames_by_camera[camera]` is uint8 (N, H, W, 3) RGB; frame k
    is at k / fps; frames.parquet only when state or action is given. An existing episode
    folder is refused (FileExistsError), never overwritten."""
    lengths = {len(frames) for frames in frames_by_camera.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every camera needs the same, non-zero number of frames; got {lengths}")
    (length,) = lengths
    directory = Path(root) / "episodes" / name
    directory.mkdir(parents=True, exist_ok=False)
    (directory / EPISODE_FILE).write_text(json.dumps({TASK: task, FPS: fps}) + "\n")
    rate = Fraction(fps).limit_denominator(100_000)
    for camera, frames in frames_by_camera.items():
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"camera {camera}: expected uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
        with av.open(str(directory / f"{camera}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv444p"
            stream.options = {"crf": "0", "bf": "0"}  # lossless, no reordering
            for k, frame in enumerate(frames):
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                video_frame.pts, video_frame.time_base = k, 1 / rate
                container.mux(stream.encode(video_frame))
            container.mux(stream.encode())
    if state is not None or action is not None:
        columns = {TIMESTAMP: pa.array(np.arange(length, dtype=np.float64) / fps)}
        for key, values in ((STATE, state), (ACTION, action)):
            if values is not None:
                values = np.asarray(values, dtype=np.float32)
                if len(values) != length:
                    raise ValueError(f"{key} has {len(values)} rows for {length} frames")
                columns[key] = pa.array(list(values), type=pa.list_(pa.float32()))
        pq.write_table(pa.table(columns), directory / FRAMES_FILE)
    return directory
