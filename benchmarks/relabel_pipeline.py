"""End-to-end relabel throughput against its parts, and peak memory as the dataset grows.

    python benchmarks/relabel_pipeline.py [--scale 10] [--out benchmarks/results/relabel_pipeline.json]

On one machine, in one run, on the same data (metaworld_mini's 18 episodes, written again as
LeRobot v3 datasets of 1x and `scale`x the episodes):
- decode-only: read each episode's frame table and decode the frames the model samples
- model-only:  run every episode request through the model, frames already in memory
- end-to-end:  `wvm relabel` (local engine, in-process model), outputs written
The pipeline goal is end-to-end >= 0.8x the slower of the two parts (the stages overlap).
Peak memory: `wvm relabel` in a child process on the 1x and the scale-x dataset (max RSS),
with partitions of `--memory-partition-frames` frames. Memory is bounded by the partition (the
unit of work), so the partitions must be smaller than the 1x dataset (524 frames) for the
comparison to measure growth with the dataset rather than a partition filling up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, memory_growth, replicate, write_results

from pipelines.sources import open_source
from pipelines.windows import EpisodeChain, label_episodes
from wvm.handlers import LocalHandler


def decode_only(dataset: Path, geometry) -> tuple[float, int, dict]:
    source = open_source(str(dataset))
    camera = source.cameras[0]
    start, frames, sampled = time.perf_counter(), 0, {}
    for e in source.episodes():
        table = source.read_frames(e)
        chain = EpisodeChain(str(e.index), e.length, source.fps, e.task, geometry)
        states = None if table.state is None else table.state[chain.samples]  # the robot state the model reads too
        sampled[e.index] = (chain, np.stack(list(source.decode(e, camera, table, chain.samples))), states)
        frames += e.length
    return time.perf_counter() - start, frames, sampled


def model_only(handler, sampled: dict) -> float:
    chains = [EpisodeChain(c.key, c.length, c.fps, c.text, c.geometry) for c, _, _ in sampled.values()]
    images = {str(k): f for k, (_, f, _) in sampled.items()}
    states = {str(k): s for k, (_, _, s) in sampled.items()}

    def fetch_states(c, idx):
        return None if states[c.key] is None else states[c.key][np.searchsorted(c.samples, idx)]

    start = time.perf_counter()
    label_episodes(chains, lambda c, idx: images[c.key][np.searchsorted(c.samples, idx)], handler.answer_batch, 64, fetch_states)
    return time.perf_counter() - start


def relabel_child(dataset: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "wvm.cli", "relabel", str(dataset), "--out", str(out), "--engine", "local"]
    return json.loads(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--memory-partition-frames", type=int, default=256)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "relabel_pipeline.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wvm-bench-"))
    one, many = replicate(1, work / "x1"), replicate(args.scale, work / f"x{args.scale}")

    handler = LocalHandler()
    handler.load()
    # Parts and whole on the larger dataset, side by side in this run.
    decode_s, frames, sampled = decode_only(many, handler.geometry)
    model_s = model_only(handler, sampled)
    del sampled
    summary = relabel_child(many, work / "labels-throughput")
    e2e_fps = summary["frames_labelled"] / summary["seconds"]
    labelling_fps = summary["frames_per_second"]
    results = {
        "frames": frames,
        "decode_only_frames_per_s": frames / decode_s,
        "model_only_frames_per_s": frames / model_s,
        "end_to_end_frames_per_s": e2e_fps,
        "end_to_end_labelling_frames_per_s": labelling_fps,
        "end_to_end_vs_slower_part": e2e_fps / min(frames / decode_s, frames / model_s),
        "labelling_vs_slower_part": labelling_fps / min(frames / decode_s, frames / model_s),
    }
    results |= memory_growth("relabel", {"x1": one, f"x{args.scale}": many}, work, args.memory_partition_frames)
    write_results(results, args.out)


if __name__ == "__main__":
    main()
