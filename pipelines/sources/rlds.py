"""RLDS / Open X-Embodiment datasets: TFDS builder directories of TFRecord shards, read
without TensorFlow.

Layout (what `tfds` writes, e.g. gs://gresearch/robotics/bridge/0.1.0/):

    <dataset>/<version>/dataset_info.json   name, version, splits (shards and episodes per shard)
    <dataset>/<version>/features.json       the feature tree (image sizes, vector shapes)
    <dataset>/<version>/<name>-<split>.tfrecord-00000-of-00004 ...

Each TFRecord record is one `tf.train.Example` holding one whole episode, its step features
flattened: `steps/observation/image_0` (one encoded JPEG/PNG per step), `steps/action` and
`steps/observation/state` (step-major float lists), `steps/language_instruction` (one text per
step), `steps/is_first`..., plus `episode_metadata/...`.

Why no TensorFlow: tensorflow-datasets + tensorflow-cpu is ~1 GB to install and we only parse
protos. The `tfrecord` package ships the compiled `Example` proto (`tfrecord.example_pb2`,
pure Python on top of protobuf); its own reader only opens local paths, so the TFRecord framing
is read here over fsspec files (local or gs://): 8-byte little-endian length, masked CRC-32C of
the length, payload, masked CRC-32C of the payload, both CRCs checked with google_crc32c.

Episodes: every split's shards in the order of dataset_info.json `splits`, numbered in that
order. TFRecord has no index, so listing reads each shard once, start to end, parsing each
Example for its step count and task, and keeps that in the listing cache
(pipelines/sources/listing_cache.py) while the shard is unchanged: later runs read only new or
changed shards. Each episode's locator keeps (shard, byte offset) so read_frames / decode seek
straight to its one record.

Timing: RLDS has no clock. fps comes from the constructor, else from a table of published
Open X-Embodiment control rates by dataset name, else 10 Hz; step k is at k / fps.

Cameras: the image features under steps/observation, third-person first (a name with wrist /
hand / gripper goes last; otherwise name order: features.json's order is a proto map's, i.e.
arbitrary). `episode_metadata/has_<camera>` is not used: the Bridge debug set says 0 for cameras that hold
real images, and a camera that is blank in some episodes is still that dataset's data (ingest
stores it as it is; pick the labelling camera with `--camera`). State / action are `steps/observation/state` / `steps/action` when
features.json declares them as tensors (some datasets nest dicts there: then none).

Damaged shards (a cut-short file, a failed CRC): the episode index is a running number, so a
lost record would silently renumber every later episode. Hence:
  - a record whose payload fails its CRC but whose length header is intact: the rest of the
    shard is still found; that one episode is listed (length 0, no task) and read_frames
    raises EpisodeError naming the shard and byte offset;
  - a record cut off by the end of the file (or whose length header fails its CRC) ends the
    shard. When it is the shard's last episode by dataset_info.json `shardLengths` (or the
    file has no shardLengths), it is listed like the above; when episodes after it are lost,
    or a clean shard holds another count than shardLengths, listing raises DatasetError
    naming the shard and the byte offset.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import google_crc32c
import numpy as np
from google.protobuf.message import DecodeError
from PIL import Image, UnidentifiedImageError
from tfrecord import example_pb2

from pipelines import fs as fsx
from pipelines.errors import DatasetError, EpisodeError
from pipelines.sources import listing_cache
from pipelines.sources.base import DEFAULT_TOLERANCE_S, EpisodeFrames, Source, SourceEpisode

# Control rates (Hz) from the Open X-Embodiment dataset sheet, by dataset_info.json name.
KNOWN_FPS = {
    "bridge": 5.0,
    "bridge_dataset": 5.0,
    "fractal20220817_data": 3.0,
    "kuka": 10.0,
    "taco_play": 15.0,
    "jaco_play": 10.0,
    "berkeley_autolab_ur5": 5.0,
    "language_table": 10.0,
    "toto": 30.0,
    "viola": 20.0,
}
DEFAULT_FPS = 10.0
STATE_KEY = "steps/observation/state"
ACTION_KEY = "steps/action"
TASK_KEYS = ("steps/language_instruction", "steps/observation/natural_language_instruction")
_VECTOR_KEYS = {"state": STATE_KEY, "action": ACTION_KEY}
_WRIST = re.compile(r"wrist|hand|gripper", re.IGNORECASE)
_VERSION = re.compile(r"^\d+(\.\d+)*$")


@dataclass(frozen=True)
class RecordRef:
    """Where one episode's record lives; `damage` says why it cannot be read ("" if intact)."""

    shard: str
    offset: int
    damage: str = ""


class DamagedRecord(Exception):
    """A record that cannot be read; `next_offset` is where the next record starts, when known."""

    def __init__(self, reason: str, next_offset: int | None):
        super().__init__(reason)
        self.next_offset = next_offset


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_record(f, offset: int) -> tuple[bytes, int] | None:
    """(payload, next offset) of the record at `offset`, None at a clean end of file."""
    f.seek(offset)
    header = f.read(12)
    if not header:
        return None
    if len(header) < 12:
        raise DamagedRecord(f"record at byte {offset} is cut off by the end of the file (header of {len(header)} bytes)", None)
    length, length_crc = struct.unpack("<QI", header)
    if masked_crc(header[:8]) != length_crc:
        raise DamagedRecord(f"record at byte {offset} has a length field that fails its CRC", None)
    data, footer = f.read(length), f.read(4)
    end = offset + 12 + length + 4
    if len(data) < length or len(footer) < 4:
        raise DamagedRecord(f"record at byte {offset} is cut off by the end of the file (needs {length + 16} bytes)", None)
    if masked_crc(data) != struct.unpack("<I", footer)[0]:
        raise DamagedRecord(f"record at byte {offset} fails its data CRC", end)
    return data, end


def write_records(f, payloads) -> None:
    """Write TFRecord framing around each payload (used by tests and converters)."""
    for data in payloads:
        length = struct.pack("<Q", len(data))
        f.write(length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data)))


def _values(feature) -> list:
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


_MARKERS = ("dataset_info.json", "features.json")


def _find_builder_dir(fs, path: str) -> str | None:
    """`path` itself when it is a builder directory, else its highest version subdirectory that is."""
    path = path.rstrip("/")
    if all(fs.exists(f"{path}/{name}") for name in _MARKERS):
        return path
    versions = [p.rstrip("/") for p in fs.ls(path, detail=False) if _VERSION.match(p.rstrip("/").rsplit("/", 1)[-1])]
    for version in sorted(versions, key=lambda p: tuple(int(x) for x in p.rsplit("/", 1)[-1].split(".")), reverse=True):
        if all(fs.exists(f"{version}/{name}") for name in _MARKERS):
            return version
    return None


class RLDSSource(Source):
    """Read access to an RLDS (TFDS) dataset: its builder directory or the dataset directory
    above its version directories, at a local path or fsspec URL."""

    name = "rlds"

    @classmethod
    def detect(cls, url: str) -> bool:
        try:
            fs, path = fsx.filesystem(url)
            return _find_builder_dir(fs, path) is not None
        except Exception:  # an unreachable URL is not this format; open_source says what is wrong
            return False

    @classmethod
    def near_miss(cls, url: str) -> tuple[str, str] | None:
        try:
            fs, path = fsx.filesystem(url)
            path = path.rstrip("/")
            candidates = [path, *(p.rstrip("/") for p in fs.ls(path, detail=False) if _VERSION.match(p.rstrip("/").rsplit("/", 1)[-1]))]
            for directory in candidates:
                present = [name for name in _MARKERS if fs.exists(f"{directory}/{name}")]
                if len(present) == 1:
                    missing = next(name for name in _MARKERS if name not in present)
                    return f"{directory}/{missing}", f"{missing} is missing (an RLDS / TFDS builder directory has {' and '.join(_MARKERS)})"
        except Exception:  # unreadable: no diagnosis
            return None
        return None

    def __init__(self, url: str, *, fps: float | None = None):
        self.url = url.rstrip("/")
        self.fs, path = fsx.filesystem(self.url)
        try:
            self.root = _find_builder_dir(self.fs, path) or path.rstrip("/")
        except (FileNotFoundError, NotADirectoryError):
            raise DatasetError("no such directory", file=path) from None
        # the builder (version) directory names the data, however the URL was spelled
        self.uri = fsx.canonical_uri(self.fs.unstrip_protocol(self.root))
        self.info = self._read_json("dataset_info.json")
        features = self._read_json("features.json")
        try:
            steps = features["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]
        except (KeyError, TypeError):
            raise DatasetError("features.json has no RLDS `steps` feature dict", file=self._path("features.json")) from None
        observation = steps.get("observation", {}).get("featuresDict", {}).get("features", {})
        images = {k: f for k, f in observation.items() if str(f.get("pythonClassName", "")).endswith("image_feature.Image")}
        if not images:
            raise DatasetError("features.json declares no image feature under steps/observation", file=self._path("features.json"))
        self._shapes = {}
        for camera, feature in images.items():
            dims = [int(d) for d in feature.get("image", {}).get("shape", {}).get("dimensions", [])]
            if len(dims) != 3 or min(dims) <= 0:
                raise DatasetError(f"image feature {camera!r} has no fixed (height, width, channels) shape: {dims}", file=self._path("features.json"))
            self._shapes[camera] = (dims[0], dims[1])
        self.cameras = sorted(images, key=lambda k: (bool(_WRIST.search(k)), [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)]))
        self._dims = {
            "state": _tensor_dim(observation.get("state")),
            "action": _tensor_dim(steps.get("action")),
        }
        self.embodiment = str(self.info.get("name") or self.root.rsplit("/", 1)[-1])
        self.version = str(self.info.get("version") or self.root.rsplit("/", 1)[-1])
        parent = self.root.rsplit("/", 2)[-2] if self.root.count("/") >= 1 else ""
        self.fps = float(fps or KNOWN_FPS.get(self.embodiment) or KNOWN_FPS.get(parent) or DEFAULT_FPS)
        self._cached: tuple[tuple[RecordRef, str], example_pb2.Example] | None = None  # read_frames, then decode

    def __getstate__(self):  # the parsed-record cache stays in its process
        return {**self.__dict__, "_cached": None}

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def _read_json(self, name: str) -> dict:
        path = self._path(name)
        try:
            with self.fs.open(path, "rb") as f:
                return json.load(f)
        except FileNotFoundError:
            raise DatasetError(f"not an RLDS/TFDS builder directory: {name} is missing", file=path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{name} is not valid JSON: {exc}", file=path) from None

    # -- metadata ---------------------------------------------------------------------------

    def camera_shape(self, camera: str) -> tuple[int, int]:
        return self._shapes[camera]

    def feature_dim(self, key: str) -> int:
        return self._dims[key]

    def _shards(self) -> list[tuple[str, int | None]]:
        """(path, episodes per dataset_info.json or None) of every shard, in split order."""
        info_path = self._path("dataset_info.json")
        file_format = self.info.get("fileFormat", "tfrecord")
        if file_format != "tfrecord":
            raise DatasetError(f"shards are {file_format!r}; only tfrecord is supported", file=info_path)
        shards = []
        try:
            for split in self.info.get("splits", []):
                lengths = [int(n) for n in split.get("shardLengths", [])]
                count = len(lengths) or int(split.get("numShards", 0))
                template = split.get("filepathTemplate") or "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
                for i in range(count):
                    name = template.format(DATASET=self.info["name"], SPLIT=split["name"], FILEFORMAT=file_format, SHARD_X_OF_Y=f"{i:05d}-of-{count:05d}")
                    shards.append((self._path(name), lengths[i] if lengths else None))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise DatasetError(f"dataset_info.json `splits` cannot be read: {exc!r}", file=info_path) from None
        if not shards:
            raise DatasetError("dataset_info.json lists no split with shards", file=info_path)
        return shards

    def episodes(self, *, decode_options: str = "") -> list[SourceEpisode]:
        episodes: list[SourceEpisode] = []
        for shard, expected in self._shards():
            try:
                token = fsx.file_token(self.fs.info(shard))
            except FileNotFoundError:
                raise DatasetError("shard named by dataset_info.json is missing", file=shard) from None
            for ref, steps, task in self._records(shard, token, expected):
                fingerprint = hashlib.sha256(
                    json.dumps([shard, token, ref.offset, self.fps, decode_options]).encode()
                ).hexdigest()[:32]
                episodes.append(SourceEpisode(self.uri, len(episodes), steps, task, fingerprint, shard, locator=ref))
        return episodes

    def _records(self, shard: str, token: str, expected: int | None) -> list[tuple[RecordRef, int, str]]:
        """(locator, steps, task) of every record of a shard: from the listing cache while the
        shard is unchanged (same token), else by reading it whole once."""
        url = self.fs.unstrip_protocol(shard)
        token = f"{token};expected={expected}"  # the checks against dataset_info.json rerun when it changes
        cached = listing_cache.get("rlds-shard", url, token)
        if cached is None:
            cached = [
                [ref.offset, ref.damage, *((self._steps(example), self._task(example)) if example is not None else (0, ""))]
                for ref, example in self._scan(shard, expected)
            ]  # fmt: skip
            listing_cache.put("rlds-shard", url, token, cached)
        return [(RecordRef(shard, int(offset), damage), int(steps), task) for offset, damage, steps, task in cached]

    def _scan(self, shard: str, expected: int | None) -> Iterator[tuple[RecordRef, example_pb2.Example | None]]:
        """Every record of a shard, one at a time: (ref, parsed Example or None when damaged); see
        the module docstring for which damage is one bad episode and which loses the dataset."""
        count, offset = 0, 0
        with self.fs.open(shard, "rb") as f:
            while True:
                try:
                    read = read_record(f, offset)
                except DamagedRecord as damaged:
                    count += 1
                    if damaged.next_offset is None and expected is not None and count < expected:
                        raise DatasetError(
                            f"{damaged}; dataset_info.json expects {expected} episodes in this shard, "
                            f"so {expected - count} after it are lost",
                            file=shard,
                        ) from None
                    yield RecordRef(shard, offset, str(damaged)), None
                    if damaged.next_offset is None:
                        break
                    offset = damaged.next_offset
                    continue
                if read is None:
                    break
                data, end = read
                count += 1
                example = example_pb2.Example()
                try:
                    example.ParseFromString(data)
                except DecodeError as exc:
                    yield RecordRef(shard, offset, f"record at byte {offset} is not a tf.train.Example: {exc}"), None
                else:
                    yield RecordRef(shard, offset), example
                offset = end
        if expected is not None and count != expected:
            raise DatasetError(f"shard holds {count} episodes but dataset_info.json says {expected} (cut short at byte {offset}?)", file=shard)

    def _steps(self, example) -> int:
        features = example.features.feature
        for key in ("steps/is_first", "steps/is_last", *(f"steps/observation/{c}" for c in self.cameras)):
            if key in features:
                return len(_values(features[key]))
        return 0

    def _task(self, example) -> str:
        features = example.features.feature
        for key in TASK_KEYS:
            for text in _values(features[key]) if key in features else []:
                if isinstance(text, bytes) and (text := text.decode("utf-8", "replace").strip()):
                    return text
        return ""

    # -- per-episode data -------------------------------------------------------------------

    def _example(self, episode: SourceEpisode) -> example_pb2.Example:
        ref: RecordRef = episode.locator
        if self._cached and self._cached[0] == (ref, episode.fingerprint):  # fingerprint: the shard is unchanged
            return self._cached[1]
        if ref.damage:
            raise EpisodeError(ref.damage, file=ref.shard, episode=episode.index)
        try:
            with self.fs.open(ref.shard, "rb") as f:
                read = read_record(f, ref.offset)
        except FileNotFoundError:
            raise EpisodeError("shard is missing", file=ref.shard, episode=episode.index) from None
        except DamagedRecord as damaged:
            raise EpisodeError(str(damaged), file=ref.shard, episode=episode.index) from None
        if read is None:
            raise EpisodeError(f"no record at byte {ref.offset} (the shard changed since listing)", file=ref.shard, episode=episode.index)
        example = example_pb2.Example()
        try:
            example.ParseFromString(read[0])
        except DecodeError as exc:
            raise EpisodeError(f"record at byte {ref.offset} is not a tf.train.Example: {exc}", file=ref.shard, episode=episode.index) from None
        self._cached = ((ref, episode.fingerprint), example)
        return example

    def read_frames(self, episode: SourceEpisode) -> EpisodeFrames:
        """Steps at k / fps, with state / action checked against features.json."""
        example, shard = self._example(episode), episode.file
        steps = self._steps(example)
        if steps == 0:
            raise EpisodeError("episode is empty: the record has no steps", file=shard, episode=episode.index)
        if steps != episode.length:
            raise EpisodeError(f"record has {steps} steps but listing found {episode.length} (the shard changed)", file=shard, episode=episode.index)
        if not self._task(example):
            raise EpisodeError(f"episode has no task text in {' / '.join(TASK_KEYS)} (the value model reads it)", file=shard, episode=episode.index)
        features = example.features.feature
        for camera in self.cameras:
            images = len(_values(features[f"steps/observation/{camera}"])) if f"steps/observation/{camera}" in features else 0
            if images != steps:
                raise EpisodeError(f"camera {camera!r} has {images} images for {steps} steps", file=shard, episode=episode.index)
        frame_index = np.arange(steps, dtype=np.int64)
        frames = EpisodeFrames(timestamp=frame_index / self.fps, frame_index=frame_index, index=frame_index.copy())
        for name, key in _VECTOR_KEYS.items():
            dim = self._dims[name]
            if not dim:
                continue
            values = np.asarray(_values(features[key]) if key in features else [], dtype=np.float32)
            if values.size != steps * dim:
                raise EpisodeError(
                    f"feature {key!r} has {values.size} values for {steps} steps but features.json declares {dim} per step",
                    file=shard,
                    episode=episode.index,
                )
            setattr(frames, name, values.reshape(steps, dim))
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
        """Decode the stored JPEG/PNG of each row's step with PIL. Steps have no clock to match,
        so `tolerance_s` does not apply; decoding is cheap, so `threads` is not used."""
        shard = episode.file
        features = self._example(episode).features.feature
        images = _values(features[f"steps/observation/{camera}"]) if f"steps/observation/{camera}" in features else []
        for row in np.asarray(rows, dtype=np.int64):
            step = int(table.frame_index[row])
            if not 0 <= step < len(images):
                raise EpisodeError(f"camera {camera!r} has no image for step {step}", file=shard, episode=episode.index)
            try:
                image = Image.open(io.BytesIO(images[step])).convert("RGB")
            except (UnidentifiedImageError, OSError) as exc:
                raise EpisodeError(f"camera {camera!r}: image of step {step} cannot be decoded: {exc}", file=shard, episode=episode.index) from None
            if (image.height, image.width) != self._shapes[camera]:
                h, w = self._shapes[camera]
                raise EpisodeError(f"camera {camera!r}: image of step {step} is {image.height}x{image.width} but features.json declares {h}x{w}", file=shard, episode=episode.index)
            if size is not None and (image.height, image.width) != tuple(size):
                image = image.resize((size[1], size[0]), Image.Resampling.BOX)
            yield np.asarray(image, dtype=np.uint8)


def _tensor_dim(feature: dict | None) -> int:
    """Width of a per-step vector declared as a Tensor in features.json; 0 otherwise."""
    if not feature or "tensor" not in feature:
        return 0
    dims = [int(d) for d in feature["tensor"].get("shape", {}).get("dimensions", [])]
    return int(np.prod(dims)) if dims and min(dims) > 0 else 0
