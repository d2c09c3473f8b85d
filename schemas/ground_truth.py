"""Ground-truth progress labels that come with benchmark datasets (REFERENCE §2).

One row per frame; `kind` is expert | hesitation | retry | failed and [seg_start, seg_end] is
the non-progress segment in frames (-1 for expert episodes; for a failed episode it runs from
the frame where the work stops to the last frame).
"""

from __future__ import annotations

import pyarrow as pa

KINDS = ("expert", "hesitation", "retry", "failed")
# Kinds whose episodes complete the task (the rest are failures, scored by Failure-AUROC).
SUCCESS_KINDS = ("expert", "hesitation", "retry")

GROUND_TRUTH = pa.schema(
    [
        pa.field("episode_index", pa.int64(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=False),
        pa.field("gt_progress", pa.float64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("env", pa.string(), nullable=False),
        pa.field("seg_start", pa.int64(), nullable=False),
        pa.field("seg_end", pa.int64(), nullable=False),
    ],
    metadata={"wvm.table": "ground_truth"},
)

# File name convention: a dataset directory `X` has its labels in `X.labels.parquet` beside it.
LABELS_SUFFIX = ".labels.parquet"
