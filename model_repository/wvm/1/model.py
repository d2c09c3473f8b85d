"""Triton Python backend for the World Value Model (contract: schemas/inference.py).

Numeric tensors move through DLPack: the stub bundled with nvidia-pytriton returns empty
outputs for numpy-built tensors under numpy 2 (REFERENCE §6); `wvm serve` runs the stub on
numpy 1 so the BYTES tensors (task text, model version) work too.

Requests of one execute() call are validated one by one (a bad request gets its own error
response, the rest are served) and then run as one batch per frame size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

from schemas import inference as contract
from wvm.checkpoint import load_model
from wvm.model import answer_episodes
from wvm.text import text_encoder_for


def _input(request, name: str) -> torch.Tensor:
    return from_dlpack(pb_utils.get_input_tensor_by_name(request, name).to_dlpack())


def _text(task) -> str:
    if not isinstance(task, bytes):
        return str(task)
    try:
        return task.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise contract.ContractError(f"{contract.TASK} must be UTF-8 text ({exc.reason} at byte {exc.start})") from None


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = contract.config_parameters(config)
        device = params.get(contract.PARAM_DEVICE, "cpu")
        if args["model_instance_kind"] == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        if int(params.get(contract.PARAM_THREADS) or 0):
            torch.set_num_threads(int(params[contract.PARAM_THREADS]))
        checkpoint = params.get(contract.PARAM_CHECKPOINT) or None
        if checkpoint and not Path(checkpoint).is_absolute():
            checkpoint = str(Path(args["model_repository"]) / checkpoint)
        self.loaded = load_model(checkpoint, device=device)
        self.device = device
        model_config = self.loaded.config
        samples = contract.PARAM_SAMPLES_PER_EPISODE
        declared = {samples: int(params.get(samples, model_config.samples_per_episode))}
        actual = {samples: model_config.samples_per_episode}
        frames_dims = next(i["dims"] for i in config["input"] if i["name"] == contract.FRAMES)
        if declared != actual or int(frames_dims[0]) != model_config.window_frames:
            raise ValueError(
                f"config.pbtxt declares {declared} and FRAMES dims {frames_dims}, but checkpoint "
                f"{self.loaded.path} has {actual} (window of {model_config.window_frames} frames)"
            )
        self.window_frames = model_config.window_frames
        self.version = contract.format_model_version(self.loaded.version, self.loaded.checkpoint_hash).encode()
        self.text = text_encoder_for(model_config, device)
        self.text([" "])  # load the sentence encoder (if the model reads text) now, not on the first request

    def execute(self, requests):
        responses = [None] * len(requests)
        valid = []  # (request number, frames, texts, lengths, per-episode states)
        for i, request in enumerate(requests):
            try:
                frames = _input(request, contract.FRAMES)
                lengths = _input(request, contract.LENGTH).reshape(-1)
                tasks = pb_utils.get_input_tensor_by_name(request, contract.TASK).as_numpy().reshape(-1)
                texts = [_text(t) for t in tasks]
                contract.check_window_batch(frames.cpu().numpy(), texts, lengths.cpu().numpy(), self.window_frames)
                per_episode = [None] * len(texts)
                if pb_utils.get_input_tensor_by_name(request, contract.STATE) is not None:  # optional input
                    states = _input(request, contract.STATE).cpu().numpy()
                    contract.check_state_batch(states, len(texts), self.window_frames)
                    per_episode = [None if np.isnan(s).all() else s for s in states]
                valid.append((i, frames, texts, lengths.long(), per_episode))
            except Exception as exc:  # noqa: BLE001 - every problem becomes this request's error
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))
        by_shape: dict[tuple, list] = {}
        for item in valid:
            by_shape.setdefault(tuple(item[1].shape[1:]), []).append(item)
        for group in by_shape.values():
            try:
                frames = torch.cat([g[1] for g in group]).to(self.device)
                texts = [t for g in group for t in g[2]]
                lengths = torch.cat([g[3] for g in group]).to(self.device)
                states = contract.stack_states([s for g in group for s in g[4]], self.window_frames)
                states = None if states is None else torch.from_numpy(states).to(self.device)
                values, ood, success = answer_episodes(self.loaded.model, frames, self.text(texts), lengths, states)
            except Exception as exc:  # noqa: BLE001
                for g in group:
                    responses[g[0]] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {exc}"))
                continue
            start = 0
            for i, batch, _, _, _ in group:
                n = batch.shape[0]
                version = np.array([[self.version]] * n, dtype=np.object_)
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor.from_dlpack(contract.VALUES, to_dlpack(values[start : start + n].cpu().contiguous())),
                        pb_utils.Tensor.from_dlpack(contract.OOD, to_dlpack(ood[start : start + n, None].cpu().contiguous())),
                        pb_utils.Tensor.from_dlpack(contract.SUCCESS, to_dlpack(success[start : start + n, None].cpu().contiguous())),
                        pb_utils.Tensor(contract.MODEL_VERSION, version),
                    ]
                )
                start += n
        return responses
