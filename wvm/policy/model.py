"""A small state-based policy that predicts action chunks, trained with weighted BC.

The policy maps the Meta-World observation at frame t to the next H recorded actions
a[t+1..t+H] (REFERENCE §3: chunks of H = 10 in simulation). Every policy-learning method of the
benchmark is this one loss with different sample weights (REFERENCE §3):

    L = sum_i w_i * l_i / (sum_i w_i + 1e-6)

where l_i is the mean squared error over the chunk steps that lie inside the episode. Samples
of weight 0 are dropped before training rather than multiplied by 0, so every method takes the
same number of optimiser steps on full batches of samples it actually learns from.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

WEIGHT_EPS = 1e-6


@dataclass(frozen=True)
class PolicyConfig:
    horizon: int = 10  # action chunk H
    hidden: int = 256
    layers: int = 2  # hidden layers
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    threads: int = 1  # torch CPU threads; the benchmark shares a 2-core machine


@dataclass
class Samples:
    """Training samples of one task: state at frame t, the next H actions and their mask."""

    state: np.ndarray  # float32 (N, S)
    chunk: np.ndarray  # float32 (N, H, A)
    mask: np.ndarray  # float32 (N, H): 1 where the chunk step lies inside the episode
    weight: np.ndarray  # float32 (N,)
    episode: np.ndarray  # int64 (N,) source episode index of each sample

    def __len__(self) -> int:
        return len(self.state)

    def kept(self) -> Samples:
        keep = self.weight > 0
        return Samples(self.state[keep], self.chunk[keep], self.mask[keep], self.weight[keep], self.episode[keep])


def episode_samples(state: np.ndarray, action: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples of one episode of T frames: frames 0..T-2 (the last frame has no next action).

    The dataset stores with frame t the action that led to it, so the actions taken after
    frame t are action[t+1], action[t+2], ...; chunk steps past the episode end are padded with
    the last action and masked out of the loss."""
    T = len(state)
    if T < 2:
        return np.zeros((0, state.shape[1]), np.float32), np.zeros((0, horizon, action.shape[1]), np.float32), np.zeros((0, horizon), np.float32)
    t = np.arange(T - 1)[:, None] + 1 + np.arange(horizon)[None, :]  # (T-1, H) indices of actions
    mask = (t <= T - 1).astype(np.float32)
    chunk = action[np.minimum(t, T - 1)].astype(np.float32)
    return state[: T - 1].astype(np.float32), chunk, mask


class ChunkPolicy(nn.Module):
    """MLP on the normalised state; outputs H actions."""

    def __init__(self, state_dim: int, action_dim: int, config: PolicyConfig):
        super().__init__()
        self.state_dim, self.action_dim, self.horizon = state_dim, action_dim, config.horizon
        layers, width = [], state_dim
        for _ in range(config.layers):
            layers += [nn.Linear(width, config.hidden), nn.LayerNorm(config.hidden), nn.GELU()]
            width = config.hidden
        layers.append(nn.Linear(width, config.horizon * action_dim))
        self.net = nn.Sequential(*layers)
        # normalisation of the input, fitted on the training data (saved with the weights)
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        x = (state - self.state_mean) / self.state_std
        return self.net(x).view(-1, self.horizon, self.action_dim)

    @torch.no_grad()
    def act(self, state: np.ndarray) -> np.ndarray:
        """(S,) observation -> (H, A) action chunk, clipped to the action space [-1, 1]."""
        out = self(torch.as_tensor(np.asarray(state, np.float32)[None]))
        return out[0].clamp(-1.0, 1.0).numpy()


def weighted_bc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_i w_i l_i / (sum_i w_i + 1e-6), l_i the squared error averaged over the valid chunk
    steps and action dimensions of sample i."""
    per_step = ((pred - target) ** 2).mean(dim=-1)  # (B, H)
    per_sample = (per_step * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1.0)
    return (weight * per_sample).sum() / (weight.sum() + WEIGHT_EPS)


def train_policy(samples: Samples, config: PolicyConfig, seed: int) -> tuple[ChunkPolicy, dict]:
    """Train on the samples of positive weight; returns the policy and a small training log."""
    torch.set_num_threads(config.threads)
    data = samples.kept()
    if len(data) == 0:
        raise ValueError("no training sample has a positive weight")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    policy = ChunkPolicy(data.state.shape[1], data.chunk.shape[2], config)
    # Normalise by every sample of the method's data (constant dims, e.g. an absent second
    # object, keep a floor so they do not blow up).
    mean = data.state.mean(axis=0)
    std = np.maximum(data.state.std(axis=0), 1e-2)
    policy.state_mean.copy_(torch.as_tensor(mean))
    policy.state_std.copy_(torch.as_tensor(std))
    state, chunk = torch.as_tensor(data.state), torch.as_tensor(data.chunk)
    mask, weight = torch.as_tensor(data.mask), torch.as_tensor(data.weight)
    optimiser = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / config.steps)))
    losses = []
    policy.train()
    for step in range(config.steps):
        idx = torch.randint(0, len(data), (min(config.batch_size, len(data)),), generator=generator)
        loss = weighted_bc_loss(policy(state[idx]), chunk[idx], mask[idx], weight[idx])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    policy.eval()
    tail = max(1, config.steps // 10)
    log = {
        "samples": int(len(data)),
        "samples_total": int(len(samples)),
        "episodes": int(len(np.unique(data.episode))),
        "weight_mean": float(data.weight.mean()),
        "loss_first": float(np.mean(losses[:tail])),
        "loss_last": float(np.mean(losses[-tail:])),
    }
    return policy, log


def save_policy(policy: ChunkPolicy, config: PolicyConfig, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    torch.save(policy.state_dict(), path / "policy.pt")
    meta = {"state_dim": policy.state_dim, "action_dim": policy.action_dim, "config": asdict(config)}
    (path / "policy.json").write_text(json.dumps(meta, indent=2))


def load_policy(path: Path) -> ChunkPolicy:
    meta = json.loads((path / "policy.json").read_text())
    policy = ChunkPolicy(meta["state_dim"], meta["action_dim"], PolicyConfig(**meta["config"]))
    policy.load_state_dict(torch.load(path / "policy.pt", weights_only=True))
    return policy.eval()
