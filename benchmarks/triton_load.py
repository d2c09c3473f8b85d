"""Load test of the Triton server: latency, rejections and memory at rising client concurrency.

    python benchmarks/triton_load.py [--clients 1 4 16 64 200] [--requests 2] [--episodes 8]
        [--timeout 120] [--out benchmarks/results/triton_load.json]

A real `tritonserver` on the project's model repository (unchanged: dynamic batching with
`default_queue_policy { max_queue_size }`, the admission control) is driven by C concurrent
clients, each its own gRPC connection sending `--requests` requests of `--episodes` episodes
(24 samples of 64x64 frames each, the shipped model's geometry) back to back, with no retry:
this measures the server, not our client's backoff. For each C: p50/p99 latency of answered
requests, how many were rejected at admission (gRPC UNAVAILABLE, "exceeds maximum queue size")
and how fast, how many timed out or failed otherwise, and the server's peak resident memory
(its process tree, sampled every 50 ms). Overload must end in fast, clear rejections (the
client retries those with backoff), never in timeouts or memory that grows with the queue.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
from common import ROOT, write_results
from tritonclient.utils import InferenceServerException

from schemas import inference as contract
from wvm.serving.server import TritonServer, free_port


def request_inputs(episodes: int, samples: int, side: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, size=(episodes, samples, side, side, 3), dtype=np.uint8)
    inputs = [
        grpcclient.InferInput(contract.FRAMES, list(frames.shape), "UINT8"),
        grpcclient.InferInput(contract.TASK, [episodes, 1], "BYTES"),
        grpcclient.InferInput(contract.LENGTH, [episodes, 1], "INT32"),
    ]
    inputs[0].set_data_from_numpy(frames)
    inputs[1].set_data_from_numpy(np.array([[b"pick up the block"]] * episodes, dtype=np.object_))
    inputs[2].set_data_from_numpy(np.full((episodes, 1), samples, np.int32))
    return inputs


class MemoryWatch(threading.Thread):
    """Peak resident memory of a process and its children (the Python backend stubs)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.05)


def level(url: str, clients: int, requests: int, episodes: int, samples: int, side: int, timeout: float, pid: int) -> dict:
    answered, rejected, timed_out, other = [], [], [], []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        connection = grpcclient.InferenceServerClient(url)
        inputs = request_inputs(episodes, samples, side, seed=i)
        start.wait()
        for _ in range(requests):
            t0 = time.perf_counter()
            try:
                connection.infer(contract.MODEL_NAME, inputs, client_timeout=timeout)
                bucket, detail = answered, None
            except InferenceServerException as exc:
                status, detail = str(exc.status()), str(exc.message())
                bucket = rejected if "UNAVAILABLE" in status else timed_out if "DEADLINE" in status else other
            with lock:
                bucket.append((time.perf_counter() - t0, detail))
        connection.close()

    watch = MemoryWatch(pid)
    watch.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    watch.stop.set()
    watch.join()

    def pct(values, q):
        return round(1000 * float(np.percentile([v for v, _ in values], q)), 1) if values else None

    return {
        "clients": clients,
        "requests": clients * requests,
        "answered": len(answered),
        "rejected": len(rejected),
        "timed_out": len(timed_out),
        "other_errors": len(other),
        "other_error_messages": sorted({d for _, d in other})[:3],
        "rejection_message": rejected[0][1] if rejected else None,
        "answered_p50_ms": pct(answered, 50),
        "answered_p99_ms": pct(answered, 99),
        "rejected_p99_ms": pct(rejected, 99),
        "episodes_per_s": round(len(answered) * episodes / wall, 1),
        "wall_s": round(wall, 1),
        "server_peak_rss_mb": round(watch.peak / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64, 200])
    parser.add_argument("--requests", type=int, default=2, help="requests per client, back to back")
    parser.add_argument("--episodes", type=int, default=8, help="episodes per request")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=120.0, help="client deadline per request, seconds")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "triton_load.json"))
    args = parser.parse_args()

    server = TritonServer(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with server:
        url, pid = server.grpc_url, server.process.pid
        grpcclient.InferenceServerClient(url).infer(contract.MODEL_NAME, request_inputs(1, args.samples, args.side, 0))  # warm-up
        rows = []
        for clients in args.clients:
            row = level(url, clients, args.requests, args.episodes, args.samples, args.side, args.timeout, pid)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
        queue = next((line.strip() for line in Path(server.model_repository / "wvm" / "config.pbtxt").read_text().splitlines() if "max_queue_size" in line), "")
    write_results({"config": vars(args), "admission": queue, "levels": rows}, args.out)


if __name__ == "__main__":
    main()
