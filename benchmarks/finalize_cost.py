"""What finalize costs when a little data is added to a labelled dataset, at two dataset sizes.

    python benchmarks/finalize_cost.py [--scales 2 8] [--new-episodes 2] [--partition-frames 120]
        [--before 95001d364f9384f8c3a663a8b393490ed7ae684d] [--out benchmarks/results/finalize_cost.json]

For each scale s, in one run on one machine: metaworld_mini's 18 episodes written s times as a
LeRobot v3 dataset (benchmarks/common.py `replicate`), its last `--new-episodes` episodes hidden
(its episodes metadata rewritten without them), `wvm relabel` (local engine, in-process model,
partitions of `--partition-frames` frames), then the episodes revealed and relabelled: the
second run labels only the new episodes, and its finalize is measured:

- `incremental`: this finalize, as the run calls it (the run read the episodes parts once
  already, when planning, so only the new one is read here);
- `before`: finalize as it was at commit `--before` (reads every frames part twice, rewrites
  every frames part when the cut moves), on a copy of the directory as this finalize found it.
  Left out when that commit is not in this checkout;
- `rerun`: finalize again with nothing new, from a fresh object (every episodes part read).

Each reports seconds, bytes read and written by the process (/proc/self/io rchar / wchar: every
read() and write(), page cache hits included), files opened for reading by the labels store's
filesystem by kind (frames, sidecar and episodes parts; other: consolidated files, index,
model.json), bytes read from each kind, and frames parts rewritten. `ratio` is the larger scale
over the smaller: 1 means the cost does not grow with the dataset, s_large / s_small that it
grows with it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from common import ROOT, replicate, write_results

from pipelines.engines.base import LocalEngine
from pipelines.inference import ModelSpec
from pipelines.labels_store import LabelsStore, VersionLabels
from pipelines.relabel import RelabelConfig, run_relabel
from schemas import labels as spec

KINDS = {f"/{spec.FRAMES_DIR}/": "frames", f"/{spec.SIDECAR_PARTS_DIR}/": "sidecar", f"/{spec.EPISODE_PARTS_DIR}/": "episodes"}


def kind(path: str) -> str:
    return next((k for marker, k in KINDS.items() if marker in path), "other")


class Reads:
    """Files opened for reading through fsspec's local filesystem, and bytes read from them."""

    def __init__(self):
        from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

        self.opened, self.bytes = Counter(), Counter()
        reads = self

        def _open(fs, path, mode="rb", *args, **kwargs):
            if "r" in mode:
                reads.opened[kind(str(path))] += 1
            return original_open(fs, path, mode, *args, **kwargs)

        def read(opener, *args, **kwargs):
            data = opener.f.read(*args, **kwargs)
            reads.bytes[kind(str(opener.path))] += len(data)
            return data

        def readinto(opener, buffer):
            n = opener.f.readinto(buffer)
            reads.bytes[kind(str(opener.path))] += n or 0
            return n

        original_open = LocalFileSystem._open
        LocalFileSystem._open, LocalFileOpener.read, LocalFileOpener.readinto = _open, read, readinto

    def clear(self) -> None:
        self.opened.clear()
        self.bytes.clear()


def io_counters() -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


def measure(reads: Reads, finalize) -> tuple[dict, dict]:
    reads.clear()
    (r0, w0), start = io_counters(), time.perf_counter()
    result = finalize()
    seconds, (r1, w1) = time.perf_counter() - start, io_counters()
    return {
        "seconds": round(seconds, 3),
        "bytes_read": r1 - r0,
        "bytes_written": w1 - w0,
        "files_opened": {k: reads.opened[k] for k in ("frames", "sidecar", "episodes", "other")},
        "bytes_read_by_kind": {k: reads.bytes[k] for k in ("frames", "sidecar", "episodes", "other")},
        "frames_parts_rewritten": result.get("frames_parts_rewritten"),
        "frames": result["frames"],
        "top70_threshold": result["top70_threshold"],
        "kept_fraction": result.get("kept_fraction"),
    }, result


def labels_store_before(commit: str) -> types.ModuleType | None:
    """pipelines/labels_store.py as it was at `commit`, as a module."""
    shown = subprocess.run(["git", "show", f"{commit}:pipelines/labels_store.py"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode:
        return None
    module = types.ModuleType("labels_store_before")
    sys.modules[module.__name__] = module
    exec(compile(shown.stdout, f"labels_store@{commit[:8]}.py", "exec"), module.__dict__)
    return module


def hide_last(dataset: Path, count: int) -> tuple[Path, object]:
    (episodes_file,) = sorted((dataset / "meta" / "episodes").rglob("*.parquet"))
    full = pq.read_table(episodes_file)
    pq.write_table(full.slice(0, full.num_rows - count), episodes_file)
    return episodes_file, full


def one_scale(scale: int, work: Path, args, reads: Reads, before: types.ModuleType | None) -> dict:
    dataset = replicate(scale, work / f"x{scale}")
    episodes_file, full = hide_last(dataset, args.new_episodes)
    labels = work / f"labels-x{scale}"
    config = RelabelConfig(source=str(dataset), dst=str(labels), model=ModelSpec(), partition_frames=args.partition_frames)
    first = run_relabel(config, LocalEngine(), progress=False)
    pq.write_table(full, episodes_file)

    measured: dict = {}
    original = VersionLabels.finalize

    def finalize(self, current):
        if before is not None:  # the directory as this finalize finds it, for the old finalize
            shutil.copytree(labels, work / f"labels-x{scale}-before")
        measured["incremental"], result = measure(reads, lambda: original(self, current))
        measured["current"] = current
        return result

    VersionLabels.finalize = finalize
    try:
        second = run_relabel(config, LocalEngine(), progress=False)
    finally:
        VersionLabels.finalize = original
    key, current = second.model_key, measured.pop("current")
    if before is not None:
        old = before.LabelsStore(str(work / f"labels-x{scale}-before")).version(key)
        measured["before"] = measure(reads, lambda: old.finalize(current))[0]
    version = LabelsStore(str(labels)).version(key)  # a fresh object: reads every episodes part
    measured["rerun"] = measure(reads, lambda: version.finalize(current))[0]
    parts = len(list((labels / spec.VERSIONS_DIR / key / spec.FRAMES_DIR).glob("part-*.parquet")))
    return {
        "episodes": first.episodes_labelled + second.episodes_labelled,
        "new_episodes": second.episodes_labelled,
        "new_frames": second.frames_labelled,
        "frames_parts": parts,
        **measured,
    }


def ratios(small: dict, large: dict) -> dict:
    out = {}
    for name in ("incremental", "before", "rerun"):
        if name in small and name in large:
            a, b = small[name], large[name]
            out[name] = {
                "seconds": round(b["seconds"] / a["seconds"], 2),
                "bytes_read": round(b["bytes_read"] / a["bytes_read"], 2),
                "frames_parts_opened": f"{a['files_opened']['frames']} -> {b['files_opened']['frames']}",
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs=2, default=[2, 8])
    parser.add_argument("--new-episodes", type=int, default=2)
    parser.add_argument("--partition-frames", type=int, default=120)
    parser.add_argument("--before", default="95001d364f9384f8c3a663a8b393490ed7ae684d")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "finalize_cost.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wvm-finalize-"))
    reads, before = Reads(), labels_store_before(args.before)
    started = time.perf_counter()
    try:
        results = {f"x{s}": one_scale(s, work, args, reads, before) for s in args.scales}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = (results[f"x{s}"] for s in args.scales)
    results["ratio_large_over_small"] = ratios(small, large)
    results["dataset_ratio"] = round(large["episodes"] / small["episodes"], 2)
    results["seconds_total"] = round(time.perf_counter() - started, 1)
    write_results(results, args.out)


if __name__ == "__main__":
    main()
