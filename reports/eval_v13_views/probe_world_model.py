"""Row 80 probe: how well each stage 1's world model predicts held-out video, per camera.

The stage-1 objective (wvm.model.WorldValueModel.loss, video term: flow-matching velocity error
on the frames after a random split) on benches it never trained on: the 15 reserved tasks from
the training camera (`corner`) and from the unseen `corner2`. The same episodes, sample
positions, split points and noise for every checkpoint (fixed seeds), so rows compare directly.

    python reports/eval_v13_views/probe_world_model.py --batches 40 \
        --model "750 steps=runs/wvm_stage1/final" --model "5000 steps=runs/stage1_long/final" \
        --model "5000 steps, more views=runs/stage1_views/final" \
        --bench corner=data/mw_bench_reserved --bench corner2=data/mw_bench_reserved_c2
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from wvm.checkpoint import load_model
from wvm.data import EpisodeSampler, TrainingEpisode
from wvm.evaluate import load_bench
from wvm.model import Batch, preprocess
from wvm.text import TextEncoder


@torch.no_grad()
def video_loss(loaded, episodes: list[TrainingEpisode], batches: int, batch_size: int = 32) -> float:
    model, cfg = loaded.model.eval(), loaded.config
    # as training encodes them: preprocessed, stored as uint8, then encoded
    pixels = [((preprocess(torch.from_numpy(e.frames), cfg.image_size) + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1.0 for e in episodes]
    latents = torch.cat([model.autoencoder.encode(x) for x in pixels])
    latents = (latents - cfg.latent_mean) / cfg.latent_std
    text = TextEncoder()([e.task for e in episodes])
    sampler = EpisodeSampler(episodes, cfg.samples_per_episode, edit_p=0.0)
    rng = np.random.default_rng(0)
    losses = []
    for b in range(batches):
        ids, frame_idx, values, valid = sampler.sample(batch_size, rng)
        torch.manual_seed(b)  # the same split points and noise for every checkpoint
        batch = Batch(
            latents=latents[torch.from_numpy(frame_idx)],
            text=text[ids],
            values=torch.from_numpy(values),
            valid=torch.from_numpy(valid),
            fold=torch.zeros(batch_size, dtype=torch.long),
        )
        losses.append(model.loss(batch)[1]["video"])
    return float(np.mean(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT")
    parser.add_argument("--bench", action="append", required=True, help="NAME=DATASET (with its labels beside it)")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--out", help="write the table as JSON here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    benches = {}
    for spec in args.bench:
        name, dataset = spec.split("=", 1)
        benches[name] = [
            TrainingEpisode(e.frames, e.truth.astype(np.float32), e.task, e.kind, e.fps, f"{dataset}#{e.index}")
            for e in load_bench(dataset)
        ]
    table = {}
    for spec in args.model:
        name, path = spec.split("=", 1)
        loaded = load_model(path)
        loaded.config.value_loss_weight = 0.0  # the world-model term only; the value heads are not read
        table[name] = {bench: video_loss(loaded, episodes, args.batches) for bench, episodes in benches.items()}
        print(name, " ".join(f"{b} {v:.4f}" for b, v in table[name].items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=2)


if __name__ == "__main__":
    main()
