"""LeRobot datasets (v2.0 / v2.1 / v3.0): the one module that knows their file layout.

Reading: `LeRobotSource(url)` (a pipelines.sources Source) lists episodes with their videos and
a content fingerprint, reads an episode's per-frame table, and decodes any camera with PyAV by
timestamp (v3 packs many episodes into one mp4; v2.x has one mp4 per episode).

Writing: `LeRobotV3Writer` writes a v3.0 dataset (used by `wvm datagen`), in the layout
LeRobot's own writer produces: meta/info.json, meta/tasks.parquet, meta/episodes/...,
data/chunk-XXX/file-XXX.parquet and videos/<key>/chunk-XXX/file-XXX.mp4.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import fs as fsx
from pipelines.errors import DatasetError, EpisodeError
from pipelines.sources.base import DEFAULT_TOLERANCE_S, EpisodeFrames, Source, SourceEpisode, timestamp_problem
from pipelines.sources.video import decode_at_timestamps

# SVT-AV1 prints a banner per encoder unless told otherwise.
os.environ.setdefault("SVT_LOG", "1")

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
STATE_KEY = "observation.state"
ACTION_KEY = "action"
# LeRobot's own names (its format: this module owns them). Our tables reuse some on purpose
# (schemas/episode_store.py, schemas/labels.py), but those are ours and may change; these may not.
TIMESTAMP = "timestamp"  # data files: seconds from the episode start
FRAME_INDEX = "frame_index"
EPISODE_INDEX = "episode_index"  # data files and episode metadata
INDEX = "index"  # data files: the dataset-wide frame index
TASK_INDEX = "task_index"
TASK = "task"  # meta/tasks
TASKS = "tasks"  # episode metadata: the episode's task texts
LENGTH = "length"  # episode metadata: frames
FPS = "fps"  # meta/info.json
FRAME_COLUMNS = (TIMESTAMP, FRAME_INDEX, EPISODE_INDEX, INDEX)  # what every data file has
_FEATURE_KEYS = {"state": STATE_KEY, "action": ACTION_KEY}


@dataclass(frozen=True)
class VideoRef:
    """Where one camera's frames of one episode live."""

    path: str  # path inside the dataset's filesystem
    from_timestamp: float  # episode start inside the file (v3); 0 for v2.x


class LeRobotSource(Source):
    """Read access to a LeRobot dataset at a local path or fsspec URL."""

    name = "lerobot"
    has_global_index = True

    @classmethod
    def detect(cls, url: str) -> bool:
        try:
            fs, path = fsx.filesystem(url)
            return fs.exists(f"{path.rstrip('/')}/meta/info.json")
        except Exception:  # an unreachable URL is not this format; open_source says what is wrong
            return False

    @classmethod
    def near_miss(cls, url: str) -> tuple[str, str] | None:
        try:
            fs, path = fsx.filesystem(url)
            meta = f"{path.rstrip('/')}/meta"
            if fs.isdir(meta):
                return f"{meta}/info.json", "meta/info.json is missing (a LeRobot dataset has meta/info.json)"
        except Exception:  # unreadable: no diagnosis
            return None
        return None

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.uri = fsx.canonical_uri(self.url)
        self.fs, self.root = fsx.filesystem(self.url)
        self.root = self.root.rstrip("/")
        info_path = self._path("meta/info.json")
        try:
            with self.fs.open(info_path, "rb") as f:
                self.info = json.load(f)
        except FileNotFoundError:
            raise DatasetError("not a LeRobot dataset: meta/info.json is missing", file=info_path) from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"meta/info.json is not valid JSON: {exc}", file=info_path) from None
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in SUPPORTED_VERSIONS:
            raise DatasetError(
                f"unsupported LeRobot codebase_version {self.version!r}; supported: {', '.join(SUPPORTED_VERSIONS)}",
                file=info_path,
            )
        for key in (FPS, "features", "data_path"):
            if key not in self.info:
                raise DatasetError(f"meta/info.json has no {key!r}", file=info_path)
        self.fps = float(self.info[FPS])
        self.embodiment = str(self.info.get("robot_type") or "unknown")
        self.features: dict = self.info["features"]
        self.cameras = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        images = [k for k, f in self.features.items() if f.get("dtype") == "image"]
        if images and not self.cameras:
            raise DatasetError(
                f"image features stored inside parquet ({images}) are not supported; only video features",
                file=info_path,
            )
        if not self.cameras:
            raise DatasetError("dataset has no video features", file=info_path)

    # -- metadata ---------------------------------------------------------------------------

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def feature_dim(self, key: str) -> int:
        feature = self.features.get(_FEATURE_KEYS[key])
        return int(np.prod(feature["shape"])) if feature else 0

    def camera_shape(self, camera: str) -> tuple[int, int]:
        """(height, width) of a camera as declared in info.json."""
        feature = self.features[camera]
        names = feature.get("names") or ["height", "width", "channels"]
        shape = dict(zip(names, feature["shape"]))
        if "height" in shape and "width" in shape:
            return int(shape["height"]), int(shape["width"])
        return int(feature["shape"][0]), int(feature["shape"][1])

    def _tasks(self) -> dict[int, str]:
        if self.version == "v3.0":
            path = self._path("meta/tasks.parquet")
            table = self._read_meta_parquet(path)
            frame = table.to_pandas()
            if TASK in frame.columns:
                return dict(zip(frame[TASK_INDEX].astype(int), frame[TASK].astype(str)))
            return {int(i): str(task) for task, i in zip(frame.index, frame[TASK_INDEX])}
        rows = self._read_jsonl(self._path("meta/tasks.jsonl"))
        return {int(r[TASK_INDEX]): str(r[TASK]) for r in rows}

    def _read_meta_parquet(self, path: str) -> pa.Table:
        try:
            return fsx.read_parquet(self.fs, path)
        except FileNotFoundError:
            raise DatasetError("metadata file is missing", file=path) from None
        except pa.ArrowInvalid as exc:
            raise DatasetError(f"metadata file is not valid parquet: {exc}", file=path) from None

    def _read_jsonl(self, path: str) -> list[dict]:
        try:
            with self.fs.open(path, "rt") as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            raise DatasetError("metadata file is missing", file=path) from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"metadata file has a line that is not JSON: {exc}", file=path) from None
        except UnicodeDecodeError as exc:
            raise DatasetError(f"metadata file is not UTF-8 text: {exc}", file=path) from None

    def _file_tokens(self, directory: str) -> dict[str, str]:
        try:
            listing = self.fs.find(self._path(directory), detail=True)
        except FileNotFoundError:
            return {}
        return {self.fs._strip_protocol(p): fsx.file_token(info) for p, info in listing.items()}

    def episodes(self, *, decode_options: str = "") -> list[SourceEpisode]:
        """All episodes, ordered by index. `decode_options` enters each fingerprint, so a change
        of e.g. resize makes the episode count as changed."""
        tasks = self._tasks()
        tokens = {**self._file_tokens("data"), **self._file_tokens("videos")}
        records = self._episode_records()
        counts = Counter(int(r[EPISODE_INDEX]) for r in records)
        if repeated := sorted(i for i, n in counts.items() if n > 1):
            # which record is right cannot be told: refuse rather than keep one silently
            raise DatasetError(f"episode index(es) {repeated[:10]} appear more than once in the episode metadata", file=self._path("meta"))
        episodes = []
        for record in records:
            index = int(record[EPISODE_INDEX])
            data_path, videos = self._locate(record, index)
            task_names = record.get(TASKS)
            if task_names is None or len(task_names) == 0:
                task_names = [tasks.get(int(record.get(TASK_INDEX, 0)), "")]
            task = " | ".join(str(t) for t in task_names)
            files = [data_path, *(v.path for v in videos.values())]
            fingerprint = hashlib.sha256(
                json.dumps(
                    {
                        "record": record,
                        "files": {f: tokens.get(f, "missing") for f in files},
                        "options": decode_options,
                    },
                    sort_keys=True,
                    default=_jsonable,
                ).encode()
            ).hexdigest()[:32]
            episodes.append(
                SourceEpisode(
                    source_uri=self.uri,
                    index=index,
                    length=int(record[LENGTH]),
                    task=task,
                    fingerprint=fingerprint,
                    file=data_path,
                    locator=videos,
                )
            )
        return sorted(episodes, key=lambda e: e.index)

    def _episode_records(self) -> list[dict]:
        if self.version == "v3.0":
            directory = self._path("meta/episodes")
            files = sorted(p for p in self.fs.find(directory) if p.endswith(".parquet"))
            if not files:
                raise DatasetError("no episode metadata files (meta/episodes/*/*.parquet)", file=directory)
            records = []
            for path in files:
                records.extend(self._read_meta_parquet(path).to_pylist())
            return records
        records = self._read_jsonl(self._path("meta/episodes.jsonl"))
        stats_path = self._path("meta/episodes_stats.jsonl")
        if self.version == "v2.1" and self.fs.exists(stats_path):
            stats = {int(r[EPISODE_INDEX]): r.get("stats") for r in self._read_jsonl(stats_path)}
            for record in records:
                record["stats"] = stats.get(int(record[EPISODE_INDEX]))
        return records

    def _inside(self, relative: str, template: str) -> str:
        """The dataset path of a file named by an info.json path template; a template that
        leads outside the dataset (`../`, an absolute path) is refused, never read."""
        normal = posixpath.normpath(relative)
        if posixpath.isabs(normal) or normal == ".." or normal.startswith("../") or "://" in relative:
            raise DatasetError(f"{template} {self.info[template]!r} gives {relative!r}, outside the dataset", file=self._path("meta/info.json"))
        return self._path(normal)

    def _locate(self, record: dict, index: int) -> tuple[str, dict[str, VideoRef]]:
        if self.version == "v3.0":
            data_path = self.info["data_path"].format(
                chunk_index=int(record["data/chunk_index"]), file_index=int(record["data/file_index"])
            )
            videos = {}
            for camera in self.cameras:
                prefix = f"videos/{camera}/"
                video_path = self.info["video_path"].format(
                    video_key=camera,
                    chunk_index=int(record[prefix + "chunk_index"]),
                    file_index=int(record[prefix + "file_index"]),
                )
                videos[camera] = VideoRef(self._inside(video_path, "video_path"), float(record[prefix + "from_timestamp"]))
            return self._inside(data_path, "data_path"), videos
        chunk = index // int(self.info.get("chunks_size", 1000))
        data_path = self.info["data_path"].format(episode_chunk=chunk, episode_index=index)
        videos = {
            camera: VideoRef(
                self._inside(self.info["video_path"].format(episode_chunk=chunk, video_key=camera, episode_index=index), "video_path"),
                0.0,
            )
            for camera in self.cameras
        }
        return self._inside(data_path, "data_path"), videos

    # -- per-episode data -------------------------------------------------------------------

    def read_frames(self, episode: SourceEpisode) -> EpisodeFrames:
        """The episode's per-frame table, validated against info.json and the episode metadata."""
        path = episode.file
        if not episode.task.strip():
            tasks_file = "meta/tasks.parquet" if self.version == "v3.0" else "meta/tasks.jsonl"
            raise EpisodeError("episode has no task text (the value model reads it)", file=self._path(tasks_file), episode=episode.index)
        columns = list(FRAME_COLUMNS)
        vectors = [k for k in (STATE_KEY, ACTION_KEY) if k in self.features]
        try:
            with self.fs.open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                present = set(parquet.schema_arrow.names)
                missing = [c for c in columns + vectors if c not in present]
                if missing:
                    raise EpisodeError(f"data file lacks column(s) {missing}", file=path, episode=episode.index)
                # v3 files hold many episodes: let row-group statistics skip the others.
                filters = [(EPISODE_INDEX, "=", episode.index)] if self.version == "v3.0" else None
                f.seek(0)
                table = pq.read_table(f, columns=columns + vectors, filters=filters)
        except FileNotFoundError:
            raise EpisodeError("data file is missing", file=path, episode=episode.index) from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise EpisodeError(f"data file is not valid parquet: {exc}", file=path, episode=episode.index) from None
        if table.num_rows == 0:
            raise EpisodeError("episode is empty: no frames in the data file", file=path, episode=episode.index)
        if table.num_rows != episode.length:
            raise EpisodeError(
                f"data file has {table.num_rows} frames but the episode metadata says length {episode.length}",
                file=path,
                episode=episode.index,
            )
        table = table.sort_by(FRAME_INDEX)
        frames = EpisodeFrames(
            timestamp=table.column(TIMESTAMP).to_numpy().astype(np.float64),
            frame_index=table.column(FRAME_INDEX).to_numpy().astype(np.int64),
            index=table.column(INDEX).to_numpy().astype(np.int64),
        )
        if not np.array_equal(frames.frame_index, np.arange(len(frames))):
            raise EpisodeError("frame_index is not 0..N-1 without gaps", file=path, episode=episode.index)
        if problem := timestamp_problem(frames.timestamp, self.fps):
            raise EpisodeError(problem, file=path, episode=episode.index)
        for key in vectors:
            values = _stack_vectors(table.column(key), key, int(np.prod(self.features[key]["shape"])), path, episode.index)
            if key == STATE_KEY:
                frames.state = values
            else:
                frames.action = values
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
        """Frames by timestamp, decoding the mp4 once, in order."""
        ref = episode.locator[camera]
        local = fsx.local_path(self.fs, ref.path)
        if local is None and not self.fs.exists(ref.path) or local is not None and not os.path.exists(local):
            raise EpisodeError(f"video file for camera {camera!r} is missing", file=ref.path, episode=episode.index)
        opener = (lambda: av.open(local)) if local else (lambda: av.open(self.fs.open(ref.path, "rb")))
        yield from decode_at_timestamps(
            opener,
            ref.from_timestamp + np.asarray(table.timestamp[rows], dtype=np.float64),
            size=size,
            tolerance_s=tolerance_s,
            declared=self.camera_shape(camera),
            threads=threads,
            file=ref.path,
            episode=episode.index,
        )


def _stack_vectors(column: pa.ChunkedArray, key: str, dim: int, path: str, episode: int) -> np.ndarray:
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if dim and np.any(lengths != dim):
        bad = int(np.argmax(lengths != dim))
        raise EpisodeError(
            f"feature {key!r} has {lengths[bad]} values at frame {bad} but meta/info.json declares {dim}",
            file=path,
            episode=episode,
        )
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(len(lengths), -1)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


# -- writing ----------------------------------------------------------------------------------

_REALTIME = (os.SCHED_FIFO, os.SCHED_RR)


def _drop_realtime_scheduling() -> None:
    """Put every real-time thread of this process back on the normal scheduler.

    SVT-AV1 switches the thread that starts an encoder to SCHED_FIFO priority 99 wherever it may
    (as root, e.g. in most containers), and the encoder's worker threads inherit it, as does
    every process forked later. Busy real-time threads can starve everything else on the node
    (a CI run in which Triton's Python stub missed its health checks had such a render beside it).
    """
    for tid in os.listdir("/proc/self/task"):
        try:
            if os.sched_getscheduler(int(tid)) in _REALTIME:
                os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))
        except OSError:  # the thread has exited meanwhile
            pass


@dataclass
class _VideoFile:
    container: av.container.OutputContainer
    stream: av.video.stream.VideoStream
    frames: int = 0


@dataclass
class LeRobotV3Writer:
    """Write a LeRobot v3.0 dataset episode by episode (AV1 video, many episodes per file).

    Call `add_episode` for each episode, then `close()`; nothing is readable before close.
    """

    root: str
    fps: int
    robot_type: str
    cameras: dict[str, tuple[int, int]]  # camera key -> (height, width)
    state_dim: int
    action_dim: int
    episodes_per_file: int = 1000
    crf: int = 30
    _tasks: dict[str, int] = field(default_factory=dict)
    _episodes: list[dict] = field(default_factory=list)
    _rows: list[pa.Table] = field(default_factory=list)
    _videos: dict[str, _VideoFile] = field(default_factory=dict)
    _frames_total: int = 0

    def __post_init__(self):
        os.makedirs(self.root, exist_ok=False)
        # a process started real-time on purpose (chrt) keeps it; the encoder's switch is undone
        self._undo_realtime = os.sched_getscheduler(0) not in _REALTIME

    @property
    def _file_index(self) -> int:
        return len(self._episodes) // self.episodes_per_file

    def _video_path(self, camera: str, file_index: int) -> str:
        return f"videos/{camera}/chunk-000/file-{file_index:03d}.mp4"

    def _open_video(self, camera: str) -> _VideoFile:
        video = self._videos.get(camera)
        if video is None:
            path = os.path.join(self.root, self._video_path(camera, self._file_index))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            container = av.open(path, "w")
            stream = container.add_stream("libsvtav1", rate=self.fps)
            stream.height, stream.width = self.cameras[camera]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(self.crf), "g": "2", "preset": "8"}
            video = self._videos[camera] = _VideoFile(container, stream)
        return video

    def _close_video(self, camera: str) -> None:
        video = self._videos.pop(camera)
        for packet in video.stream.encode():
            video.container.mux(packet)
        video.container.close()

    def add_episode(
        self,
        images: dict[str, np.ndarray],
        state: np.ndarray,
        action: np.ndarray,
        task: str,
    ) -> int:
        """Append one episode; images[camera] is uint8 (N, H, W, 3). Returns its index."""
        length = len(state)
        if length == 0:
            raise ValueError("cannot write an empty episode")
        index = len(self._episodes)
        if index and index % self.episodes_per_file == 0:
            for camera in list(self._videos):  # roll over to the next file
                self._close_video(camera)
        task_index = self._tasks.setdefault(task, len(self._tasks))
        record = {
            EPISODE_INDEX: index,
            TASKS: [task],
            LENGTH: length,
            "data/chunk_index": 0,
            "data/file_index": self._file_index,
            "dataset_from_index": self._frames_total,
            "dataset_to_index": self._frames_total + length,
        }
        for camera, frames in images.items():
            if frames.shape != (length, *self.cameras[camera], 3) or frames.dtype != np.uint8:
                raise ValueError(f"camera {camera}: expected uint8 {(length, *self.cameras[camera], 3)}, got {frames.dtype} {frames.shape}")
            video = self._open_video(camera)
            record[f"videos/{camera}/chunk_index"] = 0
            record[f"videos/{camera}/file_index"] = self._file_index
            record[f"videos/{camera}/from_timestamp"] = video.frames / self.fps
            for frame in frames:
                av_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                av_frame.pts = video.frames  # in 1/fps units; the muxer rescales
                av_frame.time_base = Fraction(1, self.fps)
                for packet in video.stream.encode(av_frame):
                    video.container.mux(packet)
                video.frames += 1
            record[f"videos/{camera}/to_timestamp"] = video.frames / self.fps
        if self._undo_realtime:  # the encoder starts on the first frame it gets
            _drop_realtime_scheduling()
        record["meta/episodes/chunk_index"] = 0
        record["meta/episodes/file_index"] = 0
        self._episodes.append(record)
        self._rows.append(
            pa.table(
                {
                    STATE_KEY: _fixed_list(state),
                    ACTION_KEY: _fixed_list(action),
                    TIMESTAMP: pa.array(np.arange(length, dtype=np.float32) / np.float32(self.fps)),
                    FRAME_INDEX: pa.array(np.arange(length, dtype=np.int64)),
                    EPISODE_INDEX: pa.array(np.full(length, index, dtype=np.int64)),
                    INDEX: pa.array(np.arange(self._frames_total, self._frames_total + length, dtype=np.int64)),
                    TASK_INDEX: pa.array(np.full(length, task_index, dtype=np.int64)),
                }
            )
        )
        self._frames_total += length
        return index

    def close(self) -> None:
        for camera in list(self._videos):
            self._close_video(camera)
        if not self._episodes:
            raise ValueError("no episodes were added")
        by_file: dict[int, list[pa.Table]] = {}
        for record, rows in zip(self._episodes, self._rows):
            by_file.setdefault(record["data/file_index"], []).append(rows)
        for file_index, tables in by_file.items():
            path = os.path.join(self.root, f"data/chunk-000/file-{file_index:03d}.parquet")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(pa.concat_tables(tables), path)
        os.makedirs(os.path.join(self.root, "meta/episodes/chunk-000"), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._episodes), os.path.join(self.root, "meta/episodes/chunk-000/file-000.parquet"))
        tasks = pd.DataFrame({TASK_INDEX: list(self._tasks.values())}, index=list(self._tasks.keys()))
        tasks.to_parquet(os.path.join(self.root, "meta/tasks.parquet"))
        all_rows = pa.concat_tables(self._rows)
        stats = {key: _vector_stats(all_rows.column(key)) for key in (STATE_KEY, ACTION_KEY)}
        with open(os.path.join(self.root, "meta/stats.json"), "w") as f:
            json.dump(stats, f, indent=2)
        with open(os.path.join(self.root, "meta/info.json"), "w") as f:
            json.dump(self._info(), f, indent=4)

    def _info(self) -> dict:
        scalar = lambda dtype: {"dtype": dtype, "shape": [1], "names": None}  # noqa: E731
        features = {
            camera: {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": "av1",
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "has_audio": False,
                },
            }
            for camera, (h, w) in self.cameras.items()
        }
        features[STATE_KEY] = {"dtype": "float32", "shape": [self.state_dim], "names": None}
        features[ACTION_KEY] = {"dtype": "float32", "shape": [self.action_dim], "names": None}
        features.update(
            {
                TIMESTAMP: scalar("float32"),
                FRAME_INDEX: scalar("int64"),
                EPISODE_INDEX: scalar("int64"),
                INDEX: scalar("int64"),
                TASK_INDEX: scalar("int64"),
            }
        )
        return {
            "codebase_version": "v3.0",
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self._frames_total,
            "total_tasks": len(self._tasks),
            "chunks_size": 1000,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            FPS: self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features,
        }


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    values = np.asarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _vector_stats(column: pa.ChunkedArray) -> dict:
    values = np.stack(column.to_numpy(zero_copy_only=False)).astype(np.float64)
    return {
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "count": [len(values)],
    }
