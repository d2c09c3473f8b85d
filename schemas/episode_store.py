"""The canonical episode store: a Zarr v3 hierarchy of partitions plus a Parquet manifest.

Layout (see schemas/README.md for the prose version):

    <store>/zarr.json                           root group, attrs: format + schema_version
    <store>/partitions/zarr.json                plain groups: the hierarchy is navigable from
    <store>/partitions/<partition_id>/zarr.json the root (zarr.open_group, xarray.open_datatree)
    <store>/partitions/<partition_id>/<attempt>/    one Zarr group per written partition
                                                attrs: PARTITION_FORMAT, schema_version, fps, ...
        images/<camera_key>   uint8  (N, H, W, 3)  chunks (k, H, W, 3), grouped into shards
        timestamp             float64 (N,)          seconds from episode start (source clock)
        frame_index           int64  (N,)
        index                 int64  (N,)           the source's global frame index
        state                 float32 (N, S)        only when the source has a state
        action                float32 (N, A)        only when the source has actions
        episode_offsets       int64  (E + 1,)       rows [offsets[i], offsets[i+1]) are episode i
    <store>/manifest/<partition_id>.parquet     the commit record of one partition (MANIFEST)
    <store>/failures.parquet                    dead-letter table (FAILURES)

A partition is visible only once its manifest file exists; the manifest is written last and
atomically, so a killed run never leaves a half-visible partition. Readers go through the
manifest: a group found by walking the hierarchy may be an uncommitted attempt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import pyarrow as pa

STORE_FORMAT = "wvm-episode-store"
STORE_SCHEMA_VERSION = 1
PARTITION_FORMAT = "wvm-episode-store-partition"  # attrs of a partition group (not a store root)

# Zarr node names inside a partition group.
IMAGES_GROUP = "images"
TIMESTAMP = "timestamp"
FRAME_INDEX = "frame_index"
SOURCE_INDEX = "index"
STATE = "state"
ACTION = "action"
EPISODE_OFFSETS = "episode_offsets"

# Zarr v3 dimension names (xarray's dims). Arrays of one group that share a name must have the
# same length along it: every per-frame array runs along DIM_FRAME; cameras differ in size, so
# their height and width names carry the camera key; episode_offsets has E + 1 entries.
DIM_FRAME = "frame"
DIM_EPISODE_BOUNDARY = "episode_boundary"
DIM_CHANNEL = "channel"
DIM_STATE = "state_feature"
DIM_ACTION = "action_feature"

DIMENSIONS = {
    TIMESTAMP: (DIM_FRAME,),
    FRAME_INDEX: (DIM_FRAME,),
    SOURCE_INDEX: (DIM_FRAME,),
    STATE: (DIM_FRAME, DIM_STATE),
    ACTION: (DIM_FRAME, DIM_ACTION),
    EPISODE_OFFSETS: (DIM_EPISODE_BOUNDARY,),
}

# Array attributes (CF-style `units` / `description`, read by xarray as attrs).
ATTRIBUTES = {
    TIMESTAMP: {"units": "s", "description": "seconds from episode start (source clock)"},
    FRAME_INDEX: {"description": "frame number within its episode"},
    SOURCE_INDEX: {"description": "the source's global frame index (LeRobot `index`)"},
    STATE: {"description": "observation.state of the source"},
    ACTION: {"description": "action of the source"},
    EPISODE_OFFSETS: {"description": "rows [offsets[i], offsets[i + 1]) are episode i of the partition"},
}
IMAGE_ATTRIBUTES = {"units": "RGB, uint8 0-255", "description": "video frames, one row per frame"}


def image_dims(camera: str) -> tuple[str, str, str, str]:
    return (DIM_FRAME, f"{camera}_height", f"{camera}_width", DIM_CHANNEL)


PARTITIONS_DIR = "partitions"
MANIFEST_DIR = "manifest"
FAILURES_FILE = "failures.parquet"

# Default storage geometry: small chunks keep random access cheap, shards keep the object
# count low. Every shard is written by exactly one task (partial-shard concurrent writes lose
# data), which the store guarantees by giving each partition its own arrays.
FRAMES_PER_CHUNK = 4
CHUNKS_PER_SHARD = 16

# Column names of MANIFEST and FAILURES; the value-label tables (schemas/labels.py) reuse the
# ones they share with these. Spell a column through these names, never as a string.
EPISODE_ID = "episode_id"
SOURCE_URI = "source_uri"
SOURCE_EPISODE_INDEX = "source_episode_index"
SOURCE_FORMAT = "source_format"
TASK = "task"
EMBODIMENT = "embodiment"
FPS = "fps"
LENGTH = "length"
CAMERAS = "cameras"
STATE_DIM = "state_dim"
ACTION_DIM = "action_dim"
FINGERPRINT = "fingerprint"
PARTITION_ID = "partition_id"
PARTITION_PATH = "partition_path"
OFFSET = "offset"
RUN_ID = "run_id"
INGESTED_AT = "ingested_at"
SCHEMA_VERSION = "schema_version"
FILE = "file"  # FAILURES: the file the error is about
STAGE = "stage"
ERROR = "error"
REASON = "reason"
FAILED_AT = "failed_at"

# Attribute keys of the Zarr groups and arrays (store root, partition groups, image arrays; the
# labels directory uses the same). A partition group also carries SOURCE_URI, SOURCE_FORMAT,
# EMBODIMENT, RUN_ID and FPS, named as the columns.
ATTR_FORMAT = "format"
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_CAMERA = "camera"
STORE_ATTRS = {ATTR_FORMAT: STORE_FORMAT, ATTR_SCHEMA_VERSION: STORE_SCHEMA_VERSION}  # of the root group
PARTITION_ATTRS = {ATTR_FORMAT: PARTITION_FORMAT, ATTR_SCHEMA_VERSION: STORE_SCHEMA_VERSION}  # of a partition group

MANIFEST = pa.schema(
    [
        pa.field(EPISODE_ID, pa.string(), nullable=False),
        pa.field(SOURCE_URI, pa.string(), nullable=False),
        pa.field(SOURCE_EPISODE_INDEX, pa.int64(), nullable=False),
        pa.field(SOURCE_FORMAT, pa.string(), nullable=False),
        pa.field(TASK, pa.string(), nullable=False),
        pa.field(EMBODIMENT, pa.string(), nullable=False),
        pa.field(FPS, pa.float64(), nullable=False),
        pa.field(LENGTH, pa.int64(), nullable=False),
        pa.field(CAMERAS, pa.list_(pa.string()), nullable=False),
        pa.field(STATE_DIM, pa.int32(), nullable=False),
        pa.field(ACTION_DIM, pa.int32(), nullable=False),
        pa.field(FINGERPRINT, pa.string(), nullable=False),
        pa.field(PARTITION_ID, pa.string(), nullable=False),
        pa.field(PARTITION_PATH, pa.string(), nullable=False),
        pa.field(OFFSET, pa.int64(), nullable=False),
        pa.field(RUN_ID, pa.string(), nullable=False),
        pa.field(INGESTED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field(SCHEMA_VERSION, pa.int32(), nullable=False),
    ],
    metadata={"wvm.table": "manifest", "wvm.schema_version": str(STORE_SCHEMA_VERSION)},
)

FAILURES = pa.schema(
    [
        pa.field(EPISODE_ID, pa.string(), nullable=False),
        pa.field(SOURCE_URI, pa.string(), nullable=False),
        pa.field(SOURCE_EPISODE_INDEX, pa.int64(), nullable=False),
        pa.field(FILE, pa.string(), nullable=False),
        pa.field(STAGE, pa.string(), nullable=False),
        pa.field(ERROR, pa.string(), nullable=False),
        pa.field(REASON, pa.string(), nullable=False),
        pa.field(RUN_ID, pa.string(), nullable=False),
        pa.field(FAILED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"wvm.table": "failures", "wvm.schema_version": str(STORE_SCHEMA_VERSION)},
)


# On-disk identities: EPISODE_ID values and partition ids (directory and file names of the store
# and of the labels parts). Both are what existing stores hold, so neither formula may change: a
# new episode id makes every stored episode look new (ingested and labelled again), a new
# partition id makes a rerun plan other partitions than the crashed run it should finish.


def _digest(text: str, length: int) -> str:
    """The one hash behind our ids: the first `length` hex digits of SHA-1."""
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def episode_id(source_uri: str, episode_index: int) -> str:
    """Stable episode id: the same source location and episode index always give the same id."""
    return _digest(f"{source_uri}#{int(episode_index)}", 20)


def partition_id(members: Iterable[tuple[str, int, str]]) -> str:
    """Stable partition id from its members' (source_uri, episode_index, fingerprint), in order:
    a rerun after a crash plans the very same partitions, and new episodes land in new ones."""
    return _digest(json.dumps([list(member) for member in members]), 16)
