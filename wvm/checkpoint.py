"""Checkpoints: `model.safetensors` + `config.json` in a directory; never pickle.

A training checkpoint adds `trainer.safetensors` (optimizer moments, RNG state) and
`trainer.json` (step, phase), so a run resumes exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipelines.errors import WvmError
from wvm.model import WVMConfig, build_model

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default"


class CheckpointError(WvmError):
    pass


@dataclass
class LoadedModel:
    model: torch.nn.Module
    config: WVMConfig
    checkpoint_hash: str  # sha256 of model.safetensors, first 16 hex digits
    path: str

    @property
    def version(self) -> str:
        return self.config.version


def file_hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def save_model(directory: str | Path, model: torch.nn.Module, config: WVMConfig) -> str:
    """Write the checkpoint atomically (temp dir, then rename); returns its hash."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt", "wvm.version": config.version})
    (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return file_hash(directory / MODEL_FILE)


def read_config(directory: Path) -> WVMConfig:
    weights, config_path = directory / MODEL_FILE, directory / CONFIG_FILE
    for path in (weights, config_path):
        if not path.exists():
            raise CheckpointError(f"{path}: checkpoint file is missing")
    try:
        return WVMConfig.from_dict(json.loads(config_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{config_path}: invalid model config: {exc}") from None


def _check_shapes(directory: Path, expected: dict[str, tuple], stored: dict[str, tuple], fresh_prefix: str | None) -> None:
    """A config that does not match the weights is an error naming the mismatching tensors."""
    missing = sorted(k for k in set(expected) - set(stored) if not (fresh_prefix and k.startswith(fresh_prefix)))
    unexpected = sorted(set(stored) - set(expected))
    wrong = sorted(k for k in set(expected) & set(stored) if tuple(expected[k]) != tuple(stored[k]))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if wrong:
            details.append("shape mismatch " + ", ".join(f"{k}: weights {tuple(stored[k])} vs config {tuple(expected[k])}" for k in wrong[:5]))
        raise CheckpointError(f"{directory}: weights do not match config.json ({'; '.join(details)})")


def checkpoint_identity(directory: str | Path | None = None) -> tuple[str, str]:
    """(model version, checkpoint hash) of a checkpoint, checked against its config like
    `load_model` does, without loading its weights: the driver of a run needs only this."""
    directory = Path(directory or DEFAULT_CHECKPOINT)
    config = read_config(directory)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    try:
        with safe_open(str(directory / MODEL_FILE), framework="pt") as weights:
            stored = {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{directory / MODEL_FILE}: not a readable safetensors file: {exc}") from None
    _check_shapes(directory, expected, stored, None)
    return config.version, file_hash(directory / MODEL_FILE)


def load_model(directory: str | Path | None = None, device: str = "cpu", fresh_prefix: str | None = None) -> LoadedModel:
    """Load a checkpoint directory (default: the shipped one). `fresh_prefix`: weights under it
    may be missing and keep their initialisation (stage 2 adds value-stream parts that a
    stage-1 checkpoint never trained)."""
    directory = Path(directory or DEFAULT_CHECKPOINT)
    config = read_config(directory)
    weights = directory / MODEL_FILE
    model = build_model(config)
    try:
        state = load_file(str(weights), device=device)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: not a readable safetensors file: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_shapes(directory, expected, {k: tuple(v.shape) for k, v in state.items()}, fresh_prefix)
    model.load_state_dict(state, strict=not fresh_prefix)
    model.to(device).eval()
    return LoadedModel(model, config, file_hash(weights), str(directory))


def save_ensemble(members: list[str | Path], out: str | Path, version: str) -> str:
    """One checkpoint of several trained models of one recipe (wvm.model.EnsembleValueModel):
    they must have one config (but for their version) and one frozen encoder, i.e. stage 2 runs
    with different seeds from the same stage 1. Returns the new checkpoint's hash."""
    if len(members) < 2:
        raise CheckpointError(f"an ensemble needs two or more member checkpoints, got {len(members)}")
    loaded = [load_model(m) for m in members]
    first = loaded[0]
    if first.config.members != 1:
        raise CheckpointError(f"{first.path}: is itself an ensemble; list its members instead")
    reference = {**first.config.to_dict(), "version": ""}
    encoder = first.model.autoencoder.state_dict()
    for other in loaded[1:]:
        differs = sorted(k for k, v in {**other.config.to_dict(), "version": ""}.items() if reference[k] != v)
        if differs:
            raise CheckpointError(f"{other.path}: config differs from {first.path} in {differs}; members must be seeds of one recipe")
        theirs = other.model.autoencoder.state_dict()
        if any(not torch.equal(v, theirs[k]) for k, v in encoder.items()):
            raise CheckpointError(f"{other.path}: frozen encoder differs from {first.path}'s; members must share one stage 1")
    config = WVMConfig.from_dict({**reference, "members": len(loaded), "version": version})
    ensemble = build_model(config)
    ensemble.autoencoder.load_state_dict(encoder)
    for slot, member in zip(ensemble.members, loaded):
        slot.load_state_dict({k: v for k, v in member.model.state_dict().items() if not k.startswith("autoencoder.")})
    return save_model(out, ensemble, config)
