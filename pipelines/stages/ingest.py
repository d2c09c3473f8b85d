"""Ingest stage: decode one partition of source episodes and write it to the episode store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.errors import EpisodeError
from pipelines.sources import DEFAULT_TOLERANCE_S, Partition, Source, SourceEpisode, open_source
from pipelines.stages.base import PartitionResult, Stage, failure_row
from pipelines.store import EpisodeStore, utcnow
from schemas import episode_store as layout


@dataclass(frozen=True)
class DecodeOptions:
    """How source frames become stored frames; part of every episode's fingerprint."""

    cameras: tuple[str, ...] = ()  # empty: every camera of the source
    resize: tuple[int, int] | None = None  # (height, width); overrides max_side
    # Stored frames' longer side (aspect kept; never enlarged); 0 keeps full resolution. The
    # model reads 64x64 frames: 128 px leaves room for crops and a finer model while the G1
    # store stays within 2x its AV1 source (benchmarks/README.md); full-resolution frames at
    # petabyte scale are not storable.
    max_side: int = 128
    tolerance_s: float = DEFAULT_TOLERANCE_S
    threads: int = 1

    def fingerprint_part(self) -> str:
        return f"cameras={','.join(self.cameras)};resize={self.resize};max_side={self.max_side}"

    def select_cameras(self, source: Source) -> list[str]:
        unknown = [c for c in self.cameras if c not in source.cameras]
        if unknown:
            raise EpisodeError(f"camera(s) {unknown} not in dataset; it has {source.cameras}", file=source.url, episode=-1)
        chosen = list(self.cameras or source.cameras)
        default = source.default_camera()  # stored first: relabel's default for store sources
        return sorted(chosen, key=lambda c: c != default)

    def stored_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(height, width) frames of a camera with `shape` are stored at."""
        if self.resize:
            return tuple(self.resize)
        height, width = shape
        if not self.max_side or max(height, width) <= self.max_side:
            return height, width
        scale = self.max_side / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass(unsafe_hash=True)
class IngestPartition(Stage[Partition, PartitionResult]):
    """Decode each episode of a partition (all cameras, by timestamp) into one partition of the
    store, then commit it. A bad episode raises, or with skip_bad_episodes is rolled back and
    reported in the result while the rest of the partition is written."""

    source_url: str
    store_url: str
    run_id: str
    decode: DecodeOptions = DecodeOptions()
    skip_bad_episodes: bool = False
    name = "ingest"

    def setup(self) -> None:
        self._source = open_source(self.source_url)
        self._store = EpisodeStore(self.store_url)
        self._cameras = self.decode.select_cameras(self._source)
        self._declared = {c: tuple(self._source.camera_shape(c)) for c in self._cameras}
        self._shapes = {c: self.decode.stored_shape(shape) for c, shape in self._declared.items()}

    def item_key(self, item: Partition) -> str:
        return item.partition_id

    def process(self, task: Partition) -> PartitionResult:
        source, store = self._source, self._store
        state_dim = source.feature_dim("state")
        action_dim = source.feature_dim("action")
        writer = store.partition_writer(
            task.partition_id,
            self.run_id,
            cameras=self._shapes,
            state_dim=state_dim,
            action_dim=action_dim,
            capacity=sum(e.length for e in task.episodes),
            fps=source.fps,
            attrs={
                layout.SOURCE_URI: source.uri,
                layout.SOURCE_FORMAT: source.source_format,
                layout.EMBODIMENT: source.embodiment,
                layout.RUN_ID: self.run_id,
            },
        )
        rows, failures = [], []
        for episode in task.episodes:
            try:
                offset = self._write_episode(episode, writer)
            except EpisodeError as error:
                writer.discard_episode()
                if not self.skip_bad_episodes:
                    raise
                failures.append(failure_row(episode.source_uri, error, self.run_id))
                continue
            rows.append(
                {
                    layout.EPISODE_ID: layout.episode_id(episode.source_uri, episode.index),
                    layout.SOURCE_URI: episode.source_uri,
                    layout.SOURCE_EPISODE_INDEX: episode.index,
                    layout.SOURCE_FORMAT: source.source_format,
                    layout.TASK: episode.task,
                    layout.EMBODIMENT: source.embodiment,
                    layout.FPS: source.fps,
                    layout.LENGTH: episode.length,
                    layout.CAMERAS: self._cameras,
                    layout.STATE_DIM: state_dim,
                    layout.ACTION_DIM: action_dim,
                    layout.FINGERPRINT: episode.fingerprint,
                    layout.PARTITION_ID: task.partition_id,
                    layout.PARTITION_PATH: writer.relative_path,
                    layout.OFFSET: offset,
                    layout.RUN_ID: self.run_id,
                    layout.INGESTED_AT: utcnow(),
                    layout.SCHEMA_VERSION: layout.STORE_SCHEMA_VERSION,
                }
            )
        writer.finish()
        if rows:
            store.commit(task.partition_id, rows)
        return PartitionResult(task.partition_id, len(rows), writer.rows, failures)

    def _write_episode(self, episode: SourceEpisode, writer) -> int:
        frames = self._source.read_frames(episode)
        rows = np.arange(len(frames))
        for camera in self._cameras:
            declared, stored = self._declared[camera], self._shapes[camera]
            decoded = self._source.decode(
                episode,
                camera,
                frames,
                rows,
                size=stored if stored != declared else None,
                tolerance_s=self.decode.tolerance_s,
                threads=self.decode.threads,
            )
            for image in decoded:  # readers refuse frames unlike the declared size
                writer.append_frame(camera, image)
        return writer.end_episode(frames)
