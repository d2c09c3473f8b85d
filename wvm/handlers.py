"""One narrow interface for "load a model, run a batch of episode requests" (like Beam's ModelHandler).

`LocalHandler` runs the checkpoint in-process; `TritonHandler` (wvm.serving.client) sends the
same requests to a Triton Inference Server. Both take and return exactly what
schemas/inference.py specifies, so pipelines switch between them with one flag. They satisfy
the interface pipelines use (pipelines.inference.ValueModelHandler), and pipelines find them
by import path (pipelines.inference.HANDLERS): pipelines never import this package.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pipelines.windows import WindowGeometry
from schemas.inference import EpisodeAnswers


class ValueModelHandler(ABC):
    version: str  # the model version every answer carries
    checkpoint_hash: str
    geometry: WindowGeometry

    @abstractmethod
    def load(self) -> None:
        """Acquire the model (load weights, or connect and check the server)."""

    @abstractmethod
    def answer_batch(self, frames: np.ndarray, texts: list[str], lengths: np.ndarray, states: np.ndarray | None = None) -> EpisodeAnswers:
        """frames uint8 (B, N, H, W, 3): each episode's samples; texts: B task strings; lengths
        int32 (B,): real samples per episode; states: optional float32 (B, N, S) robot state
        at the samples (schemas/inference.py STATE). Returns float32 (B, N) values in [0, 1],
        each episode's out-of-distribution score and its probability of success."""

    def run_batch(self, frames: np.ndarray, texts: list[str], lengths: np.ndarray, states: np.ndarray | None = None) -> np.ndarray:
        """`answer_batch`'s values only."""
        return self.answer_batch(frames, texts, lengths, states).values

    def identity(self) -> tuple[str, str]:
        """(model version, checkpoint hash) of the model that would answer, as cheaply as the
        backend allows (a run's driver needs only this). By default: load, read, close."""
        with self:
            return self.version, self.checkpoint_hash

    def close(self) -> None:
        pass

    def __enter__(self):
        self.load()
        return self

    def __exit__(self, *exc):
        self.close()


class LocalHandler(ValueModelHandler):
    def __init__(self, checkpoint: str | None = None, device: str = "cpu", threads: int = 0):
        self.checkpoint, self.device, self.threads = checkpoint, device, threads
        self._loaded = None

    def load(self) -> None:
        import torch

        from wvm.checkpoint import load_model
        from wvm.text import text_encoder_for

        if self.threads:
            torch.set_num_threads(self.threads)
        self._loaded = load_model(self.checkpoint, device=self.device)
        self._text = text_encoder_for(self._loaded.config, self.device)
        self.version = self._loaded.version
        self.checkpoint_hash = self._loaded.checkpoint_hash
        self.geometry = WindowGeometry.of(self._loaded.config)

    def identity(self) -> tuple[str, str]:
        from wvm.checkpoint import checkpoint_identity

        return checkpoint_identity(self.checkpoint)  # the weights' header only, not the weights

    def answer_batch(self, frames: np.ndarray, texts: list[str], lengths: np.ndarray, states: np.ndarray | None = None) -> EpisodeAnswers:
        import torch

        from schemas.inference import check_state_batch, check_window_batch
        from wvm.model import answer_episodes

        check_window_batch(frames, texts, lengths, self.geometry.window_frames, max_batch=None)
        check_state_batch(states, len(frames), self.geometry.window_frames)
        answers = answer_episodes(
            self._loaded.model,
            torch.from_numpy(np.ascontiguousarray(frames)).to(self.device),
            self._text(list(texts)),
            torch.from_numpy(np.asarray(lengths, dtype=np.int64)).to(self.device),
            None if states is None else torch.from_numpy(states).to(self.device),
        )
        return EpisodeAnswers(*(a.cpu().numpy().astype(np.float32) for a in answers))
