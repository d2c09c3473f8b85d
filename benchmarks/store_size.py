"""Episode-store bytes against the source's: the real G1 humanoid set (LeRobot v2.1, AV1 video)
ingested at the default frame size (longer side 128) and at full resolution, plus the image
codec levels on the same stored frames (compression ratio and time per frame, side by side)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, write_results
from numcodecs import Blosc

from pipelines.engines.base import LocalEngine
from pipelines.ingest import IngestConfig, run_ingest
from pipelines.stages.ingest import DecodeOptions
from pipelines.store import EpisodeStore
from schemas import episode_store as layout

G1 = ROOT.parent / "shared" / "fixtures" / "g1_bottle_v21"


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ingest(out: Path, decode: DecodeOptions) -> dict:
    started = time.perf_counter()
    summary = run_ingest(IngestConfig(str(G1), str(out), decode=decode), LocalEngine(), progress=False)
    seconds = time.perf_counter() - started
    stored = tree_bytes(out)
    return {"bytes": stored, "bytes_per_frame": round(stored / summary.frames_written), "frames": summary.frames_written, "seconds": round(seconds, 1)}


def codec_levels(store_url: str, frames: int = 256) -> dict:
    """Ratio and ms per frame of Blosc-zstd levels on the first stored frames (chunks of 4)."""
    store = EpisodeStore(store_url)
    row = store.episodes().to_pylist()[0]
    sample = store.read_frames(row, row[layout.CAMERAS][0], 0, frames)
    results = {}
    for level in (1, 3, 5, 9):
        codec = Blosc("zstd", level, Blosc.NOSHUFFLE)
        started = time.perf_counter()
        encoded = sum(len(codec.encode(np.ascontiguousarray(sample[i : i + 4]))) for i in range(0, len(sample), 4))
        results[f"zstd{level}"] = {"ratio": round(sample.nbytes / encoded, 2), "ms_per_frame": round(1000 * (time.perf_counter() - started) / len(sample), 2)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/store_size.json")
    args = parser.parse_args()
    source = tree_bytes(G1)
    with tempfile.TemporaryDirectory() as work:
        default = ingest(Path(work) / "default", DecodeOptions())
        full = ingest(Path(work) / "full", DecodeOptions(max_side=0))
        levels = codec_levels(str(Path(work) / "default"))
    write_results(
        {
            "source_bytes": source,
            "default_max_side_128": {**default, "x_source": round(default["bytes"] / source, 2)},
            "full_resolution": {**full, "x_source": round(full["bytes"] / source, 2)},
            "codec_levels_at_default_size": levels,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
