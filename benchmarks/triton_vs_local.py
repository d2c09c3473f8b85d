"""Throughput and latency of the model through Triton vs in-process, on the same episode requests.

    python benchmarks/triton_vs_local.py [--repeat 4] [--out benchmarks/results/triton_vs_local.json]

Requests are every episode request the pipeline sends when labelling metaworld_mini (real AV1 frames),
repeated. Both sides use the shipped checkpoint and the same torch thread count; the server
runs the project's model repository unchanged. One run measures both, side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import METAWORLD_MINI, free_port

from pipelines.windows import EpisodeChain
from wvm.evaluate import load_bench
from wvm.handlers import LocalHandler
from wvm.serving.client import TritonHandler
from wvm.serving.server import TritonServer


def collect_windows(handler, repeat: int):
    """The request of every episode (one per episode: its samples), `repeat` times over."""
    frames, texts, lengths = [], [], []
    for e in load_bench(str(METAWORLD_MINI)):
        chain = EpisodeChain(str(e.index), len(e.frames), e.fps, e.task, handler.geometry)
        indices, count = chain.request()
        frames.append(e.frames[indices])
        texts.append(e.task)
        lengths.append(count)
    return np.stack(frames * repeat), texts * repeat, np.array(lengths * repeat, np.int32)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="windows per in-process call / per client batch")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "triton_vs_local.json"))
    args = parser.parse_args()

    local = LocalHandler()
    local.load()
    frames, texts, lengths = collect_windows(local, args.repeat)
    n = len(frames)
    frames_per_window = frames.shape[1]

    def run_local():
        for s in range(0, n, args.batch):
            local.run_batch(frames[s : s + args.batch], texts[s : s + args.batch], lengths[s : s + args.batch])

    run_local()  # warm-up
    local_before = timed(run_local)

    server = TritonServer(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with server:
        sweep = []
        for in_flight in (1, 2, 4, 8, 16):
            with TritonHandler(server.grpc_url, max_in_flight=in_flight, request_size=16) as remote:
                remote.run_batch(frames[:64], texts[:64], lengths[:64])  # warm-up
                remote.latencies.clear()
                before = remote.server_metrics()

                def run_remote():
                    # the pipeline's pattern: a large batch of windows per lockstep, split into requests
                    for s in range(0, n, 256):
                        remote.run_batch(frames[s : s + 256], texts[s : s + 256], lengths[s : s + 256])

                seconds = timed(run_remote)
                after = remote.server_metrics()
                lat = np.array(remote.latencies) * 1000
            sweep.append(
                {
                    "max_in_flight": in_flight,
                    "seconds": seconds,
                    "windows_per_s": n / seconds,
                    "latency_ms_p50": float(np.percentile(lat, 50)),
                    "latency_ms_p99": float(np.percentile(lat, 99)),
                    "requests": after["requests"] - before["requests"],
                    "executions": after["executions"] - before["executions"],
                }
            )
            print(json.dumps(sweep[-1]), flush=True)
    # In-process timed before and after the sweep, so a noisy neighbour shows up as a spread.
    local_after = timed(run_local)
    local_s = (local_before + local_after) / 2
    results = {
        "windows": n,
        "frame_size": list(frames.shape[2:4]),
        "local": {"seconds": local_s, "windows_per_s": n / local_s, "seconds_before_after": [local_before, local_after]},
    }
    best = max(sweep, key=lambda r: r["windows_per_s"])
    results["triton"] = sweep
    results["best_triton_vs_local"] = best["windows_per_s"] / results["local"]["windows_per_s"]
    for side in [results["local"], *sweep]:
        side["frames_per_s"] = side["windows_per_s"] * frames_per_window
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps({"local_windows_per_s": results["local"]["windows_per_s"], "best_triton_vs_local": results["best_triton_vs_local"]}))


if __name__ == "__main__":
    main()
