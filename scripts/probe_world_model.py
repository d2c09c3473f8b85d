"""Probe how well a checkpoint's video stream still predicts the future: its world-model (video)
loss on a bench's episodes, read at the model's N samples, with the same noise draws for every
checkpoint. Stage 1 trains this loss; a stage 2 that trains without it may forget it
(reports/experiments.md, row 52).

    python scripts/probe_world_model.py CHECKPOINT [CHECKPOINT ...] [--bench data/mw_bench_reserved] [--draws 6]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pipelines.windows import sample_positions
from wvm.checkpoint import load_model
from wvm.evaluate import load_bench
from wvm.model import Batch
from wvm.text import TextEncoder


@torch.no_grad()
def video_loss(model, episodes, text: torch.Tensor, draws: int, batch: int = 60) -> float:
    n = model.config.samples_per_episode
    latents, values, valid = [], [], []
    for e in episodes:
        idx = sample_positions(len(e.frames), n)
        z = model.encode_frames(torch.from_numpy(e.frames[idx])[None])[0]
        latents.append(torch.cat([z, z.new_zeros(n - len(idx), *z.shape[1:])]))
        v = np.zeros(n, np.float32)
        v[: len(idx)] = e.truth[idx]
        values.append(torch.from_numpy(v))
        valid.append(torch.arange(n) < len(idx))
    latents, values, valid = torch.stack(latents), torch.stack(values), torch.stack(valid)
    losses = []
    for draw in range(draws):
        torch.manual_seed(draw)  # the same split points and noise for every checkpoint
        for s in range(0, len(episodes), batch):
            part = slice(s, s + batch)
            fold = torch.zeros(len(values[part]), dtype=torch.long)
            _, info = model.loss(Batch(latents=latents[part], text=text[part], values=values[part], valid=valid[part], fold=fold))
            losses.append(info["video"])
    return float(np.mean(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--bench", default="data/mw_bench_reserved", help="LeRobot dataset with ground truth beside it")
    parser.add_argument("--draws", type=int, default=6, help="noise draws averaged per episode")
    args = parser.parse_args()
    episodes = load_bench(args.bench)
    text = TextEncoder()([e.task for e in episodes])
    for path in args.checkpoints:
        model = load_model(path).model.eval()
        print(f"{path}: video loss {video_loss(model, episodes, text, args.draws):.4f} on {args.bench} ({len(episodes)} episodes)", flush=True)


if __name__ == "__main__":
    main()
