"""The model on a real Triton Inference Server: same values as in-process, dynamic batching,
request validation, and a client that retries and then fails clearly."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import METAWORLD_MINI, free_port
from pipelines.windows import EpisodeChain
from schemas import inference as contract
from wvm.evaluate import load_bench
from wvm.handlers import LocalHandler
from wvm.serving.client import ServerUnavailable, TritonHandler

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def windows(shipped_checkpoint):
    """The request of every episode of metaworld_mini (real AV1-decoded frames), four times over
    (72 requests: enough to fill the server's batches)."""
    local = LocalHandler(str(shipped_checkpoint))
    local.load()
    frames, texts, lengths = [], [], []
    for e in load_bench(str(METAWORLD_MINI)):
        chain = EpisodeChain(str(e.index), len(e.frames), e.fps, e.task, local.geometry)
        indices, count = chain.request()
        frames.append(e.frames[indices])
        texts.append(e.task)
        lengths.append(count)
    return local, np.stack(frames * 4), texts * 4, np.array(lengths * 4, np.int32)


@pytest.fixture(scope="module")
def window_states(windows):
    """The robot state at each request's samples (as `windows`), every other request's left out
    (NaN: an episode recorded without one)."""
    local = windows[0]
    states = []
    for e in load_bench(str(METAWORLD_MINI)):
        indices, _ = EpisodeChain(str(e.index), len(e.frames), e.fps, e.task, local.geometry).request()
        states.append(e.states[indices])
    states = np.stack(states * 4).astype(np.float32)
    states[1::2] = np.nan
    return states


@pytest.mark.parametrize("with_states", [False, True], ids=["frames", "frames+state"])
def test_triton_values_equal_in_process_values(triton_server, windows, window_states, with_states):
    local, frames, texts, lengths = windows
    states = window_states if with_states else None
    with TritonHandler(triton_server.grpc_url) as remote:
        assert (remote.version, remote.checkpoint_hash) == (local.version, local.checkpoint_hash)
        assert remote.geometry == local.geometry
        got, ood, success = remote.answer_batch(frames, texts, lengths, states)
    parts = [
        local.answer_batch(frames[i : i + 64], texts[i : i + 64], lengths[i : i + 64], None if states is None else states[i : i + 64])
        for i in range(0, len(frames), 64)
    ]
    assert got.shape == (len(frames), local.geometry.samples_per_episode) and ood.shape == success.shape == (len(frames),)
    np.testing.assert_allclose(got, np.concatenate([p.values for p in parts]), atol=1e-5)
    np.testing.assert_allclose(ood, np.concatenate([p.ood for p in parts]), rtol=1e-4)
    np.testing.assert_allclose(success, np.concatenate([p.success for p in parts]), atol=1e-5)
    assert np.all(ood > 0)  # the shipped checkpoint has an OOD reference
    assert np.all((success > 0) & (success < 1))  # the shipped checkpoint judges success
    if with_states and local._loaded.config.value_reads_state:
        plain = local.run_batch(frames[:64], texts[:64], lengths[:64])
        assert not np.allclose(got[:64:2], plain[::2], atol=1e-3)  # the state reached the model
        np.testing.assert_allclose(got[1:64:2], plain[1::2], atol=1e-5)  # NaN: as if none was sent


def test_server_batches_concurrent_requests(triton_server, windows):
    _, frames, texts, lengths = windows
    with TritonHandler(triton_server.grpc_url, request_size=1, max_in_flight=32) as remote:
        before = remote.server_metrics()
        remote.run_batch(frames[:64], texts[:64], lengths[:64])  # 64 single-episode requests at once
        # The server counts a request once its execution has finished, which can be just after
        # the client has the response: give the counters a moment to catch up.
        deadline = time.monotonic() + 10
        while (after := remote.server_metrics())["requests"] - before["requests"] < 64 and time.monotonic() < deadline:
            time.sleep(0.1)
    requests = after["requests"] - before["requests"]
    executions = after["executions"] - before["executions"]
    assert requests == 64
    assert executions < requests, f"{executions} executions for {requests} requests: no dynamic batching"


def _inputs(frames, task, lengths, frames_dtype="UINT8", states=None) -> list:
    """A raw request, as any gRPC client would send it (bad ones included)."""
    inputs = [
        grpcclient.InferInput(contract.FRAMES, list(frames.shape), frames_dtype),
        grpcclient.InferInput(contract.TASK, [len(task), 1], "BYTES"),
        grpcclient.InferInput(contract.LENGTH, [len(lengths), 1], "INT32"),
    ]
    inputs[0].set_data_from_numpy(frames)
    inputs[1].set_data_from_numpy(np.array([[t if isinstance(t, bytes) else t.encode()] for t in task], dtype=np.object_).reshape(-1, 1))
    inputs[2].set_data_from_numpy(np.asarray(lengths, np.int32).reshape(-1, 1))
    if states is not None:
        inputs.append(grpcclient.InferInput(contract.STATE, list(states.shape), "FP32"))
        inputs[3].set_data_from_numpy(states)
    return inputs


def _infer(url, frames, task, lengths, frames_dtype="UINT8", states=None):
    return grpcclient.InferenceServerClient(url).infer(contract.MODEL_NAME, _inputs(frames, task, lengths, frames_dtype, states))


def test_overload_is_rejected_at_admission_not_queued_without_bound(triton_server, windows):
    """96 clients send one 8-episode request each at the same moment (no client retries). The
    server holds what its queue bound admits (config.pbtxt max_queue_size) and rejects the rest
    at once with UNAVAILABLE, which TritonHandler retries with backoff; nothing times out or fails
    otherwise, and the server keeps serving. benchmarks/triton_load.py measures the same at scale."""
    _, frames, texts, lengths = windows
    clients, outcomes = 96, []
    start = threading.Barrier(clients)

    def client() -> None:
        connection = grpcclient.InferenceServerClient(triton_server.grpc_url)
        inputs = _inputs(frames[:8], texts[:8], lengths[:8])
        start.wait()
        try:
            connection.infer(contract.MODEL_NAME, inputs, client_timeout=600)
            outcomes.append("answered")
        except InferenceServerException as exc:
            outcomes.append(f"{exc.status()}: {exc.message()}")
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rejected = [o for o in outcomes if o != "answered"]
    assert len(outcomes) == clients and 0 < len(rejected) < clients
    assert all("UNAVAILABLE" in o and "Exceeds maximum queue size" in o for o in rejected), set(rejected)
    local, *_ = windows
    values = _infer(triton_server.grpc_url, frames[:2], texts[:2], lengths[:2]).as_numpy(contract.VALUES)
    assert values.shape == (2, local.geometry.samples_per_episode)  # still serving


@pytest.mark.parametrize(
    "case,expected",
    [
        ("wrong dtype", "data-type is 'FP32', but model 'wvm' expects 'UINT8'"),
        ("wrong rank", "unexpected shape for input 'FRAMES'"),
        ("too many frames", "unexpected shape for input 'FRAMES'"),
        ("oversized batch", "batch-size must be <= 64"),
        ("empty text", "TASK must be non-empty text"),
        ("length out of range", "LENGTH must be in 1..24"),
        ("tiny frames", "frame size 4x4 outside"),
        ("huge frames", "frame size 1025x8 outside"),
        ("over-long task", "TASK longer than 1024 bytes"),
        ("task not utf-8", "TASK must be UTF-8 text"),
        ("task count mismatch", "input 'TASK' batch size does not match other inputs"),
        ("state partly missing", "STATE of episode 0 is partly NaN"),
        pytest.param("empty batch", "batch of 0 episodes; allowed 1..64", marks=pytest.mark.xfail(strict=True, reason=(
            "Triton 2.45's Python backend stub fails a request with a zero batch while loading its inputs, before "
            "model.py runs, with 'cannot reshape array of size 0'; batched with others, it fails them too. Our "
            "client never sends B=0; an upgrade that fixes the stub turns this xfail into a failure to notice."))),
    ],
)
def test_malformed_requests_get_errors_and_the_server_keeps_serving(triton_server, windows, case, expected):
    k = windows[1].shape[1]  # frames per request of the served model
    ok = np.zeros((1, k, 32, 32, 3), np.uint8)
    args = {
        "wrong dtype": (ok.astype(np.float32), ["drawer open"], [k], "FP32"),
        "wrong rank": (np.zeros((1, k, 32, 32), np.uint8), ["drawer open"], [k]),
        "too many frames": (np.zeros((1, k + 4, 32, 32, 3), np.uint8), ["drawer open"], [k]),
        "oversized batch": (np.zeros((65, k, 8, 8, 3), np.uint8), ["x"] * 65, [k] * 65),
        "empty text": (ok, [""], [k]),
        "length out of range": (ok, ["drawer open"], [k + 1]),
        "tiny frames": (np.zeros((1, k, 4, 4, 3), np.uint8), ["drawer open"], [k]),
        "huge frames": (np.zeros((1, k, 1025, 8, 3), np.uint8), ["drawer open"], [k]),
        "over-long task": (ok, ["x" * 1025], [k]),
        "task not utf-8": (ok, [b"\xff\xfe drawer"], [k]),
        "task count mismatch": (np.zeros((2, k, 32, 32, 3), np.uint8), ["drawer open"], [k, k]),
        "empty batch": (np.zeros((0, k, 32, 32, 3), np.uint8), [], []),
        "state partly missing": (ok, ["drawer open"], [k], "UINT8", np.where(np.arange(4) == 1, np.nan, 0.0).astype(np.float32) * np.ones((1, k, 4), np.float32)),
    }[case]
    with pytest.raises(InferenceServerException) as info:
        _infer(triton_server.grpc_url, *args)
    assert expected in info.value.message()
    assert triton_server.ready()
    result = _infer(triton_server.grpc_url, ok, ["drawer open"], [k])  # still serving
    assert result.as_numpy(contract.VALUES).shape == (1, k)


def test_one_bad_request_in_a_batch_does_not_fail_the_others(triton_server, windows):
    good = np.zeros((1, windows[1].shape[1], 32, 32, 3), np.uint8)
    outcomes = {}

    def send(name, task):
        try:
            outcomes[name] = _infer(triton_server.grpc_url, good, [task], [good.shape[1]]).as_numpy(contract.VALUES)
        except InferenceServerException as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=send, args=(i, "" if i == 3 else "drawer open")) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(outcomes[3], InferenceServerException)
    assert all(isinstance(outcomes[i], np.ndarray) for i in range(8) if i != 3)


def test_unreachable_server_is_a_clear_error():
    handler = TritonHandler(f"127.0.0.1:{free_port()}", ready_timeout_s=2)
    with pytest.raises(ServerUnavailable, match=r"not ready after 2s"):
        handler.load()
    handler.close()


def test_frozen_then_stopped_server_client_fails_fast_then_retries_then_fails(shipped_checkpoint, tmp_path, windows):
    import os
    import signal

    from wvm.serving.client import LIVENESS_PROBE_S
    from wvm.serving.server import TritonServer

    _, frames, texts, lengths = windows
    server = TritonServer(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_file=tmp_path / "log")
    server.start()
    handler = TritonHandler(server.grpc_url, retries=3, backoff_s=0.2, timeout_s=5)
    try:
        handler.load()
        handler.run_batch(frames[:8], texts[:8], lengths[:8])
        # frozen (SIGSTOP: as a deadlocked or swapping server): declared dead after one request
        # timeout and one liveness probe, not after every retry's timeout
        os.kill(server.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            with pytest.raises(ServerUnavailable, match=r"is not answering: a request timed out after 5 s"):
                handler.run_batch(frames[:8], texts[:8], lengths[:8])
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert time.monotonic() - started < 5 + LIVENESS_PROBE_S + 5
        handler.run_batch(frames[:8], texts[:8], lengths[:8])  # thawed: serves again
        # stopped: retried with back-off, then a clear error
        server.stop()
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match=r"unavailable after 4 attempts"):
            handler.run_batch(frames[:8], texts[:8], lengths[:8])
        assert time.monotonic() - started >= 0.2 + 0.4 + 0.8  # backed off between attempts
    finally:
        handler.close()
        server.stop()


def test_stub_environment_is_per_installation_and_built_once_when_raced(tmp_path, monkeypatch):
    # two servers of one checkout starting at once, and another checkout's cache beside it
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from wvm.serving import server

    monkeypatch.setenv("WVM_CACHE", str(tmp_path))
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: server.prepare_stub_env(), range(2))
    assert first == second and (first / ".wvm-ready").exists()
    leftovers = [p.name for p in first.parent.iterdir() if p != first]
    assert leftovers == []  # the loser's build is cleaned up
    numpy = subprocess.run([str(first / "bin" / "python"), "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True)
    assert numpy.stdout.startswith("1.26"), numpy.stderr
    monkeypatch.setattr(server, "_site_packages", lambda: tmp_path / "another-checkout" / "site-packages")
    assert server.stub_env_path() != first and server.stub_env_path().parent == first.parent


def test_a_port_held_by_another_server_is_refused_before_starting():
    import socket

    from wvm.serving.server import ServerError, TritonServer

    with socket.socket() as other:  # another server already listening on the HTTP port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        server = TritonServer(http_port=port, grpc_port=free_port(), metrics_port=free_port())
        with pytest.raises(ServerError, match=rf"http port {port} on 127\.0\.0\.1 already in use"):
            server.start()
        assert server.process is None  # nothing was started


@pytest.mark.slow
def test_wvm_serve_listens_where_it_says_and_dies_with_kill_9(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys

    import psutil

    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "wvm.cli", "serve", "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    serve = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    spawned = [psutil.Process(serve.pid)]  # only what this test started is cleaned up (not session fixtures)
    try:
        ready = json.loads(serve.stdout.readline())
        assert ready["ready"] and ready["grpc"] == f"127.0.0.1:{ports[1]}"
        (triton,) = [p for p in spawned[0].children() if "tritonserver" in p.name()]
        spawned += [triton, *triton.children(recursive=True)]
        listening = {c.laddr.port: c.laddr.ip.removeprefix("::ffff:") for c in triton.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        assert {listening.get(p) for p in ports} == {"127.0.0.1"}, listening  # not 0.0.0.0
        os.kill(serve.pid, signal.SIGKILL)
        serve.wait(10)
        gone, _ = psutil.wait_procs([triton], timeout=60)
        assert gone, "tritonserver outlived a kill -9 of wvm serve"
    finally:
        for process in spawned:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
