"""Ingest stage: decode one partition of source episodes and write it to the episode store."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.errors import EpisodeError
from pipelines.lerobot import DEFAULT_TOLERANCE_S, LeRobotDataset, SourceEpisode
from pipelines.stages.base import Stage
from pipelines.store import EpisodeStore, EpisodeTable, utcnow
from schemas import episode_store as layout


@dataclass(frozen=True)
class DecodeOptions:
    """How source frames become stored frames; part of every episode's fingerprint."""

    cameras: tuple[str, ...] = ()  # empty: every camera of the source
    resize: tuple[int, int] | None = None  # (height, width)
    tolerance_s: float = DEFAULT_TOLERANCE_S
    threads: int = 1

    def fingerprint_part(self) -> str:
        return f"cameras={','.join(self.cameras)};resize={self.resize}"

    def select_cameras(self, source: LeRobotDataset) -> list[str]:
        unknown = [c for c in self.cameras if c not in source.cameras]
        if unknown:
            raise EpisodeError(f"camera(s) {unknown} not in dataset; it has {source.cameras}", file=source.url, episode=-1)
        return list(self.cameras or source.cameras)


@dataclass(frozen=True)
class PartitionTask:
    partition_id: str
    episodes: tuple[SourceEpisode, ...]


@dataclass
class PartitionResult:
    partition_id: str
    episodes: int
    frames: int
    failures: list[dict] = field(default_factory=list)


def failure_record(source_uri: str, episode_index: int, *, file: str, stage: str, error: str, reason: str, run_id: str) -> dict:
    """One row of a dead-letter table (schemas.episode_store.FAILURES)."""
    return {
        "episode_id": layout.episode_id(source_uri, episode_index),
        "source_uri": source_uri,
        "source_episode_index": episode_index,
        "file": file,
        "stage": stage,
        "error": error,
        "reason": reason,
        "run_id": run_id,
        "failed_at": utcnow(),
    }


def failure_row(source_uri: str, error: EpisodeError, run_id: str) -> dict:
    return failure_record(
        source_uri, error.episode, file=error.file, stage=error.stage, error=type(error).__name__, reason=error.reason, run_id=run_id
    )


@dataclass(unsafe_hash=True)
class IngestPartition(Stage[PartitionTask, PartitionResult]):
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
        self._source = LeRobotDataset(self.source_url)
        self._store = EpisodeStore(self.store_url)
        self._cameras = self.decode.select_cameras(self._source)
        self._shapes = {c: self.decode.resize or self._source.camera_shape(c) for c in self._cameras}

    def item_key(self, item: PartitionTask) -> str:
        return item.partition_id

    def process(self, task: PartitionTask) -> PartitionResult:
        source, store = self._source, self._store
        state_dim = source.feature_dim("observation.state")
        action_dim = source.feature_dim("action")
        writer = store.partition_writer(
            task.partition_id,
            self.run_id,
            cameras=self._shapes,
            state_dim=state_dim,
            action_dim=action_dim,
            capacity=sum(e.length for e in task.episodes),
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
                    "episode_id": layout.episode_id(episode.source_uri, episode.index),
                    "source_uri": episode.source_uri,
                    "source_episode_index": episode.index,
                    "source_format": f"lerobot/{source.version}",
                    "task": episode.task,
                    "embodiment": source.robot_type,
                    "fps": source.fps,
                    "length": episode.length,
                    "cameras": self._cameras,
                    "state_dim": state_dim,
                    "action_dim": action_dim,
                    "fingerprint": episode.fingerprint,
                    "partition_id": task.partition_id,
                    "partition_path": writer.relative_path,
                    "offset": offset,
                    "run_id": self.run_id,
                    "ingested_at": utcnow(),
                    "schema_version": layout.STORE_SCHEMA_VERSION,
                }
            )
        writer.finish()
        if rows:
            store.commit(task.partition_id, rows)
        return PartitionResult(task.partition_id, len(rows), writer.rows, failures)

    def _write_episode(self, episode: SourceEpisode, writer) -> int:
        frames = self._source.read_frames(episode)
        for camera in self._cameras:
            expected = self._shapes[camera]
            decoded = self._source.decode(
                episode,
                camera,
                frames.timestamp,
                size=self.decode.resize,
                tolerance_s=self.decode.tolerance_s,
                threads=self.decode.threads,
            )
            for image in decoded:
                if image.shape[:2] != tuple(expected):
                    raise EpisodeError(
                        f"camera {camera!r}: video frames are {image.shape[0]}x{image.shape[1]} but "
                        f"meta/info.json declares {expected[0]}x{expected[1]}",
                        file=episode.videos[camera].path,
                        episode=episode.index,
                    )
                writer.append_frame(camera, image)
        table = EpisodeTable(frames.timestamp, frames.frame_index, frames.index, frames.state, frames.action)
        return writer.end_episode(table)
