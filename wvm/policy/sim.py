"""Closed-loop evaluation of a chunk policy in the Meta-World simulator.

Trial i of a task always starts from the same object and goal placement: placements come from
Meta-World's own task sampler seeded with `seed + i // 50` (50 placements per seed, the way MT1
builds its tasks), so every policy meets exactly the same trials. The training data is rendered
from other placement seeds (wvm.policy.data), so no trial repeats a training scene.

The policy sees the full 39-dim observation (with the goal: MT1 tasks are fully observable) and
acts at the dataset's frame rate: each query returns a chunk of H frame-level actions; the first
`execute` of them are applied, each held for `action_repeat` env steps (the env steps between
two recorded frames), then the policy is queried again. An episode ends at the first success or
after `max_steps` env steps (Meta-World's 500-step limit by default).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from wvm.policy.model import ChunkPolicy

PLACEMENTS_PER_SEED = 50  # Meta-World's MT1 samples 50 placements per seed


@dataclass(frozen=True)
class EvalConfig:
    trials: int = 50
    seed: int = 1000  # placement seeds: seed, seed + 1, ... (disjoint from anything else we seed)
    max_steps: int = 500
    action_repeat: int = 4  # env steps per recorded frame (the dataset's record_every)
    execute: int = 1  # chunk actions applied before the policy is queried again

    def placement_seeds(self) -> range:
        return range(self.seed, self.seed + (self.trials + PLACEMENTS_PER_SEED - 1) // PLACEMENTS_PER_SEED)


@dataclass
class TrialResult:
    success: bool
    steps: int  # env steps until success, or max_steps


class TaskSimulator:
    """One Meta-World task without rendering, and its fixed trial placements."""

    def __init__(self, task: str, config: EvalConfig):
        os.environ.setdefault("MUJOCO_GL", "egl")
        import gymnasium as gym
        import metaworld

        if config.max_steps < 1 or config.trials < 1:
            raise ValueError("trials and max_steps must be positive")
        self.task, self.config = task, config
        self.env = gym.make("Meta-World/MT1", env_name=task).unwrapped
        self.env.max_path_length = config.max_steps
        self.placements = []
        for seed in config.placement_seeds():
            self.placements += metaworld.MT1(task, seed=seed).train_tasks
        self.placements = self.placements[: config.trials]

    def reset(self, trial: int) -> np.ndarray:
        self.env.set_task(self.placements[trial])
        obs, _ = self.env.reset()
        return obs

    def run_trial(self, policy: ChunkPolicy, trial: int) -> TrialResult:
        cfg = self.config
        obs = self.reset(trial)
        step = 0
        while step < cfg.max_steps:
            chunk = policy.act(obs)
            for action in chunk[: cfg.execute]:
                for _ in range(cfg.action_repeat):
                    obs, _, _, _, info = self.env.step(action)
                    step += 1
                    if info["success"]:
                        return TrialResult(True, step)
                    if step >= cfg.max_steps:
                        return TrialResult(False, cfg.max_steps)
        return TrialResult(False, cfg.max_steps)

    def evaluate(self, policy: ChunkPolicy) -> dict:
        start = time.perf_counter()
        results = [self.run_trial(policy, i) for i in range(self.config.trials)]
        return {
            "success": [bool(r.success) for r in results],
            "steps": [int(r.steps) for r in results],
            "seconds": round(time.perf_counter() - start, 2),
        }

    def close(self) -> None:
        self.env.close()
