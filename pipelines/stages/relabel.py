"""Relabel stage: value-label one partition of episodes with a model and write its outputs.

For each episode: read its per-frame table and only the frames the model samples, send one
request per episode (pipelines.windows) through the model handler (pipelines.inference),
batching across the partition's episodes while a background thread decodes the next ones,
then compute advantages, weights and the episode summary (pipelines.weights), and write the
partition's progress array, frames and sidecar parts, and last its commit record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.errors import EpisodeError, WvmError
from pipelines.inference import ModelSpec, ValueModelHandler
from pipelines.labels_store import LabelsStore
from pipelines.sources import SourceEpisode, open_source
from pipelines.stages.base import PartitionResult, Stage, failure_row
from pipelines.store import utcnow
from pipelines.weights import AdvantageHistogram, awr_weights, binary_weights, chunk_advantage, episode_summary, top_weights
from pipelines.windows import EpisodeChain, label_episodes
from schemas import labels as spec
from schemas.validate import conform

DECODE_AHEAD = 4  # episodes decoded ahead of the model: enough to refill finished chains


@dataclass(frozen=True)
class LabelEpisode:
    episode_id: str
    fingerprint: str
    source_uri: str
    episode_index: int
    task: str
    embodiment: str
    fps: float
    length: int
    camera: str
    offset: int  # first row in the partition's progress array
    source: SourceEpisode  # as the source listed it (its reader finds the data from it)
    has_source_index: bool = True  # the source has LeRobot's global frame index: write a sidecar


@dataclass(frozen=True)
class LabelTask:
    partition_id: str
    rows: int  # length of the partition's progress array
    episodes: tuple[LabelEpisode, ...]

    @property
    def source_episodes(self) -> tuple[SourceEpisode, ...]:
        return tuple(e.source for e in self.episodes)


@dataclass
class LabelResult(PartitionResult):
    windows: int = 0  # model requests: one per episode since model v2


@dataclass(unsafe_hash=True)
class LabelPartition(Stage[LabelTask, LabelResult]):
    source_url: str
    dst_url: str
    model_key: str
    model: ModelSpec
    run_id: str
    code_version: str
    advantage_horizon: int = spec.ADVANTAGE_HORIZON
    batch_size: int = 64
    skip_bad_episodes: bool = False
    name = "relabel"

    def setup(self) -> None:
        self._source = open_source(self.source_url)
        self._labels = LabelsStore(self.dst_url).version(self.model_key)
        info = self._labels.model_info()
        # Every answer must come from the model this run labels with (a server may be redeployed).
        pinned = replace(self.model, expected_version=self.model.expected_version or f"{info[spec.MODEL_VERSION]}@{info[spec.CHECKPOINT_HASH]}")
        self._handler: ValueModelHandler = pinned.handler()
        self._handler.load()
        if (self._handler.version, self._handler.checkpoint_hash) != (info[spec.MODEL_VERSION], info[spec.CHECKPOINT_HASH]):
            raise WvmError(
                f"model {self._handler.version}@{self._handler.checkpoint_hash} is not the one this run labels with "
                f"({info[spec.MODEL_VERSION]}@{info[spec.CHECKPOINT_HASH]})"
            )

    def close(self) -> None:
        if hasattr(self, "_handler"):
            self._handler.close()

    def item_key(self, item: LabelTask) -> str:
        return item.partition_id

    def _decoded(self, episodes: tuple[LabelEpisode, ...], failures: list[dict]) -> Iterator[tuple[EpisodeChain, Any, np.ndarray]]:
        """(chain, frame table, sampled frames) of each good episode, in order. A background
        thread decodes a few episodes ahead so decoding overlaps the model (PyAV, Zarr and
        torch all release the GIL); bad episodes go to `failures` or raise."""

        def decode(episode: LabelEpisode):
            chain = EpisodeChain(episode.episode_id, episode.length, episode.fps, episode.task, self._handler.geometry)
            table = self._source.read_frames(episode.source)
            return chain, table, np.stack(list(self._source.decode(episode.source, episode.camera, table, chain.samples)))

        with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
            ahead = deque(pool.submit(decode, e) for e in episodes[:DECODE_AHEAD])
            for i, episode in enumerate(episodes):
                future = ahead.popleft()
                if i + DECODE_AHEAD < len(episodes):
                    ahead.append(pool.submit(decode, episodes[i + DECODE_AHEAD]))
                try:
                    decoded = future.result()
                except EpisodeError as error:
                    if not self.skip_bad_episodes:
                        for rest in ahead:
                            rest.cancel()
                        raise
                    failures.append(failure_row(episode.source_uri, error, self.run_id))
                    continue
                yield decoded

    def process(self, task: LabelTask) -> LabelResult:
        chains, tables, images, failures = [], {}, {}, []

        def started(decoded: Iterator[tuple[EpisodeChain, Any, np.ndarray]]) -> Iterator[EpisodeChain]:
            for chain, table, sampled in decoded:
                chains.append(chain)
                tables[chain.key], images[chain.key] = table, sampled
                yield chain

        def fetch(chain: EpisodeChain, indices: np.ndarray) -> np.ndarray:
            return images[chain.key][np.searchsorted(chain.samples, indices)]

        def fetch_states(chain: EpisodeChain, indices: np.ndarray) -> np.ndarray | None:
            state = tables[chain.key].state  # the robot's own motion, where the source records it
            return None if state is None else state[indices]

        label_episodes(started(self._decoded(task.episodes, failures)), fetch, self._handler.answer_batch, self.batch_size, fetch_states)
        by_id = {e.episode_id: e for e in task.episodes}
        frames, sidecar, episodes, progress = [], [], [], []
        stamps = {
            spec.MODEL_VERSION: self._handler.version,
            spec.CHECKPOINT_HASH: self._handler.checkpoint_hash,
            spec.CODE_VERSION: self.code_version,
        }
        for chain in chains:
            episode, table = by_id[chain.key], tables[chain.key]
            values = chain.frame_values()
            advantage = chunk_advantage(values, self.advantage_horizon)
            n = len(values)
            stamp_columns = {k: [v] * n for k, v in stamps.items()} | {spec.SOURCE_FINGERPRINT: [episode.fingerprint] * n}
            frames.append(
                pa.table(
                    {
                        spec.EPISODE_ID: [episode.episode_id] * n,
                        spec.EPISODE_INDEX: np.full(n, episode.episode_index, np.int64),
                        spec.FRAME_INDEX: table.frame_index,
                        spec.SOURCE_INDEX: table.index,
                        spec.TIMESTAMP: table.timestamp,
                        spec.PROGRESS: values,
                        spec.ADVANTAGE: advantage,
                        spec.W_BINARY: binary_weights(advantage),
                        # provisional: set below to the partition's own cut, then `finalize`
                        # applies the dataset-level cut after the run
                        spec.W_TOP70: binary_weights(advantage),
                        spec.W_AWR: awr_weights(advantage),
                        **stamp_columns,
                    }
                )
            )
            if episode.has_source_index:
                sidecar.append(
                    pa.table(
                        {
                            spec.SOURCE_INDEX: table.index,
                            spec.EPISODE_INDEX: np.full(n, episode.episode_index, np.int64),
                            spec.FRAME_INDEX: table.frame_index,
                            spec.PROGRESS_SPARSE: values,
                        }
                    )
                )
            progress.append((episode.offset, values))
            episodes.append(
                {
                    spec.EPISODE_ID: episode.episode_id,
                    spec.EPISODE_INDEX: episode.episode_index,
                    spec.SOURCE_URI: episode.source_uri,
                    spec.TASK: episode.task,
                    spec.EMBODIMENT: episode.embodiment,
                    spec.CAMERA: episode.camera,
                    spec.LENGTH: n,
                    spec.FPS: episode.fps,
                    **episode_summary(values, chain.success),
                    spec.OOD_SCORE: chain.ood,
                    spec.TRUSTED: bool(chain.ood <= spec.OOD_TRUST_LIMIT),
                    spec.PARTITION_ID: task.partition_id,
                    spec.PROGRESS_PATH: f"{spec.PROGRESS_DIR}/{task.partition_id}/{self.run_id}",
                    spec.PROGRESS_OFFSET: episode.offset,
                    spec.RUN_ID: self.run_id,
                    spec.LABELLED_AT: utcnow(),
                    **stamps,
                    spec.SOURCE_FINGERPRINT: episode.fingerprint,
                }
            )
        if episodes:
            labels = self._labels
            cameras = sorted({by_id[c.key].camera for c in chains})
            labels.write_progress(f"{task.partition_id}/{self.run_id}", task.rows, progress, attrs={spec.ATTR_CAMERA: ", ".join(cameras)})
            frames_table = conform(pa.concat_tables(frames), spec.FRAMES, "frames")
            # The partition's advantage histogram goes into its commit record (finalize sums them
            # into the dataset-level cut); until finalize runs, w_top70 is the partition-local
            # top-70 % cut, recorded and marked provisional.
            advantage = frames_table.column(spec.ADVANTAGE).to_numpy()
            histogram = AdvantageHistogram()
            histogram.add(advantage)
            local_cut = histogram.cut_keeping(spec.TOP_FRACTION)
            w_top70 = pa.array(top_weights(advantage, local_cut), pa.float32())
            frames_table = frames_table.set_column(frames_table.schema.get_field_index(spec.W_TOP70), spec.FRAMES.field(spec.W_TOP70), w_top70)
            labels.write_part(
                spec.FRAMES_DIR,
                task.partition_id,
                frames_table,
                metadata={spec.TOP70_KEY: str(local_cut).encode(), spec.TOP70_PROVISIONAL_KEY: b"1"},
            )
            if sidecar:
                labels.write_part(spec.SIDECAR_PARTS_DIR, task.partition_id, conform(pa.concat_tables(sidecar), spec.SIDECAR, "sidecar"))
            labels.commit(task.partition_id, pa.Table.from_pylist(episodes), histogram)
        return LabelResult(task.partition_id, len(episodes), sum(e[spec.LENGTH] for e in episodes), failures, windows=len(chains))
