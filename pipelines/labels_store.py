"""The value-label directory (layout and columns: schemas/labels.py).

Each model version owns `versions/<model_key>/`; nothing there is ever written by another
version. A partition's outputs (progress array, frames part, sidecar part) are written first
and its episodes part last, atomically: that file is the partition's commit record, and it
carries the histogram of the partition's advantages. `finalize` turns committed parts into the
consolidated tables after every run, at a cost that follows what is new, not the dataset. The
directory is also a Zarr hierarchy (root group, then one group per directory down to each
progress array).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import fs as fsx
from pipelines.errors import WvmError
from pipelines.lease import holds_data
from pipelines.store import ensure_groups, open_zarr_group, read_failures, update_failures, utcnow, write_group, write_group_if_absent
from pipelines.weights import AdvantageHistogram, top_weights
from schemas import labels as spec
from schemas.validate import conform

TOP70_KEY = spec.TOP70_KEY  # frames part metadata: the cut its w_top70 was computed with


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
            version = info.get(spec.ATTR_SCHEMA_VERSION)
            if info.get(spec.ATTR_FORMAT) != spec.LABELS_FORMAT or version not in (spec.LABELS_SCHEMA_VERSION, *spec.UPGRADES_FROM):
                raise LabelsError(
                    f"{marker}: labels of format {info.get(spec.ATTR_FORMAT)!r} schema version {version!r}; this wvm reads "
                    f"{spec.LABELS_FORMAT!r} versions {', '.join(map(str, (*spec.UPGRADES_FROM, spec.LABELS_SCHEMA_VERSION)))}. Use another --out."
                )
            if create and version != spec.LABELS_SCHEMA_VERSION:  # a run writes here: upgrade (parts read as before)
                fsx.write_json_atomic(self.fs, marker, spec.ROOT_ATTRS)
                write_group(self.fs, self.root, spec.ROOT_ATTRS)
        elif create:
            if holds_data(self.fs, self.root):
                raise LabelsError(f"{self.url}: not empty and not a wvm labels directory; refusing to write into it")
            fsx.write_json_atomic(self.fs, marker, spec.ROOT_ATTRS)
        else:
            raise LabelsError(f"{self.url}: no wvm labels here ({spec.ROOT_MARKER} missing)")
        if create:  # the run's driver, once: writers never touch the root (directories from before get it now)
            write_group_if_absent(self.fs, self.root, spec.ROOT_ATTRS)

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
        pointer = {spec.LATEST_MODEL_KEY: key, **version.model_info(), "published_at": utcnow().isoformat(), "summary": summary}
        fsx.write_json_atomic(self.fs, fsx.join(self.root, spec.LATEST_POINTER), pointer)


@dataclass
class VersionLabels:
    store: LabelsStore
    key: str
    # episodes parts read by this object: partition id -> (file token, rows, histogram)
    _episodes_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

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
            for key in spec.MODEL_IDENTITY:
                if existing.get(key) != info.get(key):
                    raise LabelsError(f"{path}: holds {key}={existing.get(key)!r}, not {info.get(key)!r}")
        else:
            fsx.write_json_atomic(self.fs, path, info)
        ensure_groups(self.store.url, spec.VERSIONS_DIR)
        stamps = {key: info[key] for key in spec.MODEL_IDENTITY if key in info}
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
        stamps = {key: info[key] for key in spec.MODEL_IDENTITY}
        group = open_zarr_group(
            fsx.join(self.url, spec.PROGRESS_DIR, relative),
            mode="w",
            attributes={**spec.PROGRESS_GROUP_ATTRS, **stamps},
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

    def commit(self, partition_id: str, episodes: pa.Table, histogram: AdvantageHistogram | None = None) -> None:
        """Write the partition's commit record: its EPISODES rows and, in the file's metadata,
        the histogram of its frames' advantages (finalize's input for the dataset-level cut)."""
        metadata = {spec.HISTOGRAM_KEY: _summary_bytes(histogram)} if histogram is not None else None
        self.write_part(spec.EPISODE_PARTS_DIR, partition_id, conform(episodes, spec.EPISODES, "episodes part"), metadata)

    # -- reading -----------------------------------------------------------------------------

    def _listing(self, directory: str) -> dict[str, tuple[str, str]]:
        """partition id -> (path, token) of the parts in `directory`; the token changes whenever
        a part is rewritten (size, mtime and inode, or the object store's checksum)."""
        base = self.path(directory)
        self.fs.invalidate_cache()
        if not self.fs.exists(base):
            return {}
        parts = {}
        for entry in self.fs.ls(base, detail=True):
            name = entry["name"].rsplit("/", 1)[-1]
            if entry["type"] == "file" and name.endswith(".parquet"):
                parts[name[len("part-") : -len(".parquet")]] = (entry["name"], _token(entry))
        return parts

    def _parts(self, directory: str) -> dict[str, str]:
        return {pid: path for pid, (path, _) in self._listing(directory).items()}

    def _episodes_part(self, pid: str, path: str, token: str) -> tuple[pa.Table, AdvantageHistogram | None]:
        """An episodes part's rows and its partition's advantage histogram (None: committed before
        summaries existed). Read once per token: a part this object has read and that has not
        changed since is not read again (committed() at the start of a run, then finalize)."""
        cached = self._episodes_cache.get(pid)
        if cached is not None and cached[0] == token:
            return cached[1], cached[2]
        raw = fsx.read_parquet(self.fs, path)
        histogram = _histogram_from((raw.schema.metadata or {}).get(spec.HISTOGRAM_KEY))
        for column, value in spec.EPISODES_ADDED.items():  # a part written before the column existed
            if column not in raw.column_names:
                raw = raw.append_column(column, pa.array(np.full(raw.num_rows, value), spec.EPISODES.field(column).type))
        table = conform(raw, spec.EPISODES, path)
        self._episodes_cache[pid] = (token, table, histogram)
        return table, histogram

    def committed(self) -> pa.Table:
        parts = self._listing(spec.EPISODE_PARTS_DIR)
        for pid in set(self._episodes_cache) - set(parts):
            del self._episodes_cache[pid]
        tables = [self._episodes_part(pid, path, token)[0] for pid, (path, token) in sorted(parts.items())]
        return pa.concat_tables(tables) if tables else spec.EPISODES.empty_table()

    def frames(self) -> Iterator[pa.Table]:
        """The committed frames parts, one table at a time."""
        committed = set(self._parts(spec.EPISODE_PARTS_DIR))
        for pid, path in sorted(self._parts(spec.FRAMES_DIR).items()):
            if pid in committed:
                yield fsx.read_parquet(self.fs, path)

    def failures(self) -> pa.Table:
        return read_failures(self.fs, self.path(spec.FAILURES_FILE))

    def update_failures(self, rows: list[dict], labelled: set[str]) -> None:
        update_failures(self.fs, self.path(spec.FAILURES_FILE), rows, pa.array(sorted(labelled), pa.string()))

    # -- consolidation -----------------------------------------------------------------------

    def finalize(self, current: set[tuple[str, str]] | None) -> dict:
        """After a run: drop parts nobody committed and labels of episodes the source no longer
        has (`current`: (episode_id, fingerprint) pairs; None keeps all), give the frames parts
        their top-70% cut, and write episodes.parquet, weights.json and wvm_progress.parquet.
        Rewrites only what changes, so a rerun with nothing new writes nothing.

        Cost follows what is new, not the dataset: each episodes part is read once (not at all
        when this object read it unchanged before), and a frames part is read only when it must
        be rewritten: it is new, loses rows, or the cut must move for every part.

        The cut (the rule is in schemas/labels.py, beside TOP_FRACTION): each frames part records
        the cut c its w_top70 was computed with (TOP70_KEY; w_top70 == 1[advantage >= c] for each
        of its frames, always), and each episodes part the histogram of its partition's
        advantages (HISTOGRAM_KEY). The dataset-level cut c* comes from the sum of those
        histograms. Old parts keep their cuts while the fraction of all frames the stored cuts
        keep (computed from the histograms) stays within TOP_TOLERANCE (1 point) of TOP_FRACTION
        (70 %), the upper bound raised to what c* keeps when frames tied in its 1e-4 bin hold
        that above 70 %: a run that adds a little data rewrites no old part, only the new ones,
        which get c*. When the stored cuts drift out of that band, every part whose cut is not
        c* is rewritten with c*. Parts just written by the stage (provisional partition-local
        cut), parts that lose rows and parts with no recorded cut always get c*.

        Which cut each part holds is also kept in finalize_index.json with the part's file token,
        so unchanged parts are not opened; a part whose token differs (rewritten, copied in)
        has its footer read instead. Partitions committed before the histograms existed have
        their frames part's advantages read once, and the histogram is added to their episodes
        part then. Write order: frames parts, sidecar parts, then episodes parts (commit records)
        last, so a crash midway is redone by the next finalize."""
        episode_parts = self._listing(spec.EPISODE_PARTS_DIR)
        frame_parts, sidecar_parts = self._listing(spec.FRAMES_DIR), self._listing(spec.SIDECAR_PARTS_DIR)
        for parts in (frame_parts, sidecar_parts):
            for pid in set(parts) - set(episode_parts):  # written by a run that died before its commit
                self.fs.rm(parts.pop(pid)[0])
        index = self._read_index()

        # Every episodes part, read once: the rows kept and the partition's histogram.
        kept: dict[str, pa.Table] = {}
        summaries: dict[str, AdvantageHistogram | None] = {}
        dropped: set[str] = set()  # partitions losing rows
        seen: set[str] = set()  # an episode committed by two runs (other partitioning) counts once
        for pid, (path, token) in sorted(episode_parts.items()):
            table, summaries[pid] = self._episodes_part(pid, path, token)
            ids = table.column(spec.EPISODE_ID).to_pylist()
            pairs = zip(ids, table.column(spec.SOURCE_FINGERPRINT).to_pylist())
            keep = [(current is None or pair in current) and pair[0] not in seen for pair in pairs]
            seen.update(i for i, k in zip(ids, keep) if k)
            if not all(keep):
                table = table.filter(pa.array(keep, pa.bool_()))
                dropped.add(pid)
            kept[pid] = table

        # Every committed frames part: its histogram and the cut it holds, without opening it
        # unless it loses rows, predates the histograms, or changed since the last finalize.
        known = index.get("frames", {})
        parts: dict[str, _FramesPart] = {}
        for pid, (path, token) in sorted(frame_parts.items()):
            part = parts[pid] = _FramesPart(path, token)
            if pid in dropped:
                part.load(self, kept[pid])
            elif summaries[pid] is None:  # committed before summaries: its advantages, once
                part.load(self, kept[pid], columns=[spec.EPISODE_ID, spec.ADVANTAGE])
            else:
                part.histogram = summaries[pid]
                entry = known.get(pid)
                if isinstance(entry, dict) and entry.get("token") == token:
                    part.cut = entry.get("cut")
                else:
                    with self.fs.open(path, "rb") as f:
                        part.cut = _recorded_cut(pq.read_schema(f).metadata)
            if part.dropped:
                dropped.add(pid)
        migrated = {pid for pid in parts if summaries[pid] is None}

        cut, assigned, kept_fraction, _ = plan_cuts({pid: (p.histogram, None if p.dropped else p.cut) for pid, p in parts.items()})
        rewrite = sorted(pid for pid, p in parts.items() if p.dropped or p.cut != assigned[pid])

        # Frames parts first, then sidecar parts, then the commit records.
        for pid in rewrite:
            part = parts[pid]
            table = part.full(self, kept[pid])
            w = top_weights(table.column(spec.ADVANTAGE).to_numpy(), assigned[pid])
            table = table.set_column(table.schema.get_field_index(spec.W_TOP70), spec.FRAMES.field(spec.W_TOP70), pa.array(w, pa.float32()))
            metadata = {**(table.schema.metadata or {}), spec.TOP70_KEY: str(assigned[pid]).encode()}
            metadata.pop(spec.TOP70_PROVISIONAL_KEY, None)
            self._replace(spec.FRAMES_DIR, pid, part.path, table.replace_schema_metadata(metadata))
        for pid in sorted((dropped | migrated) & set(sidecar_parts)):
            path = sidecar_parts[pid][0]
            table = fsx.read_parquet(self.fs, path)
            mask = pc.is_in(table.column(spec.EPISODE_INDEX), value_set=kept[pid].column(spec.EPISODE_INDEX))
            if table.num_rows and not pc.all(mask).as_py():
                self._replace(spec.SIDECAR_PARTS_DIR, pid, path, conform(table.filter(mask), spec.SIDECAR, path))
        committed_again = sorted(pid for pid in episode_parts if pid in dropped or (pid in migrated and pid in parts))
        for pid in committed_again:
            histogram = parts[pid].histogram if pid in parts else AdvantageHistogram()
            if kept[pid].num_rows:
                self.write_part(spec.EPISODE_PARTS_DIR, pid, kept[pid], {spec.HISTOGRAM_KEY: _summary_bytes(histogram)})
            else:
                self.fs.rm(episode_parts[pid][0])
            self._episodes_cache.pop(pid, None)
        if committed_again:  # remember what was just written: committed() need not read it back
            for pid, (_, token) in self._listing(spec.EPISODE_PARTS_DIR).items():
                if pid in committed_again:
                    histogram = parts[pid].histogram if pid in parts else AdvantageHistogram()
                    self._episodes_cache[pid] = (token, kept[pid], histogram)

        if rewrite:
            frame_parts = self._listing(spec.FRAMES_DIR)
        frames = sum(p.histogram.total for p in parts.values())
        in_use = sorted({assigned[pid] for pid in frame_parts if pid in assigned})
        weights = {
            "top_fraction": spec.TOP_FRACTION,
            "top70_threshold": cut,
            "tolerance": spec.TOP_TOLERANCE,
            "kept_fraction": round(kept_fraction, 6),
            "frames": frames,
            "part_cuts": {"min": in_use[0], "max": in_use[-1], "distinct": len(in_use)} if in_use else None,
        }
        self._write_if_changed(self.path(spec.WEIGHTS_FILE), json.dumps(weights, indent=2).encode())

        sidecar_parts = self._listing(spec.SIDECAR_PARTS_DIR) if dropped or migrated else sidecar_parts
        sidecar_tokens = {pid: token for pid, (_, token) in sorted(sidecar_parts.items())}
        if sidecar_parts and (index.get("sidecar") != sidecar_tokens or not self.fs.exists(self.path(spec.SIDECAR_FILE))):
            self._write_sidecar({pid: path for pid, (path, _) in sidecar_parts.items()})
        episodes = [t for pid, t in sorted(kept.items()) if t.num_rows]
        all_episodes = pa.concat_tables(episodes) if episodes else spec.EPISODES.empty_table()
        all_episodes = all_episodes.sort_by([(spec.SOURCE_URI, "ascending"), (spec.EPISODE_INDEX, "ascending")])
        self._write_if_changed(self.path(spec.EPISODES_FILE), _parquet_bytes(all_episodes))
        new_index = {
            "format": _INDEX_FORMAT,
            "frames": {pid: {"cut": assigned[pid], "token": token} for pid, (_, token) in sorted(frame_parts.items()) if pid in assigned},
            "sidecar": sidecar_tokens,
        }
        if new_index != index:
            fsx.write_json_atomic(self.fs, self.path(spec.FINALIZE_INDEX), new_index)
        return {
            "episodes": all_episodes.num_rows,
            "frames": frames,
            "top70_threshold": cut,
            "kept_fraction": round(kept_fraction, 6),
            "frames_parts_rewritten": len(rewrite),
        }

    def _read_index(self) -> dict:
        """finalize_index.json, or {} when missing or unreadable (then rebuilt from the parts)."""
        path = self.path(spec.FINALIZE_INDEX)
        if not self.fs.exists(path):
            return {}
        try:
            with self.fs.open(path, "rb") as f:
                index = json.load(f)
        except ValueError:
            return {}
        return index if isinstance(index, dict) and index.get("format") == _INDEX_FORMAT else {}

    def _replace(self, directory: str, pid: str, path: str, table: pa.Table) -> None:
        if table.num_rows:
            self.write_part(directory, pid, table)
        else:
            self.fs.rm(path)

    def _write_if_changed(self, path: str, data: bytes) -> None:
        if self.fs.exists(path) and self.fs.size(path) == len(data):
            with self.fs.open(path, "rb") as f:
                if f.read() == data:
                    return
        fsx.atomic_write_bytes(self.fs, path, data)

    def _write_sidecar(self, parts: dict[str, str]) -> None:
        """One sidecar file for LeRobot, streamed part by part into a local temporary file
        (memory stays flat), in source order (each part's first `index`, from its footer).
        Sources without a LeRobot frame index have no parts and get no sidecar."""
        if not parts:
            return
        order = sorted((self._first_index(path), path) for path in parts.values())
        stamp = json.dumps({k: v for k, v in self.model_info().items() if k != spec.CREATED_AT}, sort_keys=True)
        schema = spec.SIDECAR.with_metadata({b"wvm.model": stamp.encode()})
        with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
            with pq.ParquetWriter(tmp.name, schema, compression="zstd") as writer:
                for _, path in order:
                    writer.write_table(conform(fsx.read_parquet(self.fs, path), spec.SIDECAR, path).cast(schema))
            fsx.replace_with_local_file(self.fs, self.path(spec.SIDECAR_FILE), tmp.name)

    def _first_index(self, path: str) -> int:
        """The smallest `index` of a sidecar part: from its row-group statistics (the footer),
        else from the column."""
        with self.fs.open(path, "rb") as f:
            metadata = pq.ParquetFile(f).metadata
            column = metadata.schema.names.index(spec.SOURCE_INDEX)
            minima = []
            for i in range(metadata.num_row_groups):
                statistics = metadata.row_group(i).column(column).statistics
                if statistics is None or not statistics.has_min_max:
                    minima = None
                    break
                minima.append(statistics.min)
            if minima:
                return min(minima)
        with self.fs.open(path, "rb") as f:
            values = pq.read_table(f, columns=[spec.SOURCE_INDEX]).column(spec.SOURCE_INDEX)
        return pc.min(values).as_py() if len(values) else 0


_INDEX_FORMAT = "wvm-labels-finalize-index"


@dataclass
class _FramesPart:
    """What finalize knows of one frames part: its histogram (from the partition's summary or
    from the part itself), the cut it holds (None: none final) and, once read, its rows."""

    path: str
    token: str
    histogram: AdvantageHistogram | None = None
    cut: float | None = None
    dropped: bool = False  # it holds rows of episodes no longer kept
    table: pa.Table | None = None  # all its columns, kept rows only
    metadata: dict | None = None

    def load(self, labels: VersionLabels, episodes: pa.Table, columns: list[str] | None = None) -> None:
        raw = fsx.read_parquet(labels.fs, self.path, columns=columns)
        self.metadata = dict(raw.schema.metadata or {})
        self.cut = _recorded_cut(self.metadata)
        mask = pc.is_in(raw.column(spec.EPISODE_ID), value_set=episodes.column(spec.EPISODE_ID))
        self.dropped = bool(raw.num_rows) and not pc.all(mask).as_py()
        if self.dropped:
            raw = raw.filter(mask)
        self.histogram = AdvantageHistogram()
        self.histogram.add(raw.column(spec.ADVANTAGE).to_numpy())
        if columns is None:
            self.table = conform(raw, spec.FRAMES, self.path).replace_schema_metadata({**(spec.FRAMES.metadata or {}), **self.metadata})

    def full(self, labels: VersionLabels, episodes: pa.Table) -> pa.Table:
        if self.table is None:
            self.load(labels, episodes)
        return self.table


def plan_cuts(parts: dict[str, tuple[AdvantageHistogram, float | None]]) -> tuple[float, dict[str, float], float, bool]:
    """The dataset-level cut and the cut each part is to hold (the rule: schemas/labels.py,
    beside TOP_FRACTION). `parts`: partition -> (its histogram, the cut it holds; None when it
    must take the new cut whatever happens: new, losing rows, or none recorded). Returns
    (c*, cut per part, fraction of all frames kept with those cuts, whether every part re-cuts)."""
    total = AdvantageHistogram()
    for histogram, _ in parts.values():
        total.merge(histogram)
    cut = total.cut_keeping(spec.TOP_FRACTION)
    frames = total.total
    if frames == 0:
        return cut, dict.fromkeys(parts, cut), 0.0, False
    stored = {pid: cut if held is None else held for pid, (_, held) in parts.items()}
    kept = sum(histogram.count_at_or_above(stored[pid]) for pid, (histogram, _) in parts.items()) / frames
    best = total.count_at_or_above(cut) / frames
    if spec.TOP_FRACTION - spec.TOP_TOLERANCE <= kept <= max(spec.TOP_FRACTION, best) + spec.TOP_TOLERANCE:
        return cut, stored, kept, False
    return cut, dict.fromkeys(parts, cut), best, True


def _token(info: dict) -> str:
    """A file's identity from its listing entry: changes whenever the file is rewritten."""
    return ":".join([fsx.file_token(info), *(str(info[k]) for k in ("ino", "generation") if info.get(k) is not None)])


def _recorded_cut(metadata: dict | None) -> float | None:
    """The final cut a frames part's w_top70 was computed with, or None (none, or provisional)."""
    metadata = metadata or {}
    if metadata.get(spec.TOP70_PROVISIONAL_KEY) or spec.TOP70_KEY not in metadata:
        return None
    try:
        cut = float(metadata[spec.TOP70_KEY])
    except ValueError:
        return None
    return None if np.isnan(cut) else cut


def _summary_bytes(histogram: AdvantageHistogram) -> bytes:
    return json.dumps(histogram.summary(), separators=(",", ":")).encode()


def _histogram_from(raw: bytes | None) -> AdvantageHistogram | None:
    """The histogram an episodes part carries, or None (none, or of other bins: then its frames
    part is read instead)."""
    if not raw:
        return None
    try:
        return AdvantageHistogram.from_summary(json.loads(raw))
    except (ValueError, TypeError, KeyError):
        return None


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
