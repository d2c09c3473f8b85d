"""Dataset readers behind one interface (pipelines.sources.base.Source), a registry that picks
the reader for a URL, and the partition planner ingest and relabel share.

Adding a format: write `pipelines/sources/<format>.py` with a Source subclass and add one line
to READERS. Nothing outside this package knows a format's files.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from pipelines import fs as fsx
from pipelines.errors import DatasetError
from pipelines.sources.base import DEFAULT_TOLERANCE_S, EpisodeContext, EpisodeFrames, Source, SourceEpisode
from schemas import episode_store as layout

__all__ = ["DEFAULT_TOLERANCE_S", "EpisodeContext", "EpisodeFrames", "Partition", "Source", "SourceEpisode", "open_source", "plan_partitions"]

# name -> (reader class, what marks the format): tried in this order. Imported lazily so that
# e.g. the protobuf parser loads only for RLDS data.
READERS: dict[str, tuple[str, str]] = {
    "lerobot": ("pipelines.sources.lerobot:LeRobotSource", "LeRobot v2.0/v2.1/v3.0 (meta/info.json)"),
    "rlds": ("pipelines.sources.rlds:RLDSSource", "RLDS / Open X-Embodiment TFDS builder directory (dataset_info.json + features.json)"),
    "raw": ("pipelines.sources.raw:RawSource", "raw episode folders (wvm_raw.json, see pipelines/sources/raw.py)"),
    "store": ("pipelines.sources.store:StoreSource", "wvm episode store (written by `wvm ingest`)"),
}


def reader(name: str) -> type[Source]:
    module, _, cls = READERS[name][0].partition(":")
    return getattr(importlib.import_module(module), cls)


def open_source(url: str, **options) -> Source:
    """The reader for whatever dataset `url` holds; one clear error when none does. Reads only."""
    try:
        fs, path = fsx.filesystem(url)
        exists = fs.exists(path)
    except Exception as exc:  # a malformed URL or an unknown protocol
        raise DatasetError(f"cannot open: {exc}", file=url) from None
    if not exists:
        raise DatasetError("no such file or directory", file=url)
    for name in READERS:
        if reader(name).detect(url):
            return reader(name)(url, **options)
    for name in READERS:
        if diagnosis := reader(name).near_miss(url):
            file, reason = diagnosis
            raise DatasetError(reason, file=file)
    formats = "; ".join(description for _, description in READERS.values())
    raise DatasetError(f"not a dataset wvm can read. Formats read: {formats}", file=url)


@dataclass(frozen=True)
class Partition:
    """A unit of work and of commit: episodes of one block of the source's order."""

    partition_id: str
    episodes: tuple[SourceEpisode, ...]

    @property
    def frames(self) -> int:
        return sum(e.length for e in self.episodes)

    @property
    def source_episodes(self) -> tuple[SourceEpisode, ...]:
        return self.episodes


def plan_partitions(
    episodes: list[SourceEpisode], done: Callable[[SourceEpisode], bool], partition_frames: int, source: Source | None = None
) -> tuple[list[Partition], int]:
    """Partitions of the episodes not `done`, and how many were done.

    Partitions are the source's own row blocks when it has them (Source.row_layout), else fixed
    blocks of the episode order (about `partition_frames` frames each); either way minus what is
    done. A partition's id hashes its members (schemas.episode_store.partition_id), so a rerun
    after a crash plans the very same partitions and new episodes land in new ones.
    """
    blocks: list[list[SourceEpisode]] = []
    layouts = [source.row_layout(e) for e in episodes] if source is not None else [None] * len(episodes)
    if episodes and layouts[0] is not None:
        by_block: dict[str, list[SourceEpisode]] = {}
        for episode, (block, _, _) in zip(episodes, layouts):
            by_block.setdefault(block, []).append(episode)
        blocks = list(by_block.values())
    else:
        frames = 0
        for episode in episodes:
            if not blocks or frames + episode.length > partition_frames:
                blocks.append([])
                frames = 0
            blocks[-1].append(episode)
            frames += episode.length
    partitions, already = [], 0
    for block in blocks:
        todo = [e for e in block if not done(e)]
        already += len(block) - len(todo)
        if todo:
            pid = layout.partition_id((e.source_uri, e.index, e.fingerprint) for e in todo)
            partitions.append(Partition(pid, tuple(todo)))
    return partitions, already
