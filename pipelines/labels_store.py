"""The value-label directory (layout and columns: schemas/labels.py).

Each model version owns `versions/<model_key>/`; nothing there is ever written by another
version. A partition's outputs (progress array, frames part, sidecar part) are written first
and its episodes part last, atomically: that file is the partition's commit record. `finalize`
turns committed parts into the consolidated tables after every run. The directory is also a
Zarr hierarchy (root group, then one group per directory down to each progress array).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import fs as fsx
from pipelines.errors import WvmError
from pipelines.lease import holds_data
from pipelines.store import ensure_groups, open_zarr_group, read_failures, update_failures, utcnow, write_group_if_absent
from pipelines.weights import AdvantageHistogram, top_weights
from schemas import labels as spec
from schemas.validate import conform

TOP70_KEY = b"wvm.top70_threshold"


class LabelsError(WvmError):
    pass


class LabelsStore:
    def __init__(self, url: str, *, create: bool = False):
        self.url = url.rstrip("/")
        self.fs, self.root = fsx.filesystem(self.url)
        marker = fsx.join(self.root, spec.ROOT_MARKER)
        if self.fs.exists(marker):
            with self.fs.open(marker, "rb") as f:
                info = json.load(f)
            if info.get("format") != spec.LABELS_FORMAT or info.get("schema_version") != spec.LABELS_SCHEMA_VERSION:
                raise LabelsError(
                    f"{marker}: labels of format {info.get('format')!r} schema version {info.get('schema_version')!r}; "
                    f"this wvm reads {spec.LABELS_FORMAT!r} version {spec.LABELS_SCHEMA_VERSION}. Use another --out."
                )
        elif create:
            if holds_data(self.fs, self.root):
                raise LabelsError(f"{self.url}: not empty and not a wvm labels directory; refusing to write into it")
            fsx.write_json_atomic(self.fs, marker, {"format": spec.LABELS_FORMAT, "schema_version": spec.LABELS_SCHEMA_VERSION})
        else:
            raise LabelsError(f"{self.url}: no wvm labels here ({spec.ROOT_MARKER} missing)")
        if create:  # the run's driver, once: writers never touch the root (directories from before get it now)
            write_group_if_absent(self.fs, self.root, {"format": spec.LABELS_FORMAT, "schema_version": spec.LABELS_SCHEMA_VERSION})

    def version(self, key: str) -> VersionLabels:
        return VersionLabels(self, key)

    def versions(self) -> list[str]:
        base = fsx.join(self.root, spec.VERSIONS_DIR)
        if not self.fs.exists(base):
            return []
        # directories only: versions/ also holds its Zarr group metadata
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(base, detail=True) if e["type"] == "directory")

    def latest(self) -> dict | None:
        path = fsx.join(self.root, spec.LATEST_POINTER)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return json.load(f)

    def publish(self, key: str, summary: dict) -> None:
        """Make `key` the published version: top-level sidecar first, then the pointer."""
        version = self.version(key)
        sidecar = version.path(spec.SIDECAR_FILE)
        if self.fs.exists(sidecar):
            self.fs.invalidate_cache()
            with self.fs.open(sidecar, "rb") as f:
                fsx.atomic_write_bytes(self.fs, fsx.join(self.root, spec.SIDECAR_FILE), f.read())
        pointer = {"model_key": key, **version.model_info(), "published_at": utcnow().isoformat(), "summary": summary}
        fsx.write_json_atomic(self.fs, fsx.join(self.root, spec.LATEST_POINTER), pointer)


@dataclass
class VersionLabels:
    store: LabelsStore
    key: str

    @property
    def fs(self):
        return self.store.fs

    @property
    def url(self) -> str:
        return fsx.join(self.store.url, spec.VERSIONS_DIR, self.key)

    def path(self, *parts: str) -> str:
        return fsx.join(self.store.root, spec.VERSIONS_DIR, self.key, *parts)

    def model_info(self) -> dict:
        with self.fs.open(self.path(spec.MODEL_FILE), "rb") as f:
            return json.load(f)

    def ensure(self, info: dict) -> None:
        """Create the version directory, or check it belongs to the same model."""
        path = self.path(spec.MODEL_FILE)
        if self.fs.exists(path):
            existing = self.model_info()
            for key in ("model_version", "checkpoint_hash"):
                if existing.get(key) != info.get(key):
                    raise LabelsError(f"{path}: holds {key}={existing.get(key)!r}, not {info.get(key)!r}")
        else:
            fsx.write_json_atomic(self.fs, path, info)
        ensure_groups(self.store.url, spec.VERSIONS_DIR)
        stamps = {key: info[key] for key in ("model_version", "checkpoint_hash") if key in info}
        write_group_if_absent(self.fs, self.path(), stamps)
        ensure_groups(self.url, spec.PROGRESS_DIR)

    # -- partition outputs -------------------------------------------------------------------

    def write_progress(
        self, relative: str, rows: int, pieces: list[tuple[int, np.ndarray]], *, attrs: dict | None = None
    ) -> None:
        """Write the progress array of `relative` (<partition_id>/<run_id>): `rows` rows, NaN but
        for the (offset, values) pieces. `attrs`: extra attributes of the array (e.g. fps,
        camera, source_uri); model_version and checkpoint_hash come from model.json."""
        # the groups above it (versions from before they existed get them here); not the run group,
        # which is this writer's own
        ensure_groups(self.store.url, spec.VERSIONS_DIR, self.key, spec.PROGRESS_DIR, relative.strip("/").rpartition("/")[0])
        info = self.model_info()
        stamps = {key: info[key] for key in ("model_version", "checkpoint_hash")}
        group = open_zarr_group(
            fsx.join(self.url, spec.PROGRESS_DIR, relative),
            mode="w",
            attributes={"format": spec.PROGRESS_FORMAT, "schema_version": spec.LABELS_SCHEMA_VERSION, **stamps},
        )
        array = group.create_array(
            spec.PROGRESS_ARRAY,
            shape=(rows,),
            chunks=(max(rows, 1),),
            dtype="float32",
            fill_value=np.nan,
            dimension_names=spec.PROGRESS_DIMS,
            attributes={**(attrs or {}), **spec.PROGRESS_ATTRIBUTES, **stamps},
        )
        values = np.full(rows, np.nan, dtype=np.float32)
        for offset, piece in pieces:
            values[offset : offset + len(piece)] = piece
        array[...] = values

    def _part(self, directory: str, partition_id: str) -> str:
        return self.path(directory, f"part-{partition_id}.parquet")

    def write_part(self, directory: str, partition_id: str, table: pa.Table, metadata: dict | None = None) -> None:
        if metadata:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        fsx.write_parquet_atomic(self.fs, self._part(directory, partition_id), table)

    def commit(self, partition_id: str, episodes: pa.Table) -> None:
        self.write_part(spec.EPISODE_PARTS_DIR, partition_id, conform(episodes, spec.EPISODES, "episodes part"))

    # -- reading -----------------------------------------------------------------------------

    def _parts(self, directory: str) -> dict[str, str]:
        base = self.path(directory)
        self.fs.invalidate_cache()
        if not self.fs.exists(base):
            return {}
        paths = [e["name"] for e in self.fs.ls(base, detail=True) if e["type"] == "file" and e["name"].endswith(".parquet")]
        return {p.rsplit("/", 1)[-1][len("part-") : -len(".parquet")]: p for p in paths}

    def committed(self) -> pa.Table:
        parts = self._parts(spec.EPISODE_PARTS_DIR)
        tables = [conform(fsx.read_parquet(self.fs, p), spec.EPISODES, p) for p in parts.values()]
        return pa.concat_tables(tables) if tables else spec.EPISODES.empty_table()

    def frames(self) -> Iterator[pa.Table]:
        """The committed frames parts, one table at a time."""
        committed = set(self._parts(spec.EPISODE_PARTS_DIR))
        for pid, path in sorted(self._parts(spec.FRAMES_DIR).items()):
            if pid in committed:
                yield fsx.read_parquet(self.fs, path)

    def failures(self) -> pa.Table:
        return read_failures(self.fs, self.path("failures.parquet"))

    def update_failures(self, rows: list[dict], labelled: set[str]) -> None:
        update_failures(self.fs, self.path("failures.parquet"), rows, pa.array(sorted(labelled), pa.string()))

    # -- consolidation -----------------------------------------------------------------------

    def finalize(self, current: set[tuple[str, str]] | None) -> dict:
        """After a run: drop parts nobody committed and labels of episodes the source no longer
        has (`current`: (episode_id, fingerprint) pairs; None keeps all), apply the dataset-level
        top-70% cut to every frames part, and write episodes.parquet and wvm_progress.parquet.
        Rewrites only what changes, so a rerun with nothing new writes nothing."""
        episode_parts = self._parts(spec.EPISODE_PARTS_DIR)
        frame_parts, sidecar_parts = self._parts(spec.FRAMES_DIR), self._parts(spec.SIDECAR_PARTS_DIR)
        for parts in (frame_parts, sidecar_parts):
            for pid in set(parts) - set(episode_parts):  # written by a run that died before its commit
                self.fs.rm(parts.pop(pid))
        kept: dict[str, pa.Table] = {}
        seen: set[str] = set()  # an episode committed by two runs (other partitioning) counts once
        for pid, path in sorted(episode_parts.items()):
            table = conform(fsx.read_parquet(self.fs, path), spec.EPISODES, path)
            ids = table.column("episode_id").to_pylist()
            pairs = zip(ids, table.column("source_fingerprint").to_pylist())
            keep = [(current is None or pair in current) and pair[0] not in seen for pair in pairs]
            seen.update(i for i, k in zip(ids, keep) if k)
            if not all(keep):
                table = table.filter(pa.array(keep, pa.bool_()))
                self._replace(spec.EPISODE_PARTS_DIR, pid, path, table)
            kept[pid] = table

        def rows(pid: str, path: str, schema: pa.Schema) -> tuple[pa.Table, bool]:
            table = fsx.read_parquet(self.fs, path)
            metadata = table.schema.metadata
            episodes = kept.get(pid, spec.EPISODES.empty_table())
            key = "episode_id" if "episode_id" in schema.names else "episode_index"
            mask = pc.is_in(table.column(key), value_set=episodes.column(key))
            dropped = not pc.all(mask).as_py() if table.num_rows else False
            table = conform(table.filter(mask), schema, path)
            return table.replace_schema_metadata({**(schema.metadata or {}), **(metadata or {})}), dropped

        histogram = AdvantageHistogram()
        for pid, path in frame_parts.items():
            histogram.add(rows(pid, path, spec.FRAMES)[0].column("advantage").to_numpy())
        threshold = histogram.cut_keeping(spec.TOP_FRACTION)
        frames = 0
        for pid, path in sorted(frame_parts.items()):
            table, dropped = rows(pid, path, spec.FRAMES)
            frames += table.num_rows
            if dropped or float((table.schema.metadata or {}).get(TOP70_KEY, b"nan")) != threshold:
                w = top_weights(table.column("advantage").to_numpy(), threshold)
                table = table.set_column(table.schema.get_field_index("w_top70"), "w_top70", pa.array(w, pa.float32()))
                table = table.replace_schema_metadata({**table.schema.metadata, TOP70_KEY: str(threshold).encode()})
                self._replace(spec.FRAMES_DIR, pid, path, table)
        for pid, path in sorted(sidecar_parts.items()):
            table, dropped = rows(pid, path, spec.SIDECAR)
            if dropped:
                self._replace(spec.SIDECAR_PARTS_DIR, pid, path, table)
        self._write_if_changed(
            self.path(spec.WEIGHTS_FILE),
            json.dumps({"top_fraction": spec.TOP_FRACTION, "top70_threshold": threshold}, indent=2).encode(),
        )
        episodes = [t for t in kept.values() if t.num_rows]
        all_episodes = pa.concat_tables(episodes) if episodes else spec.EPISODES.empty_table()
        all_episodes = all_episodes.sort_by([("source_uri", "ascending"), ("episode_index", "ascending")])
        self._write_if_changed(self.path(spec.EPISODES_FILE), _parquet_bytes(all_episodes))
        self._write_sidecar()
        return {"episodes": all_episodes.num_rows, "frames": frames, "top70_threshold": threshold}

    def _replace(self, directory: str, pid: str, path: str, table: pa.Table) -> None:
        if table.num_rows:
            self.write_part(directory, pid, table)
        else:
            self.fs.rm(path)

    def _write_if_changed(self, path: str, data: bytes) -> None:
        if self.fs.exists(path):
            with self.fs.open(path, "rb") as f:
                if f.read() == data:
                    return
        fsx.atomic_write_bytes(self.fs, path, data)

    def _write_sidecar(self) -> None:
        """One sidecar file for LeRobot, streamed part by part into a local temporary file
        (memory stays flat), in source order. Sources without a LeRobot frame index have no
        parts and get no sidecar."""
        parts = self._parts(spec.SIDECAR_PARTS_DIR)
        if not parts:
            return
        order = []
        for path in parts.values():
            with self.fs.open(path, "rb") as f:
                column = pq.read_table(f, columns=["index"]).column("index")
            order.append((pc.min(column).as_py(), path))
        stamp = json.dumps({k: v for k, v in self.model_info().items() if k != "created_at"}, sort_keys=True)
        schema = spec.SIDECAR.with_metadata({b"wvm.model": stamp.encode()})
        with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
            with pq.ParquetWriter(tmp.name, schema, compression="zstd") as writer:
                for _, path in sorted(order):
                    writer.write_table(conform(fsx.read_parquet(self.fs, path), spec.SIDECAR, path).cast(schema))
            fsx.replace_with_local_file(self.fs, self.path(spec.SIDECAR_FILE), tmp.name)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
