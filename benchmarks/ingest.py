"""Ingest throughput against PyAV decode-only, 2 Dask workers vs 1, and peak memory as the
dataset grows.

    python benchmarks/ingest.py [--scale 20] [--out benchmarks/results/ingest.json]

On one machine, in one run, on the same files (metaworld_mini's 18 episodes written again as
LeRobot v3 datasets of 1x and `scale`x the episodes, AV1 128x128):
- decode-only: every frame of every camera decoded with PyAV at its timestamp, nothing stored
  (the same reader and decode calls ingest uses), one process
- ingest, 1 worker and 2 workers: `run_ingest` on a Dask LocalCluster (already started, so
  cluster start-up is not counted), frames decoded, validated and written to the Zarr store
Goals: ingest with 1 worker >= 0.9x decode-only; 2 workers >= 1.7x 1 worker.
Peak memory: `wvm ingest --engine local` in a child process on the 1x and the scale-x dataset
(max RSS), with partitions smaller than the 1x dataset so growth with the dataset shows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, memory_growth, replicate, write_results

from pipelines.engines.dask import DaskEngine
from pipelines.ingest import IngestConfig, run_ingest
from pipelines.sources import open_source


def decode_only(dataset: Path) -> tuple[float, int]:
    source = open_source(str(dataset))
    start, frames = time.perf_counter(), 0
    for e in source.episodes():
        table = source.read_frames(e)
        for camera in source.cameras:
            frames += sum(1 for _ in source.decode(e, camera, table, np.arange(len(table))))
    return time.perf_counter() - start, frames


def ingest_with(workers: int, dataset: Path, store: Path, partition_frames: int) -> float:
    with DaskEngine(workers=workers) as engine:
        start = time.perf_counter()
        summary = run_ingest(IngestConfig(source=str(dataset), store=str(store), partition_frames=partition_frames), engine)
        seconds = time.perf_counter() - start
    assert summary.failed == 0, summary.failures
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--partition-frames", type=int, default=500, help="ingest partition size for the throughput runs")
    parser.add_argument("--memory-partition-frames", type=int, default=256)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ingest.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wvm-bench-ingest-"))
    one, many = replicate(1, work / "x1"), replicate(args.scale, work / f"x{args.scale}")

    decode_s, frames = decode_only(many)
    one_worker_s = ingest_with(1, many, work / "store-1w", args.partition_frames)
    two_workers_s = ingest_with(2, many, work / "store-2w", args.partition_frames)
    results = {
        "frames": frames,
        "partition_frames": args.partition_frames,
        "decode_only_frames_per_s": frames / decode_s,
        "ingest_1_worker_frames_per_s": frames / one_worker_s,
        "ingest_2_workers_frames_per_s": frames / two_workers_s,
        "ingest_1_worker_vs_decode_only": decode_s / one_worker_s,
        "2_workers_vs_1": one_worker_s / two_workers_s,
    }
    results |= memory_growth("ingest", {"x1": one, f"x{args.scale}": many}, work, args.memory_partition_frames)
    write_results(results, args.out)


if __name__ == "__main__":
    main()
