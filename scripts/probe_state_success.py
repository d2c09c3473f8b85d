"""Probe: can a judge of the whole episode from the robot state's motion alone (no frames, no
task) tell successful episodes from failed ones on tasks it never saw? (experiment log row 74)

Trains `wvm.model.StateSuccess`, and for comparison an MLP on the flattened state_features,
on the states of training renders (episode stores with a labels table beside each, read at 24
evenly spaced samples as inference reads them), and reports Failure-AUROC of their verdicts on
the benches, overall and per failure mode (each mode against every success).

    python scripts/probe_state_success.py --train data/stores/mw_train=data/mw_train.labels.parquet ... \\
        --bench data/mw_bench_reserved --bench data/mw_bench_reserved_fd
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.sources import open_source
from pipelines.store import EpisodeStore
from schemas import episode_store as layout
from schemas import ground_truth as gt
from schemas.ground_truth import LABELS_SUFFIX, SUCCESS_KINDS
from wvm.data import ground_truth_by_episode
from wvm.metrics import auroc
from wvm.model import STATE_AHEAD_FEATURES, STATE_FEATURES, StateSuccess, state_features

from probe_failures import failure_mode  # scripts/, the directory python puts first on the path

SAMPLES = 24


def sampled(states: np.ndarray) -> np.ndarray:
    return np.asarray(states, np.float32)[np.linspace(0, len(states) - 1, SAMPLES).round().astype(int)]


def training_states(store_url: str, labels_url: str) -> tuple[list[np.ndarray], list[bool]]:
    store, labels = EpisodeStore(store_url), ground_truth_by_episode(labels_url)
    states, succeeded = [], []
    for row in store.episodes().to_pylist():
        label = labels[row[layout.SOURCE_EPISODE_INDEX]]
        states.append(sampled(store.read_table(row).state))
        succeeded.append(str(label[gt.KIND].iloc[0]) in SUCCESS_KINDS)
    return states, succeeded


def bench_states(dataset: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    source, labels = open_source(dataset), ground_truth_by_episode(dataset.rstrip("/") + LABELS_SUFFIX)
    states, succeeded, groups = [], [], []
    for episode in source.episodes():
        label = labels.get(episode.index)
        if label is None:
            continue
        kind, state = str(label[gt.KIND].iloc[0]), source.read_frames(episode).state
        states.append(sampled(state))
        succeeded.append(kind in SUCCESS_KINDS)
        groups.append(failure_mode(state, int(label[gt.SEG_START].iloc[0])) if kind == "failed" else kind)
    return states, np.array(succeeded), np.array(groups)


class FlatJudge(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(SAMPLES * (STATE_FEATURES + STATE_AHEAD_FEATURES), 64), nn.SiLU(), nn.Dropout(0.2), nn.Linear(64, 1))

    def forward(self, states: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.net(state_features(states, valid, ahead=True)).squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="append", required=True, help="STORE=LABELS of a training render (repeatable)")
    parser.add_argument("--bench", action="append", required=True, help="LeRobot dataset with ground truth beside it (repeatable)")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    states, succeeded = [], []
    for pair in args.train:
        s, y = training_states(*pair.split("=", 1))
        states += s
        succeeded += y
        print(f"{pair.split('=')[0]}: {len(s)} episodes, {sum(y)} successes", flush=True)
    x, y = torch.tensor(np.stack(states)), torch.tensor(succeeded, dtype=torch.float32)
    valid = torch.ones(x.shape[:2], dtype=torch.bool)
    benches = {b: bench_states(b) for b in args.bench}
    for name, judge_class in (("StateSuccess", StateSuccess), ("flat MLP", FlatJudge)):
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            judge = judge_class()
            optimizer = torch.optim.AdamW(judge.parameters(), 1e-3, weight_decay=1e-2)
            for _ in range(args.epochs):
                order = torch.randperm(len(y))
                for i in range(0, len(y), 128):
                    at = order[i : i + 128]
                    loss = F.binary_cross_entropy_with_logits(judge(x[at], valid[at]), y[at])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            judge.eval()
            line = f"{name} seed {seed}:"
            with torch.no_grad():
                for bench, (bs, ok, groups) in benches.items():
                    bx = torch.tensor(np.stack(bs))
                    p = judge(bx, torch.ones(bx.shape[:2], dtype=torch.bool)).numpy()
                    modes = " ".join(f"{m} {auroc(p[ok], p[groups == m]):.2f}" for m in ("stall", "drift", "drop") if (groups == m).any())
                    line += f"  {bench.rstrip('/').split('/')[-1]} {auroc(p[ok], p[~ok]):.3f} ({modes})"
            print(line, flush=True)


if __name__ == "__main__":
    main()
