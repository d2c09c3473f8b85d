"""Row 80 probe: a checkpoint's autoencoder reconstruction error (the OOD score's raw
material, wvm.model.WorldValueModel.encode_and_score) per camera: the training camera, the
stage-1-only views (jittered corner3, topview) and the unseen corner2.

    python reports/eval_v13_views/probe_autoencoder.py runs/stage1_views/final \
        corner=data/mw_bench_reserved corner2=data/mw_bench_reserved_c2 \
        corner3=data/mw_views21,observation.images.corner3 \
        topview=data/mw_views21,observation.images.topview
"""

import argparse

import numpy as np
import torch

from pipelines.sources import open_source
from wvm.checkpoint import load_model


def frames_of(dataset: str, camera: str | None, episodes: int = 60, every: int = 4) -> np.ndarray:
    source = open_source(dataset)
    camera = camera or source.default_camera()
    everything = list(source.episodes())
    picked = []
    for i in np.linspace(0, len(everything) - 1, episodes).round().astype(int):  # spread over the tasks
        table = source.read_frames(everything[i])
        picked.append(np.stack(list(source.decode(everything[i], camera, table, np.arange(0, len(table), every)))))
    return np.concatenate(picked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("sets", nargs="+", metavar="NAME=DATASET[,CAMERA]")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.checkpoint).model.eval()
    for spec in args.sets:
        name, where = spec.split("=", 1)
        dataset, _, camera = where.partition(",")
        frames = torch.from_numpy(frames_of(dataset, camera or None))
        errors = torch.cat([model.encode_and_score(b[None])[1][0] for b in frames.split(256)])
        q = torch.quantile(errors, torch.tensor([0.5, 0.99]))
        print(f"{name}: {len(frames)} frames, reconstruction MSE median {q[0]:.4f}, 99% {q[1]:.4f}", flush=True)


if __name__ == "__main__":
    main()
