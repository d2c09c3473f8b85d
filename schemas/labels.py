"""Value labels: what `wvm relabel` writes (see schemas/README.md).

    <dst>/wvm_labels.json                         format + schema_version of this directory
    <dst>/zarr.json                               root Zarr group, attrs: format + schema_version
    <dst>/wvm_progress.parquet                    RA-BC sidecar of the latest published model
    <dst>/latest.json                             which model version is published (written last)
    <dst>/versions/<model_key>/                   one directory per model version; never shared
        model.json                                version, checkpoint hash, code version
        progress/<partition_id>/<run_id>/progress Zarr float32 (N,) aligned row for row with the
                                                  episode store partition (or a source block)
        frames.parquet/part-<partition>.parquet   FRAMES rows, one file per partition
        episodes/part-<partition>.parquet         EPISODES rows: the partition's commit record
        sidecar/part-<partition>.parquet          SIDECAR rows of the partition
        episodes.parquet                          all EPISODES rows (consolidated per run)
        wvm_progress.parquet                      LeRobot RA-BC sidecar (consolidated per run)
        weights.json                              dataset-level weight parameters (top-70% cut)
        finalize_index.json                       finalize's bookkeeping: the cut each frames part
                                                  holds and the sidecar parts last consolidated,
                                                  with their file tokens (a cache; parts are truth)
        failures.parquet                          dead-letter table (schemas.episode_store.FAILURES)

Every directory on the way to a progress array (versions/, versions/<model_key>/, progress/,
progress/<partition_id>/) is a Zarr group, so zarr and xarray can walk from <dst>.
"""

from __future__ import annotations

import re

import pyarrow as pa

from schemas.episode_store import ATTR_CAMERA as ATTR_CAMERA  # the same attribute key here
from schemas.episode_store import FAILURES_FILE as FAILURES_FILE  # a version's dead-letter table (FAILURES)
from schemas.episode_store import (  # columns the label tables share with the episode store
    ATTR_FORMAT,
    ATTR_SCHEMA_VERSION,
    DIM_FRAME,
    EMBODIMENT,
    EPISODE_ID,
    FPS,
    FRAME_INDEX,
    LENGTH,
    PARTITION_ID,
    RUN_ID,
    SOURCE_INDEX,
    SOURCE_URI,
    TASK,
    TIMESTAMP,
)

LABELS_FORMAT = "wvm-labels"
LABELS_SCHEMA_VERSION = 3  # 2: episodes carry ood_score and trusted (model v2); 3: success_probability
# Older directories this wvm reads, and upgrades (marker and root group) when a run writes to
# them: their episodes parts read each EPISODES column added since as EPISODES_ADDED says.
UPGRADES_FROM = (2,)

ROOT_MARKER = "wvm_labels.json"
LATEST_POINTER = "latest.json"
VERSIONS_DIR = "versions"
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.json"
FINALIZE_INDEX = "finalize_index.json"
PROGRESS_DIR = "progress"
PROGRESS_ARRAY = "progress"
FRAMES_DIR = "frames.parquet"
EPISODE_PARTS_DIR = "episodes"
SIDECAR_PARTS_DIR = "sidecar"
EPISODES_FILE = "episodes.parquet"
SIDECAR_FILE = "wvm_progress.parquet"

ROOT_ATTRS = {ATTR_FORMAT: LABELS_FORMAT, ATTR_SCHEMA_VERSION: LABELS_SCHEMA_VERSION}  # ROOT_MARKER's and the root group's

# The progress array: one row per frame of the episode-store partition, hence its dimension.
PROGRESS_FORMAT = "wvm-labels-progress"  # attrs of the group holding one progress array
PROGRESS_DIMS = (DIM_FRAME,)
PROGRESS_GROUP_ATTRS = {ATTR_FORMAT: PROGRESS_FORMAT, ATTR_SCHEMA_VERSION: LABELS_SCHEMA_VERSION}
PROGRESS_ATTRIBUTES = {"units": "progress in [0, 1]", "description": "predicted task progress V(t); NaN: not labelled"}

# Policy-extraction defaults (REFERENCE §3).
ADVANTAGE_HORIZON = 10
AWR_TAU = 10.0
AWR_DELTA = 2.0

# The top-70 % cut: w_top70 = 1[A >= c]. Incremental rule (pipelines.labels_store.finalize):
# - every frames part records in its Parquet metadata (TOP70_KEY) the cut c its w_top70 was
#   computed with, and w_top70 == 1[advantage >= c] (float32 comparison) for each of its frames;
# - every episodes part (a partition's commit record) carries in its Parquet metadata
#   (HISTOGRAM_KEY) the histogram of its partition's advantages (fixed 1e-4 bins over [-1, 1]:
#   summaries add up exactly);
# - after each run, the dataset-level cut c* (the top TOP_FRACTION of all frames of the version)
#   comes from the sum of the summaries, without reading frames parts;
# - the parts keep their stored cuts while the fraction of all frames that the stored cuts keep
#   (per partition, the histogram mass at or above its own cut; parts about to be rewritten
#   counted at c*) stays within TOP_TOLERANCE of TOP_FRACTION (the upper bound is raised to what
#   c* itself keeps when frames tied in c*'s bin put that above TOP_FRACTION): a run that adds a
#   little data rewrites no old part. Outside it, every part whose cut is not c* is rewritten
#   with c*;
# - a part the stage just wrote (partition-local cut, TOP70_PROVISIONAL_KEY set), a part that
#   loses rows (episodes the source no longer has) and a part with no recorded cut always get c*.
# weights.json says c* (top70_threshold), the tolerance, the fraction kept as the parts stand
# (kept_fraction) and the range of cuts in use.
TOP_FRACTION = 0.7
TOP_TOLERANCE = 0.01  # of all frames: 1 percentage point
TOP70_KEY = b"wvm.top70_threshold"  # frames part metadata: the cut its w_top70 was computed with
TOP70_PROVISIONAL_KEY = b"wvm.top70_provisional"  # frames part metadata: b"1" until finalize sets c*
HISTOGRAM_KEY = b"wvm.advantage_histogram"  # episodes part metadata: JSON AdvantageHistogram.summary()

# Episode summary thresholds: a frame is flat when its value moves less than a quarter of the
# per-frame progress of an ideal (linear) episode, falling when it drops by more than that.
FLAT_RATE = 0.25

# Column names of FRAMES, EPISODES and SIDECAR besides those imported above (EPISODE_ID, TASK,
# FRAME_INDEX, SOURCE_INDEX = "index", ...: one name per column across all our tables).
EPISODE_INDEX = "episode_index"  # the source's episode index (LeRobot's name, as the sidecar needs)
PROGRESS = "progress"
ADVANTAGE = "advantage"
W_BINARY = "w_binary"
W_TOP70 = "w_top70"
W_AWR = "w_awr"
WEIGHT_COLUMNS = (W_BINARY, W_TOP70, W_AWR)
CAMERA = "camera"  # the camera the model labelled from
FINAL_PROGRESS = "final_progress"
MAX_PROGRESS = "max_progress"
MONOTONICITY = "monotonicity"
FLAT_FRACTION = "flat_fraction"
FALLING_FRACTION = "falling_fraction"
QUALITY = "quality"
SUCCESS_PROBABILITY = "success_probability"
OOD_SCORE = "ood_score"
TRUSTED = "trusted"
PROGRESS_PATH = "progress_path"
PROGRESS_OFFSET = "progress_offset"
LABELLED_AT = "labelled_at"
PROGRESS_SPARSE = "progress_sparse"
# The stamps every FRAMES / EPISODES row carries; MODEL_VERSION and CHECKPOINT_HASH (and
# CODE_VERSION) are also the keys of model.json they are copied from.
MODEL_VERSION = "model_version"
CHECKPOINT_HASH = "checkpoint_hash"
CODE_VERSION = "code_version"
SOURCE_FINGERPRINT = "source_fingerprint"
MODEL_IDENTITY = (MODEL_VERSION, CHECKPOINT_HASH)  # what tells model versions apart
# Other keys of model.json (with the stamps above) and of latest.json (with model.json's).
CREATED_AT = "created_at"
HORIZON = "advantage_horizon"
LATEST_MODEL_KEY = "model_key"

_STAMPS = [
    pa.field(MODEL_VERSION, pa.string(), nullable=False),
    pa.field(CHECKPOINT_HASH, pa.string(), nullable=False),
    pa.field(CODE_VERSION, pa.string(), nullable=False),
    pa.field(SOURCE_FINGERPRINT, pa.string(), nullable=False),
]

FRAMES = pa.schema(
    [
        pa.field(EPISODE_ID, pa.string(), nullable=False),
        pa.field(EPISODE_INDEX, pa.int64(), nullable=False),
        pa.field(FRAME_INDEX, pa.int64(), nullable=False),
        pa.field(SOURCE_INDEX, pa.int64(), nullable=False),  # the source's global frame index
        pa.field(TIMESTAMP, pa.float64(), nullable=False),
        pa.field(PROGRESS, pa.float32(), nullable=False),
        pa.field(ADVANTAGE, pa.float32(), nullable=False),
        pa.field(W_BINARY, pa.float32(), nullable=False),
        pa.field(W_TOP70, pa.float32(), nullable=False),
        pa.field(W_AWR, pa.float32(), nullable=False),
        *_STAMPS,
    ],
    metadata={"wvm.table": "frames", "wvm.schema_version": str(LABELS_SCHEMA_VERSION)},
)

# An episode whose frames' mean distance from the training frames is over twice what 99% of
# the training episodes reach is out of the model's distribution: its labels are kept, flagged untrusted.
OOD_TRUST_LIMIT = 2.0
# The QC report counts an episode whose success probability is under this as judged failed.
JUDGED_FAILED_BELOW = 0.5

EPISODES = pa.schema(
    [
        pa.field(EPISODE_ID, pa.string(), nullable=False),
        pa.field(EPISODE_INDEX, pa.int64(), nullable=False),
        pa.field(SOURCE_URI, pa.string(), nullable=False),
        pa.field(TASK, pa.string(), nullable=False),
        pa.field(EMBODIMENT, pa.string(), nullable=False),
        pa.field(CAMERA, pa.string(), nullable=False),  # the camera the model labelled from
        pa.field(LENGTH, pa.int64(), nullable=False),
        pa.field(FPS, pa.float64(), nullable=False),
        pa.field(FINAL_PROGRESS, pa.float32(), nullable=False),
        pa.field(MAX_PROGRESS, pa.float32(), nullable=False),
        pa.field(MONOTONICITY, pa.float32(), nullable=False),
        pa.field(FLAT_FRACTION, pa.float32(), nullable=False),
        pa.field(FALLING_FRACTION, pa.float32(), nullable=False),
        # the model's probability that the episode succeeded (schemas/inference.py SUCCESS;
        # NaN for a model without one); QUALITY is built on it
        pa.field(SUCCESS_PROBABILITY, pa.float32(), nullable=False),
        pa.field(QUALITY, pa.float32(), nullable=False),
        # how unlike the model's training frames this episode's frames are (schemas/inference.py
        # OOD); above OOD_TRUST_LIMIT the labels are flagged as not to be trusted
        pa.field(OOD_SCORE, pa.float32(), nullable=False),
        pa.field(TRUSTED, pa.bool_(), nullable=False),
        pa.field(PARTITION_ID, pa.string(), nullable=False),
        pa.field(PROGRESS_PATH, pa.string(), nullable=False),  # Zarr group of the progress array
        pa.field(PROGRESS_OFFSET, pa.int64(), nullable=False),  # first row of the episode there
        pa.field(RUN_ID, pa.string(), nullable=False),
        pa.field(LABELLED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
        *_STAMPS,
    ],
    metadata={"wvm.table": "episodes", "wvm.schema_version": str(LABELS_SCHEMA_VERSION)},
)

# EPISODES columns added after schema version 2, and what parts written before them read as.
EPISODES_ADDED = {SUCCESS_PROBABILITY: float("nan")}

# Exactly the columns LeRobot's RA-BC sample weighting reads (REFERENCE §5).
SIDECAR = pa.schema(
    [
        pa.field(SOURCE_INDEX, pa.int64(), nullable=False),
        pa.field(EPISODE_INDEX, pa.int64(), nullable=False),
        pa.field(FRAME_INDEX, pa.int64(), nullable=False),
        pa.field(PROGRESS_SPARSE, pa.float32(), nullable=False),
    ]
)


def model_key(version: str, checkpoint_hash: str) -> str:
    """The directory name of one model version's labels."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{version}-{checkpoint_hash}")
