"""Ground-truth progress labels that come with benchmark datasets (REFERENCE §2).

One row per frame; `kind` is expert | hesitation | retry | failed and [seg_start, seg_end] is
the non-progress segment in frames (-1 for expert episodes; for a failed episode it runs from
the frame where the work stops to the last frame).
"""

from __future__ import annotations

import pyarrow as pa

from schemas.labels import EPISODE_INDEX, FRAME_INDEX  # keyed as the benchmark dataset's frames

# Column names (besides EPISODE_INDEX and FRAME_INDEX).
GT_PROGRESS = "gt_progress"
KIND = "kind"
ENV = "env"
SEG_START = "seg_start"
SEG_END = "seg_end"

KINDS = ("expert", "hesitation", "retry", "failed")
# Kinds whose episodes complete the task (the rest are failures, scored by Failure-AUROC).
SUCCESS_KINDS = ("expert", "hesitation", "retry")

GROUND_TRUTH = pa.schema(
    [
        pa.field(EPISODE_INDEX, pa.int64(), nullable=False),
        pa.field(FRAME_INDEX, pa.int64(), nullable=False),
        pa.field(GT_PROGRESS, pa.float64(), nullable=False),
        pa.field(KIND, pa.string(), nullable=False),
        pa.field(ENV, pa.string(), nullable=False),
        pa.field(SEG_START, pa.int64(), nullable=False),
        pa.field(SEG_END, pa.int64(), nullable=False),
    ],
    metadata={"wvm.table": "ground_truth"},
)

# File name convention: a dataset directory `X` has its labels in `X.labels.parquet` beside it.
LABELS_SUFFIX = ".labels.parquet"
