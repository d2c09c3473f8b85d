"""The inference contract: what a batch of windows looks like on the wire (Triton) and in
process. Both backends check requests with `check_window_batch`.

Inputs
  FRAMES        UINT8  [B, K, H, W, 3]      K = 2 + h: the episode's first frame (anchor), the
                                            prefix frame, h current frames; RGB. K = 1 + h for
                                            models without an anchor (config parameter anchor_frame)
  TASK          BYTES  [B, 1]               task text, UTF-8
  PREFIX_VALUE  FP32   [B, 1]               value of the prefix frame, in [0, 1]
Outputs
  VALUES        FP32   [B, h]               values of the h current frames, in [0, 1]
  MODEL_VERSION BYTES  [B, 1]               "<version>@<checkpoint sha256[:16]>" of the model
"""

from __future__ import annotations

import numpy as np

CONTRACT_VERSION = 1
MODEL_NAME = "wvm"

FRAMES = "FRAMES"
TASK = "TASK"
PREFIX_VALUE = "PREFIX_VALUE"
VALUES = "VALUES"
MODEL_VERSION = "MODEL_VERSION"

MAX_BATCH = 64  # windows per request (config.pbtxt max_batch_size)
MAX_SIDE = 1024  # pixels; frames are downscaled by the model anyway
MIN_SIDE = 8
MAX_TASK_BYTES = 1024


def format_model_version(version: str, checkpoint_hash: str) -> str:
    return f"{version}@{checkpoint_hash}"


def parse_model_version(answer: str) -> tuple[str, str]:
    version, _, checkpoint_hash = answer.rpartition("@")
    return (version, checkpoint_hash) if version else (answer, "")


class ContractError(ValueError):
    """A batch of windows that violates the contract."""


def check_window_batch(frames: np.ndarray, texts, prefix: np.ndarray, window_frames: int, max_batch: int | None = MAX_BATCH) -> None:
    """Raise ContractError naming the first violation. Callers that split batches themselves
    (the handlers) pass max_batch=None; the server checks every request against MAX_BATCH."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ContractError(f"{FRAMES} must be uint8, got {getattr(frames, 'dtype', type(frames))}")
    if frames.ndim != 5:
        raise ContractError(f"{FRAMES} must have rank 5 [B, {window_frames}, H, W, 3], got shape {list(frames.shape)}")
    b, k, h, w, c = frames.shape
    if k != window_frames or c != 3:
        raise ContractError(f"{FRAMES} must be [B, {window_frames}, H, W, 3], got {list(frames.shape)}")
    if b < 1 or (max_batch is not None and b > max_batch):
        raise ContractError(f"batch of {b} windows; allowed 1..{max_batch}")
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ContractError(f"frame size {h}x{w} outside {MIN_SIDE}..{MAX_SIDE} pixels")
    if len(texts) != b:
        raise ContractError(f"{TASK} has {len(texts)} entries for {b} windows")
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise ContractError(f"{TASK} must be non-empty text")
        if len(text.encode()) > MAX_TASK_BYTES:
            raise ContractError(f"{TASK} longer than {MAX_TASK_BYTES} bytes")
    prefix = np.asarray(prefix)
    if prefix.shape != (b,) or prefix.dtype != np.float32:
        raise ContractError(f"{PREFIX_VALUE} must be float32 with one value per window, got {prefix.dtype} {list(prefix.shape)}")
    if not np.all(np.isfinite(prefix)) or np.any(prefix < 0) or np.any(prefix > 1):
        raise ContractError(f"{PREFIX_VALUE} must be finite and in [0, 1]")
