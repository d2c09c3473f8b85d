"""Which model answers a relabel, and the narrow interface pipelines need from it.

`ValueModelHandler` is everything the relabel stage uses of a model: learn its identity, load it,
read its version, checkpoint hash and request geometry, run a batch of episode requests (schemas/inference.py),
close it. The model package (wvm) provides the handlers; pipelines never import it. Instead
`HANDLERS` names each backend's handler class by import path and `ModelSpec.handler()` imports
it when a run starts. That registry is the one place where pipelines point at the model
package, so importing pipelines (and the relabel stage) loads neither wvm nor torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipelines.errors import WvmError
from pipelines.windows import WindowGeometry
from schemas.inference import EpisodeAnswers

# backend -> "module:Class" of its handler, imported only when a handler is built
HANDLERS: dict[str, str] = {
    "local": "wvm.handlers:LocalHandler",  # the checkpoint in-process (torch)
    "triton": "wvm.serving.client:TritonHandler",  # a Triton Inference Server over gRPC
}


class ValueModelHandler(Protocol):
    """A loaded value model (wvm.handlers.ValueModelHandler is the model package's base class)."""

    version: str  # the model version every answer carries
    checkpoint_hash: str
    geometry: WindowGeometry  # what one request looks like (set by `load`)

    def load(self) -> None:
        """Acquire the model (load weights, or connect and check the server)."""
        ...

    def identity(self) -> tuple[str, str]:
        """(version, checkpoint hash) of the model that would answer, without loading it where
        the backend allows (a run's driver needs only this; its workers load the model)."""
        ...

    def answer_batch(self, frames: np.ndarray, texts: list[str], lengths: np.ndarray, states: np.ndarray | None = None) -> EpisodeAnswers:
        """frames uint8 (B, N, H, W, 3): each episode's samples; texts: B task strings; lengths
        int32 (B,): real samples per episode; states: optional float32 (B, N, S) robot state at
        the samples (schemas/inference.py STATE). Returns float32 values (B, N) in [0, 1], each
        episode's out-of-distribution score (B,) and its probability of success (B,)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> ValueModelHandler:
        """`load`, then return the handler."""
        ...

    def __exit__(self, *exc) -> None:
        """`close`."""
        ...


def handler_class(backend: str) -> type[ValueModelHandler]:
    """The handler class registered for `backend` (imported now, not before)."""
    try:
        path = HANDLERS[backend]
    except KeyError:
        raise WvmError(f"unknown model backend {backend!r} ({' | '.join(HANDLERS)})") from None
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelSpec:
    """Which model answers: in-process (`local`) or a Triton server (`triton`)."""

    backend: str = "local"  # a key of HANDLERS: local | triton
    checkpoint: str | None = None  # local: checkpoint directory (default: the shipped one)
    triton_url: str = "127.0.0.1:8001"  # triton: host:gRPC port
    expected_version: str | None = None  # triton: refuse a server with another model
    ready_timeout_s: float = 60.0  # triton: how long to wait for the server to be ready
    device: str = "cpu"
    threads: int = 0

    def handler(self) -> ValueModelHandler:
        """A new, not yet loaded handler for this spec (use it as a context manager, or `load` it)."""
        cls = handler_class(self.backend)
        if self.backend == "triton":  # every other backend takes the in-process arguments
            return cls(self.triton_url, expected_version=self.expected_version, ready_timeout_s=self.ready_timeout_s)
        return cls(self.checkpoint, device=self.device, threads=self.threads)
