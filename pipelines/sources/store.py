"""The episode store as a Source: relabel reads a store like any dataset. Episodes keep the
identity of the source they were ingested from (source URI, index, fingerprint), and each
carries its own fps, embodiment and cameras (a store holds many sources)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipelines import fs as fsx
from pipelines.sources.base import DEFAULT_TOLERANCE_S, EpisodeContext, EpisodeFrames, Source, SourceEpisode
from pipelines.store import EpisodeStore, open_zarr_group
from schemas import episode_store as layout


class StoreSource(Source):
    name = "store"

    @classmethod
    def detect(cls, url: str) -> bool:
        try:
            return dict(open_zarr_group(url, mode="r").attrs).get(layout.ATTR_FORMAT) == layout.STORE_FORMAT
        except Exception:  # no group here: not this format
            return False

    def __init__(self, url: str):
        self.store = EpisodeStore(url)
        self.url, self.uri = url, fsx.canonical_uri(url)
        self.version = str(layout.STORE_SCHEMA_VERSION)
        self._rows = self.store.episodes().to_pylist()
        # a partition's arrays hold exactly its committed episodes, back to back: their extent
        # is its row count, known from the manifest without opening any array
        self._partition_rows: dict[str, int] = {}
        for r in self._rows:
            end = int(r[layout.OFFSET]) + int(r[layout.LENGTH])
            path = r[layout.PARTITION_PATH]
            self._partition_rows[path] = max(self._partition_rows.get(path, 0), end)
        # dataset-wide values are those of the first episode; per-episode ones come from context()
        first = self._rows[0] if self._rows else {layout.FPS: 0.0, layout.EMBODIMENT: "unknown", layout.CAMERAS: []}
        self.fps, self.embodiment, self.cameras = float(first[layout.FPS]), first[layout.EMBODIMENT], list(first[layout.CAMERAS])

    def camera_shape(self, camera: str) -> tuple[int, int]:
        row = next(r for r in self._rows if camera in r[layout.CAMERAS])
        return tuple(self.store.read_frames(row, camera, 0, 1).shape[1:3])

    def feature_dim(self, key: str) -> int:
        column = {"state": layout.STATE_DIM, "action": layout.ACTION_DIM}[key]
        return max((int(r[column]) for r in self._rows), default=0)

    def episodes(self, *, decode_options: str = "") -> list[SourceEpisode]:
        # the stored fingerprint already names the source data and how it was decoded
        return [
            SourceEpisode(r[layout.SOURCE_URI], r[layout.SOURCE_EPISODE_INDEX], r[layout.LENGTH], r[layout.TASK], r[layout.FINGERPRINT],
                          fsx.join(self.store.url, r[layout.PARTITION_PATH]), locator=r)
            for r in self._rows
        ]  # fmt: skip

    def context(self, episode: SourceEpisode) -> EpisodeContext:
        row = episode.locator
        source_format = row[layout.SOURCE_FORMAT]
        return EpisodeContext(row[layout.FPS], row[layout.EMBODIMENT], tuple(row[layout.CAMERAS]), source_format, source_format.startswith("lerobot/"))

    def row_layout(self, episode: SourceEpisode) -> tuple[str, int, int]:
        row = episode.locator
        path = row[layout.PARTITION_PATH]
        return path, int(row[layout.OFFSET]), self._partition_rows[path]

    def read_frames(self, episode: SourceEpisode) -> EpisodeFrames:
        return self.store.read_table(episode.locator)

    def decode(
        self,
        episode: SourceEpisode,
        camera: str,
        table: EpisodeFrames,
        rows: np.ndarray,
        *,
        size: tuple[int, int] | None = None,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        threads: int = 1,
    ) -> Iterator[np.ndarray]:
        frames = self.store.read_frames_at(episode.locator, camera, rows)
        for frame in frames:
            yield frame if size is None or frame.shape[:2] == tuple(size) else _resize(frame, size)


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import av

    video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
    return video_frame.reformat(width=size[1], height=size[0], interpolation="AREA").to_ndarray(format="rgb24")
