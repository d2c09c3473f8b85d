"""What the benchmarks share: the scaled datasets, peak memory of a `wvm` command, results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import METAWORLD_MINI

from pipelines.sources.lerobot import LeRobotSource, LeRobotV3Writer

# Peak memory of one command: a fresh wrapper process runs it, and its RUSAGE_CHILDREN max RSS
# is exactly that one run.
_PEAK_RSS = (
    "import resource,subprocess,sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def replicate(scale: int, out: Path) -> Path:
    """A LeRobot v3 dataset holding metaworld_mini's episodes `scale` times."""
    source = LeRobotSource(str(METAWORLD_MINI))
    camera = source.cameras[0]
    episodes = []
    for e in source.episodes():
        table = source.read_frames(e)
        episodes.append((np.stack(list(source.decode(e, camera, table, np.arange(len(table))))), table, e.task))
    writer = LeRobotV3Writer(str(out), fps=int(source.fps), robot_type=source.embodiment, cameras={camera: source.camera_shape(camera)}, state_dim=4, action_dim=4)
    for _ in range(scale):
        for frames, table, task in episodes:
            writer.add_episode({camera: frames}, table.state, table.action, task)
    writer.close()
    return out


def memory_growth(verb: str, datasets: dict[str, Path], work: Path, partition_frames: int) -> dict:
    """Peak RSS (MB) of `wvm VERB DATASET --engine local` on each dataset, in separate processes,
    with partitions smaller than the smallest dataset so growth with the dataset shows (memory
    is bounded by the partition, the unit of work), and the largest / smallest ratio."""
    peaks = {}
    for name, dataset in datasets.items():
        cmd = [sys.executable, "-c", _PEAK_RSS, sys.executable, "-m", "wvm.cli", verb, str(dataset),
               "--out", str(work / f"{verb}-mem-{name}"), "--engine", "local", "--partition-frames", str(partition_frames)]  # fmt: skip
        peaks[name] = int(subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()) // 1024
    values = list(peaks.values())
    return {"memory_partition_frames": partition_frames, "peak_rss_mb": peaks, "peak_ratio": values[-1] / values[0]}


def write_results(results: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
