"""The canonical episode store (layout and columns: schemas/episode_store.py).

Writers: one `PartitionWriter` per partition, each in one task, owns every shard of its arrays
(REFERENCE §5: concurrent writers to one shard lose data). Arrays go to a fresh attempt
directory, so a retried or concurrent attempt never touches another's files; the partition
becomes visible when `commit` writes its manifest file, last and atomically. Every directory
above a partition is a Zarr group too (`ensure_groups`), so generic tools (zarr, xarray, dask)
can walk the store; they see uncommitted attempts as well, which wvm readers never do.

Readers: `EpisodeStore.episodes()` is the committed manifest (latest row per episode id);
`read_*` fetch one episode's frames or per-frame table.
"""

from __future__ import annotations

import datetime as dt
import json
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr
from zarr.codecs import BloscCodec

from pipelines import fs as fsx
from pipelines.errors import WvmError
from pipelines.lease import holds_data
from pipelines.sources.base import EpisodeFrames
from schemas import episode_store as layout
from schemas.validate import conform


# Frames stored at labelling resolution (area-downscaled, so less sensor noise): zstd level 5
# compresses them 2.5x (level 1: 1.3x) at ~1 ms per 96x128 frame, well under the decode;
# level 9 gains 11% for 30x the time (benchmarks/store_size.py). Plain Blosc-zstd keeps the
# arrays readable by any Zarr v3 reader, which a temporal-delta or image codec would not.
IMAGE_CODEC = BloscCodec(cname="zstd", clevel=5, shuffle="noshuffle")
ZARR_JSON = "zarr.json"  # a Zarr v3 node's metadata file


class StoreError(WvmError):
    pass


def open_zarr_group(url: str, mode: str, attributes: dict | None = None) -> zarr.Group:
    """A Zarr v3 group at any URL (local path or fsspec URL such as gs://); `attributes` are
    written when the group is created (mode "w")."""
    fs, path = fsx.filesystem(url)
    if fsx.local_path(fs, path):
        store = zarr.storage.LocalStore(path, read_only=mode == "r")
    else:
        store = zarr.storage.FsspecStore.from_url(
            url, storage_options=fsx.storage_options_for(url), read_only=mode == "r"
        )
    return zarr.open_group(store=store, mode=mode, zarr_format=3, attributes=attributes)


def write_group_if_absent(fs, path: str, attributes: dict | None = None) -> None:
    """Make directory `path` a Zarr v3 group unless it already is one. Safe with many writers
    at once: the metadata is written whole (atomic rename / single PUT), every writer of a
    given group writes the same bytes, and an existing group, attributes included, is never
    rewritten. (zarr.open_group(mode="a") is not: a racing creator gets ContainsGroupError.)"""
    if not fs.exists(fsx.join(path, ZARR_JSON)):
        write_group(fs, path, attributes)


def write_group(fs, path: str, attributes: dict | None = None) -> None:
    """Make directory `path` a Zarr v3 group with `attributes`, replacing its metadata whole."""
    group = {"zarr_format": 3, "node_type": "group", "attributes": attributes or {}}
    fsx.atomic_write_bytes(fs, fsx.join(path, ZARR_JSON), json.dumps(group, indent=2, sort_keys=True).encode())


def ensure_groups(url: str, *parts: str) -> None:
    """Make every directory from url/parts[0] down to url/parts[0]/.../parts[-1] a plain Zarr
    group (parts may hold slashes). `url` itself is left alone: its owner writes the root."""
    fs, root = fsx.filesystem(url)
    names = "/".join(parts).strip("/").split("/")
    for depth in range(1, len(names) + 1):
        write_group_if_absent(fs, fsx.join(root, *names[:depth]))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def read_failures(fs, path: str) -> pa.Table:
    return conform(fsx.read_parquet(fs, path), layout.FAILURES, path) if fs.exists(path) else layout.FAILURES.empty_table()


def update_failures(fs, path: str, new_rows: list[dict], resolved: pa.Array) -> pa.Table:
    """Merge a run's failures into a dead-letter table: one row per episode still failing
    (the latest reason wins); episodes in `resolved` (stored or labelled since) leave it."""
    current = read_failures(fs, path)
    new = conform(pa.Table.from_pylist(new_rows, schema=layout.FAILURES), layout.FAILURES, "new failures")
    merged = pa.concat_tables([new, current])  # newest first
    _, first = np.unique(merged.column(layout.EPISODE_ID).to_numpy(zero_copy_only=False), return_index=True)
    merged = merged.take(pa.array(np.sort(first)))
    merged = merged.filter(pc.invert(pc.is_in(merged.column(layout.EPISODE_ID), value_set=resolved)))
    if merged.num_rows or current.num_rows:
        fsx.write_parquet_atomic(fs, path, merged)
    return merged


class EpisodeStore:
    def __init__(self, url: str, *, create: bool = False):
        self.url = url.rstrip("/")
        self.fs, self.root = fsx.filesystem(self.url)
        try:
            root = open_zarr_group(self.url, mode="r")
            attrs = dict(root.attrs)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            if not create:
                raise StoreError(f"{self.url}: no episode store here (run `wvm ingest` first)") from None
            if holds_data(self.fs, self.root):
                raise StoreError(f"{self.url}: exists and is not an episode store; refusing to write into it")
            attrs = dict(layout.STORE_ATTRS)
            open_zarr_group(self.url, mode="w", attributes=attrs)  # one write: never a root without its attrs
            ensure_groups(self.url, layout.PARTITIONS_DIR)
        if attrs.get(layout.ATTR_FORMAT) != layout.STORE_FORMAT:
            raise StoreError(f"{self.url}: zarr group is not a {layout.STORE_FORMAT} (attrs {attrs})")
        if attrs.get(layout.ATTR_SCHEMA_VERSION) != layout.STORE_SCHEMA_VERSION:
            raise StoreError(
                f"{self.url}: episode store schema version {attrs.get(layout.ATTR_SCHEMA_VERSION)} is not the supported "
                f"version {layout.STORE_SCHEMA_VERSION}"
            )

    def _path(self, *parts: str) -> str:
        return fsx.join(self.root, *parts)

    # -- manifest ---------------------------------------------------------------------------

    def manifest_files(self) -> list[str]:
        try:
            listing = self.fs.ls(self._path(layout.MANIFEST_DIR), detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"] for e in listing if e["type"] == "file" and e["name"].endswith(".parquet"))

    def episodes(self) -> pa.Table:
        """Committed episodes, one row per episode id (the latest ingest wins), in source order."""
        tables = []
        for path in self.manifest_files():
            try:
                tables.append(conform(fsx.read_parquet(self.fs, path), layout.MANIFEST, path))
            except (pa.ArrowInvalid, OSError) as exc:
                raise StoreError(f"{path}: manifest file cannot be read: {exc}") from None
        if not tables:
            return layout.MANIFEST.empty_table()
        table = pa.concat_tables(tables).sort_by([(layout.INGESTED_AT, "descending")])
        _, first = np.unique(table.column(layout.EPISODE_ID).to_numpy(zero_copy_only=False), return_index=True)
        table = table.take(pa.array(np.sort(first)))
        return table.sort_by([(layout.SOURCE_URI, "ascending"), (layout.SOURCE_EPISODE_INDEX, "ascending")])

    def commit(self, partition_id: str, rows: list[dict]) -> None:
        """Make a partition visible: write its manifest file (atomically, after all its arrays)."""
        table = conform(pa.Table.from_pylist(rows), layout.MANIFEST, f"manifest of partition {partition_id}")
        fsx.write_parquet_atomic(self.fs, self._path(layout.MANIFEST_DIR, f"{partition_id}.parquet"), table)

    def sweep_uncommitted(self, touched: list[str]) -> int:
        """Delete attempt directories no committed manifest points to, and return how many:
        whole partitions without a manifest (left by a failed or killed run), and replaced
        attempts inside the partitions this run `touched`. Two listings and one small read per
        touched partition, so the cost follows new work. Call it holding the store's lease, so
        that no attempt is being written."""
        def listing(directory: str) -> dict[str, dict]:
            try:
                return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in self.fs.ls(self._path(directory), detail=True)}
            except FileNotFoundError:
                return {}

        committed = {name.removesuffix(".parquet") for name, e in listing(layout.MANIFEST_DIR).items() if e["type"] == "file" and name.endswith(".parquet")}
        doomed = [e["name"] for pid, e in listing(layout.PARTITIONS_DIR).items() if e["type"] == "directory" and pid not in committed]
        for partition_id in set(touched) & committed:
            manifest = self._path(layout.MANIFEST_DIR, f"{partition_id}.parquet")
            keep = set(fsx.read_parquet(self.fs, manifest, columns=[layout.PARTITION_PATH]).column(layout.PARTITION_PATH).to_pylist())
            for name, entry in listing(f"{layout.PARTITIONS_DIR}/{partition_id}").items():
                if entry["type"] == "directory" and f"{layout.PARTITIONS_DIR}/{partition_id}/{name}" not in keep:
                    doomed.append(entry["name"])
        for path in doomed:
            self.fs.rm(path, recursive=True)
        return len(doomed)

    # -- dead-letter table -------------------------------------------------------------------

    def failures(self) -> pa.Table:
        return read_failures(self.fs, self._path(layout.FAILURES_FILE))

    def update_failures(self, new_rows: list[dict]) -> pa.Table:
        return update_failures(self.fs, self._path(layout.FAILURES_FILE), new_rows, self.episodes().column(layout.EPISODE_ID))

    # -- reading episodes --------------------------------------------------------------------

    def _group(self, row: dict) -> zarr.Group:
        return open_zarr_group(fsx.join(self.url, row[layout.PARTITION_PATH]), mode="r")

    def read_frames(self, row: dict, camera: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """uint8 (n, H, W, 3) frames [start, stop) of one stored episode's camera."""
        stop = row[layout.LENGTH] if stop is None else min(stop, row[layout.LENGTH])
        images = self._group(row)[layout.IMAGES_GROUP]
        if camera not in images:
            raise StoreError(f"{self.url}: episode {row[layout.EPISODE_ID]} has no camera {camera!r}; has {list(images.keys())}")
        return images[camera][row[layout.OFFSET] + start : row[layout.OFFSET] + stop]

    def partition_rows(self, row: dict) -> int:
        """Rows of the partition holding this episode (every array of it has this length)."""
        return int(self._group(row)[layout.TIMESTAMP].shape[0])

    def read_frames_at(self, row: dict, camera: str, indices) -> np.ndarray:
        """uint8 (len(indices), H, W, 3): only the chunks holding those frames are read."""
        return self._group(row)[layout.IMAGES_GROUP][camera].oindex[row[layout.OFFSET] + np.asarray(indices)]

    def read_table(self, row: dict) -> EpisodeFrames:
        group = self._group(row)
        rows = slice(row[layout.OFFSET], row[layout.OFFSET] + row[layout.LENGTH])
        get = lambda name: group[name][rows] if name in group else None  # noqa: E731
        return EpisodeFrames(
            timestamp=get(layout.TIMESTAMP),
            frame_index=get(layout.FRAME_INDEX),
            index=get(layout.SOURCE_INDEX),
            state=get(layout.STATE),
            action=get(layout.ACTION),
        )

    def partition_writer(self, partition_id: str, attempt: str, **kwargs) -> PartitionWriter:
        """kwargs: those of PartitionWriter (cameras, state_dim, ..., fps, attrs)."""
        relative = f"{layout.PARTITIONS_DIR}/{partition_id}/{attempt}"
        # the groups above the attempt (stores created before they existed get them here too)
        ensure_groups(self.url, layout.PARTITIONS_DIR, partition_id)
        return PartitionWriter(fsx.join(self.url, relative), relative, **kwargs)


class _ShardedAppender:
    """Appends rows to a Zarr array, writing whole shards only (plus the final tail).

    A full shard is compressed and written on `writes` (a background thread) while the next
    one fills, so encoding and decoding overlap; at most one write per array is in flight,
    which keeps memory at two shards. `truncate` rewinds to an earlier row (dropping a failed
    episode); rows after it are rewritten later by the same writer, in order, so shards still
    have a single writer.
    """

    def __init__(self, array: zarr.Array, rows_per_shard: int, writes: ThreadPoolExecutor):
        self.array, self.rows_per_shard, self.writes = array, rows_per_shard, writes
        self.flushed = 0
        self.buffer: list[np.ndarray] = []
        self.pending: Future | None = None

    @property
    def position(self) -> int:
        return self.flushed + len(self.buffer)

    def append(self, row: np.ndarray) -> None:
        self.buffer.append(row)
        if self.position % self.rows_per_shard == 0:
            self.flush()

    def truncate(self, position: int) -> None:
        if position >= self.flushed:
            del self.buffer[position - self.flushed :]
        else:
            self.buffer, self.flushed = [], position

    def flush(self) -> None:
        if self.buffer:
            block, rows = np.stack(self.buffer), slice(self.flushed, self.position)
            self.wait()
            if self.position > self.array.shape[0]:  # grow (metadata only), doubling, whole shards
                grown = max(self.position, 2 * self.array.shape[0])
                self.array.resize((-(-grown // self.rows_per_shard) * self.rows_per_shard, *self.array.shape[1:]))
            self.pending = self.writes.submit(self.array.__setitem__, rows, block)
            self.flushed, self.buffer = self.position, []

    def wait(self) -> None:
        """Until the write in flight is done; raises its error."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()


class PartitionWriter:
    """Writes one partition's arrays. Episodes are appended one after another; a failing
    episode is rolled back with `discard_episode` and the rest of the partition goes on.

    `fps` (the source frame rate) goes into the attributes of the partition group and of its
    image arrays; `attrs` are extra attributes of the partition group (e.g. source_uri, run_id).
    """

    def __init__(
        self,
        url: str,
        relative_path: str,
        *,
        cameras: dict[str, tuple[int, int]],
        state_dim: int,
        action_dim: int,
        capacity: int,
        frames_per_chunk: int = layout.FRAMES_PER_CHUNK,
        chunks_per_shard: int = layout.CHUNKS_PER_SHARD,
        fps: float | None = None,
        attrs: dict | None = None,
    ):
        self.relative_path = relative_path
        known = {layout.FPS: float(fps)} if fps is not None else {}
        group_attrs = {**(attrs or {}), **known, **layout.PARTITION_ATTRS}
        self.group = open_zarr_group(url, mode="w", attributes=group_attrs)
        self.writes = ThreadPoolExecutor(1, thread_name_prefix="zarr-write")
        images = self.group.create_group(layout.IMAGES_GROUP)
        rows_per_shard = frames_per_chunk * chunks_per_shard
        self.cameras = {}
        for camera, (h, w) in cameras.items():
            array = images.create_array(
                camera,
                # the claimed frame count is only a hint (metadata can lie: 1e12 frames); the
                # appender grows the array as rows arrive
                shape=(max(min(capacity, 4 * rows_per_shard), 1), h, w, 3),
                dtype="uint8",
                chunks=(frames_per_chunk, h, w, 3),
                # Index first: readers fetch it with a plain range request (some object stores
                # and emulators mishandle the suffix ranges an index at the end needs).
                shards={"shape": (rows_per_shard, h, w, 3), "index_location": "start"},
                compressors=IMAGE_CODEC,
                fill_value=0,
                dimension_names=layout.image_dims(camera),
                attributes={**layout.IMAGE_ATTRIBUTES, layout.ATTR_CAMERA: camera, **known},
            )
            self.cameras[camera] = _ShardedAppender(array, rows_per_shard, self.writes)
        self.state_dim, self.action_dim = state_dim, action_dim
        self.offsets = [0]
        self.tables: list[EpisodeFrames] = []

    @property
    def rows(self) -> int:
        return self.offsets[-1]

    def append_frame(self, camera: str, frame: np.ndarray) -> None:
        self.cameras[camera].append(frame)

    def end_episode(self, table: EpisodeFrames) -> int:
        """Close the current episode; returns its offset (first row) in the partition."""
        length = len(table.frame_index)
        for camera, appender in self.cameras.items():
            if appender.position != self.rows + length:
                raise StoreError(f"camera {camera}: {appender.position - self.rows} frames for {length} table rows")
        self.tables.append(table)
        self.offsets.append(self.rows + length)
        return self.offsets[-2]

    def discard_episode(self) -> None:
        for appender in self.cameras.values():
            appender.truncate(self.rows)

    def finish(self) -> None:
        """Flush, trim arrays to the rows written and write the per-frame table."""
        n = self.rows
        for appender in self.cameras.values():
            appender.flush()
            appender.wait()
            appender.array.resize((n, *appender.array.shape[1:]))
        self.writes.shutdown()

        def column(parts: list[np.ndarray], dtype: str, width: int = 0) -> np.ndarray:
            shape = (0, width) if width else (0,)
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

        tables = self.tables
        arrays = {
            layout.TIMESTAMP: column([t.timestamp for t in tables], "float64"),
            layout.FRAME_INDEX: column([t.frame_index for t in tables], "int64"),
            layout.SOURCE_INDEX: column([t.index for t in tables], "int64"),
            layout.EPISODE_OFFSETS: np.asarray(self.offsets, dtype="int64"),
        }
        if self.state_dim:
            arrays[layout.STATE] = column([t.state for t in tables], "float32", self.state_dim)
        if self.action_dim:
            arrays[layout.ACTION] = column([t.action for t in tables], "float32", self.action_dim)
        for name, values in arrays.items():
            chunks = (max(len(values), 1), *values.shape[1:])
            self.group.create_array(
                name,
                shape=values.shape,
                dtype=values.dtype,
                chunks=chunks,
                dimension_names=layout.DIMENSIONS[name],
                attributes=layout.ATTRIBUTES[name],
            )[...] = values
