"""The inference contract: what a batch of episode requests looks like on the wire (Triton)
and in process. Both backends check requests with `check_window_batch`.

One request item is one episode read at the model's N samples (config parameter
samples_per_episode; pipelines.windows.sample_positions says which frames).

Inputs
  FRAMES        UINT8  [B, N, H, W, 3]      the episode's sampled frames in time order, RGB;
                                            an episode with fewer samples pads after them
  TASK          BYTES  [B, 1]               task text, UTF-8
  LENGTH        INT32  [B, 1]               how many leading frames are real samples (2..N, or 1
                                            for a one-frame episode); the rest is padding
  STATE         FP32   [B, N, S]            optional: the robot's state (observation.state) at
                                            each sample, zero padded to the batch's widest; all
                                            NaN for an episode recorded without one
Outputs
  VALUES        FP32   [B, N]               progress at each sample, in [0, 1] (0 at padding)
  OOD           FP32   [B, 1]               out-of-distribution score of the episode's frames:
                                            the mean distance of its frames from the training
                                            frames over the distance 99% of training episodes
                                            (or frames) stay under (> 1: unlike the training
                                            data; labels less trustworthy); the distance is
                                            the model's ood_score (wvm/model.py WVMConfig)
  SUCCESS       FP32   [B, 1]               the model's probability that the episode succeeded
                                            (the success judgement that scales its values;
                                            NaN for a model without one)
  MODEL_VERSION BYTES  [B, 1]               "<version>@<checkpoint sha256[:16]>" of the model
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

CONTRACT_VERSION = 3  # 1: windows of [anchor,] prefix + h frames with a PREFIX_VALUE; 2: no SUCCESS
MODEL_NAME = "wvm"

FRAMES = "FRAMES"
TASK = "TASK"
LENGTH = "LENGTH"
STATE = "STATE"
VALUES = "VALUES"
OOD = "OOD"
SUCCESS = "SUCCESS"
MODEL_VERSION = "MODEL_VERSION"

# Parameters of the Triton model config (config.pbtxt `parameters`, string values). The .pbtxt
# files spell them as text; Python code (model.py, `wvm serve`, the client) uses these names.
PARAM_CHECKPOINT = "checkpoint"  # empty: the checkpoint shipped with wvm; relative paths: to the repository
PARAM_DEVICE = "device"  # cpu | cuda (a GPU instance group overrides it with its device)
PARAM_THREADS = "threads"  # torch CPU threads per instance; 0: torch's default
PARAM_SAMPLES_PER_EPISODE = "samples_per_episode"  # request geometry N; checked against the checkpoint

MAX_BATCH = 64  # episodes per request (config.pbtxt max_batch_size)
MAX_SIDE = 1024  # pixels; frames are downscaled by the model anyway
MIN_SIDE = 8
MAX_TASK_BYTES = 1024
MAX_STATE_WIDTH = 1024


def config_parameters(config: dict) -> dict[str, str]:
    """The `parameters` of a model config in JSON form: {key: string value}. Triton hands the
    Python backend `string_value`; the gRPC client's get_model_config(as_json=True) `stringValue`."""
    return {k: v.get("stringValue", v.get("string_value")) for k, v in config.get("parameters", {}).items()}


def format_model_version(version: str, checkpoint_hash: str) -> str:
    return f"{version}@{checkpoint_hash}"


def parse_model_version(answer: str) -> tuple[str, str]:
    version, _, checkpoint_hash = answer.rpartition("@")
    return (version, checkpoint_hash) if version else (answer, "")


class EpisodeAnswers(NamedTuple):
    """A batch's answers as numpy arrays, whichever backend gave them."""

    values: np.ndarray  # float32 (B, N): VALUES
    ood: np.ndarray  # float32 (B,): OOD
    success: np.ndarray  # float32 (B,): SUCCESS


class ContractError(ValueError):
    """A batch of episode requests that violates the contract."""


def check_window_batch(frames: np.ndarray, texts, lengths: np.ndarray, window_frames: int, max_batch: int | None = MAX_BATCH) -> None:
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
        raise ContractError(f"batch of {b} episodes; allowed 1..{max_batch}")
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ContractError(f"frame size {h}x{w} outside {MIN_SIDE}..{MAX_SIDE} pixels")
    if len(texts) != b:
        raise ContractError(f"{TASK} has {len(texts)} entries for {b} episodes")
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise ContractError(f"{TASK} must be non-empty text")
        if len(text.encode()) > MAX_TASK_BYTES:
            raise ContractError(f"{TASK} longer than {MAX_TASK_BYTES} bytes")
    lengths = np.asarray(lengths)
    if lengths.shape != (b,) or lengths.dtype != np.int32:
        raise ContractError(f"{LENGTH} must be int32 with one count per episode, got {lengths.dtype} {list(lengths.shape)}")
    if np.any(lengths < 1) or np.any(lengths > window_frames):
        raise ContractError(f"{LENGTH} must be in 1..{window_frames}")


def check_state_batch(states: np.ndarray | None, batch: int, window_frames: int) -> None:
    """Raise ContractError unless `states` is None or a valid STATE input for `batch` episodes."""
    if states is None:
        return
    if not isinstance(states, np.ndarray) or states.dtype != np.float32:
        raise ContractError(f"{STATE} must be float32, got {getattr(states, 'dtype', type(states))}")
    if states.ndim != 3 or states.shape[:2] != (batch, window_frames) or not 1 <= states.shape[2] <= MAX_STATE_WIDTH:
        raise ContractError(f"{STATE} must be [{batch}, {window_frames}, S] with S in 1..{MAX_STATE_WIDTH}, got {list(states.shape)}")
    missing = np.isnan(states)
    partial = missing.any(axis=(1, 2)) & ~missing.all(axis=(1, 2))
    if partial.any():
        raise ContractError(f"{STATE} of episode {int(np.argmax(partial))} is partly NaN: NaN means the whole episode has no state")
    if np.isinf(states).any():
        raise ContractError(f"{STATE} has infinite values")


def pad_state(state: np.ndarray | None, rows: int, width: int) -> np.ndarray:
    """One episode's states (rows, S) zero padded to `width` columns, or all NaN when it has none:
    the STATE padding rule, shared by requests and training batches."""
    if state is None:
        return np.full((rows, width), np.nan, np.float32)
    return np.pad(np.asarray(state, np.float32), ((0, 0), (0, width - state.shape[1])))


def stack_states(states: list[np.ndarray | None], window_frames: int) -> np.ndarray | None:
    """Per-episode states at the samples ((N, S_i) or None) -> one STATE input: zero padded to
    the widest, NaN for episodes without; None when no episode has one."""
    if all(s is None for s in states):
        return None
    width = max(s.shape[1] for s in states if s is not None)
    return np.stack([pad_state(s, window_frames, width) for s in states])
