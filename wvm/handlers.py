"""One narrow interface for "load a model, run a batch of windows" (like Beam's ModelHandler).

`LocalHandler` runs the checkpoint in-process; `TritonHandler` (wvm.serving.client) sends the
same windows to a Triton Inference Server. Both take and return exactly what
schemas/inference.py specifies, so pipelines switch between them with one flag.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from wvm.windows import WindowGeometry


class ValueModelHandler(ABC):
    version: str  # the model version every answer carries
    checkpoint_hash: str
    geometry: WindowGeometry

    @abstractmethod
    def load(self) -> None:
        """Acquire the model (load weights, or connect and check the server)."""

    @abstractmethod
    def run_batch(self, frames: np.ndarray, texts: list[str], prefix: np.ndarray) -> np.ndarray:
        """frames uint8 (B, K, H, W, 3): [anchor,] prefix and current frames; texts: B task strings;
        prefix float32 (B,): prefix values. Returns float32 (B, h) chunk values in [0, 1]."""

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
        from wvm.text import TextEncoder

        if self.threads:
            torch.set_num_threads(self.threads)
        self._loaded = load_model(self.checkpoint, device=self.device)
        self._text = TextEncoder(self.device)
        self.version = self._loaded.version
        self.checkpoint_hash = self._loaded.checkpoint_hash
        self.geometry = WindowGeometry.of(self._loaded.config)

    def run_batch(self, frames: np.ndarray, texts: list[str], prefix: np.ndarray) -> np.ndarray:
        import torch

        from schemas.inference import check_window_batch

        check_window_batch(frames, texts, prefix, self.geometry.window_frames, max_batch=None)
        with torch.no_grad():
            values = self._loaded.model.predict(
                torch.from_numpy(np.ascontiguousarray(frames)).to(self.device),
                self._text(list(texts)),
                torch.from_numpy(np.asarray(prefix, dtype=np.float32)).to(self.device),
            )
        return values.cpu().numpy().astype(np.float32)
