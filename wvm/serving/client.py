"""The Triton client: async gRPC with a bounded number of requests in flight.

`TritonHandler` implements the same "run a batch of windows" interface as the in-process
model. A batch is split into requests of at most `request_size` windows, sent concurrently
with at most `max_in_flight` outstanding (backpressure: memory stays flat however large the
job), each with a deadline; UNAVAILABLE / DEADLINE_EXCEEDED answers are retried with
exponential backoff. Every answer carries the model version, which must not change mid-run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from pipelines.errors import WvmError
from pipelines.windows import WindowGeometry
from schemas import inference as contract
from wvm.handlers import ValueModelHandler

log = logging.getLogger(__name__)

RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED")
TIMED_OUT = "StatusCode.DEADLINE_EXCEEDED"
LIVENESS_PROBE_S = 5.0  # a live server answers this at once, however busy its model is
DEADLINE_GRACE_S = 2.0  # our own deadline's slack over gRPC's (see _within)


async def _within(call, timeout_s: float):
    """Await a gRPC call that carries its own `client_timeout`, and enforce that deadline here too:
    against a frozen (SIGSTOPped) server grpc.aio's deadline has been seen not to fire, leaving the
    call, and every caller, waiting forever (CI, 2026-12-04). Raises what gRPC would have."""
    try:
        return await asyncio.wait_for(call, timeout_s + DEADLINE_GRACE_S)
    except asyncio.TimeoutError:
        raise InferenceServerException(f"no answer within {timeout_s:g} s", status=TIMED_OUT) from None


class ServerUnavailable(WvmError):
    """The server could not be reached (after retries)."""


class ServerRejected(WvmError):
    """The server answered with an error for a request."""


class ModelVersionMismatch(WvmError):
    pass


class TritonHandler(ValueModelHandler):
    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        model: str = contract.MODEL_NAME,
        max_in_flight: int = 8,
        request_size: int = 16,
        timeout_s: float = 60.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        ready_timeout_s: float = 60.0,
        expected_version: str | None = None,
    ):
        self.url, self.model = url, model
        self.max_in_flight, self.request_size = max_in_flight, request_size
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.ready_timeout_s = ready_timeout_s
        self.expected_version = expected_version
        self.version = ""
        self.checkpoint_hash = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: grpcaio.InferenceServerClient | None = None
        self.latencies: list[float] = []  # seconds per answered request, for benchmarks

    # -- lifecycle: a private event loop in a thread, so synchronous callers can use us ------

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def load(self) -> None:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="triton-client")
            self._thread.start()
        self._run(self._connect())

    async def _connect(self) -> None:
        self._client = grpcaio.InferenceServerClient(self.url)
        self._semaphore = asyncio.Semaphore(self.max_in_flight)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout_s
        last_error = "no answer"
        while True:
            try:
                if await self._client.is_server_ready() and await self._client.is_model_ready(self.model):
                    break
                last_error = f"model {self.model!r} not ready"
            except InferenceServerException as exc:
                last_error = str(exc)
            if loop.time() > deadline:
                raise ServerUnavailable(
                    f"Triton at {self.url} not ready after {self.ready_timeout_s:.0f}s ({last_error}); "
                    "is `wvm serve` running and is --triton-url the gRPC port?"
                )
            await asyncio.sleep(0.5)
        config = (await self._client.get_model_config(self.model, as_json=True))["config"]
        params = contract.config_parameters(config)
        self.geometry = WindowGeometry(samples_per_episode=int(params[contract.PARAM_SAMPLES_PER_EPISODE]))
        self.max_batch = int(config.get("maxBatchSize", config.get("max_batch_size")) or contract.MAX_BATCH)
        self.request_size = min(self.request_size, self.max_batch)
        # one tiny request tells the version before any real work
        probe = np.zeros((1, self.geometry.window_frames, contract.MIN_SIDE, contract.MIN_SIDE, 3), np.uint8)
        await self._infer(probe, ["version probe"], np.ones(1, np.int32), None)
        log.info("Triton %s serves %s version %s", self.url, self.model, self.version)

    def close(self) -> None:
        if self._loop is None:
            return
        if self._client is not None:
            self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._loop = None

    # -- requests ----------------------------------------------------------------------------

    def answer_batch(self, frames: np.ndarray, texts: list[str], lengths: np.ndarray, states: np.ndarray | None = None) -> contract.EpisodeAnswers:
        contract.check_window_batch(frames, texts, lengths, self.geometry.window_frames, max_batch=None)
        contract.check_state_batch(states, len(frames), self.geometry.window_frames)
        return self._run(self.run_batch_async(frames, texts, lengths, states))

    async def run_batch_async(
        self, frames: np.ndarray, texts: list[str], lengths: np.ndarray, states: np.ndarray | None = None
    ) -> contract.EpisodeAnswers:
        size = self.request_size
        parts = await asyncio.gather(
            *(
                self._infer(frames[s : s + size], texts[s : s + size], lengths[s : s + size], None if states is None else states[s : s + size])
                for s in range(0, len(frames), size)
            )
        )
        return contract.EpisodeAnswers(*(np.concatenate(a) for a in zip(*parts)))

    async def _infer(self, frames: np.ndarray, texts: list[str], lengths: np.ndarray, states: np.ndarray | None) -> contract.EpisodeAnswers:
        inputs = [
            grpcclient.InferInput(contract.FRAMES, list(frames.shape), "UINT8"),
            grpcclient.InferInput(contract.TASK, [len(texts), 1], "BYTES"),
            grpcclient.InferInput(contract.LENGTH, [len(texts), 1], "INT32"),
        ]
        inputs[0].set_data_from_numpy(np.ascontiguousarray(frames))
        inputs[1].set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
        inputs[2].set_data_from_numpy(np.asarray(lengths, np.int32).reshape(-1, 1))
        if states is not None:
            inputs.append(grpcclient.InferInput(contract.STATE, list(states.shape), "FP32"))
            inputs[3].set_data_from_numpy(np.ascontiguousarray(states, np.float32))
        outputs = [grpcclient.InferRequestedOutput(name) for name in (contract.VALUES, contract.OOD, contract.SUCCESS, contract.MODEL_VERSION)]
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                async with self._semaphore:
                    sent = time.perf_counter()
                    result = await _within(self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s), self.timeout_s)
                    self.latencies.append(time.perf_counter() - sent)
                break
            except InferenceServerException as exc:
                if str(exc.status()) not in RETRYABLE:
                    raise ServerRejected(f"Triton {self.url} rejected a request: {exc.message()}") from None
                if str(exc.status()) == TIMED_OUT and not await self._answers_liveness_probe():
                    # Frozen (stopped, deadlocked, swapping): retrying would wait out every
                    # attempt's timeout. A merely busy server still answers the probe.
                    raise ServerUnavailable(
                        f"Triton at {self.url} is not answering: a request timed out after {self.timeout_s:g} s and the "
                        f"server did not answer a liveness probe within {LIVENESS_PROBE_S:g} s"
                    ) from None
                if attempt == self.retries:
                    raise ServerUnavailable(
                        f"Triton at {self.url} unavailable after {self.retries + 1} attempts: {exc.message() or exc.status()}"
                    ) from None
                log.warning("Triton %s: %s; retry %d/%d in %.1fs", self.url, exc.status(), attempt + 1, self.retries, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self._check_version({v.decode() for v in result.as_numpy(contract.MODEL_VERSION).reshape(-1)})
        return contract.EpisodeAnswers(
            result.as_numpy(contract.VALUES).astype(np.float32),
            result.as_numpy(contract.OOD).reshape(-1).astype(np.float32),
            result.as_numpy(contract.SUCCESS).reshape(-1).astype(np.float32),
        )

    async def _answers_liveness_probe(self) -> bool:
        try:
            return bool(await _within(self._client.is_server_live(client_timeout=LIVENESS_PROBE_S), LIVENESS_PROBE_S))
        except InferenceServerException:
            return False

    def _check_version(self, answers: set[str]) -> None:
        if len(answers) != 1:
            raise ModelVersionMismatch(f"Triton {self.url} answered with several model versions {sorted(answers)}")
        version, checkpoint_hash = contract.parse_model_version(answers.pop())
        if self.expected_version and self.expected_version not in (version, f"{version}@{checkpoint_hash}"):
            raise ModelVersionMismatch(
                f"Triton {self.url} serves model version {version!r} (checkpoint {checkpoint_hash}), "
                f"expected {self.expected_version!r}"
            )
        if self.version and (version, checkpoint_hash) != (self.version, self.checkpoint_hash):
            raise ModelVersionMismatch(
                f"Triton {self.url} changed model mid-run: {self.version}@{self.checkpoint_hash} -> {version}@{checkpoint_hash}"
            )
        self.version, self.checkpoint_hash = version, checkpoint_hash

    def server_metrics(self) -> dict:
        """The model's request/execution counters from the server (to see batching at work)."""
        stats = self._run(self._client.get_inference_statistics(self.model, as_json=True))
        model = stats["model_stats"][0]
        return {
            "requests": int(model["inference_stats"].get("success", {}).get("count", 0)),
            "windows": int(model.get("inference_count", 0)),
            "executions": int(model.get("execution_count", 0)),
        }

