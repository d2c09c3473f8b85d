"""fsspec helpers: every path in the project is a URL (local path, file://, gs://, ...)."""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

# gcsfs >= 2026 asks a gRPC control API for the bucket type first; against an emulator or a
# plain bucket that call hangs for a minute. The flag turns the probe off (REFERENCE §7).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def storage_options_for(url: str) -> dict[str, Any]:
    """Options for the filesystem behind `url`, taken from the environment.

    STORAGE_EMULATOR_HOST points gs:// at a local GCS emulator (the same variable Google's own
    client libraries read), with anonymous credentials.
    """
    if url.startswith(("gs://", "gcs://")) and os.environ.get("STORAGE_EMULATOR_HOST"):
        host = os.environ["STORAGE_EMULATOR_HOST"]
        if not host.startswith("http"):
            host = "http://" + host
        return {"endpoint_url": host, "token": "anon"}
    return {}


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL or local path."""
    fs, path = url_to_fs(url, **storage_options_for(url))
    return fs, (os.path.abspath(path) if _is_local(fs) else path)


def canonical_uri(url: str) -> str:
    """A stable name for a location: absolute file:// URI for local paths, the URL otherwise."""
    fs, path = filesystem(url)
    if _is_local(fs):
        return "file://" + os.path.abspath(path).rstrip("/")
    return fs.unstrip_protocol(path).rstrip("/")


def absolute(url: str) -> str:
    """A local path made absolute (workers of a remote cluster run in another directory); URLs as given."""
    fs, path = filesystem(url)
    return path if _is_local(fs) else url


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def local_path(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """The OS path when `fs` is the local filesystem (so native readers can use it)."""
    return path if _is_local(fs) else None


def atomic_write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a whole file so that readers see either nothing or all of it.

    Object stores (gs://) make a single PUT atomic by themselves; on a local disk we write a
    temporary sibling and rename it over the target.
    """
    if _is_local(fs):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"  # pipelines.lease.holds_data knows this name
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def replace_with_local_file(fs: fsspec.AbstractFileSystem, path: str, local: str) -> None:
    """Atomically replace `path` with the content of a local file, unless it is identical
    (so a rerun that changes nothing writes nothing). Streams: the file is never in memory."""
    if fs.exists(path) and fs.size(path) == os.path.getsize(local):
        with fs.open(path, "rb") as current, open(local, "rb") as new:
            if all(a == b for a, b in zip(iter(lambda: current.read(1 << 20), b""), iter(lambda: new.read(1 << 20), b""))):
                return
    if _is_local(fs):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        shutil.copyfile(local, tmp)
        os.replace(tmp, path)
    else:
        fs.put_file(local, path)  # a single upload: the object appears whole or not at all


def write_parquet_atomic(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write_bytes(fs, path, buffer.getvalue())


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    atomic_write_bytes(fs, path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_parquet(fs: fsspec.AbstractFileSystem, path: str, **kwargs: Any) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(f, **kwargs)


def file_token(info: dict[str, Any]) -> str:
    """A short content token for a file from its listing: checksum when the store has one
    (gs:// md5 / crc32c / etag), else size + modification time (local disks)."""
    for key in ("md5Hash", "crc32c", "ETag", "etag"):
        if info.get(key):
            return f"{info.get('size')}:{info[key]}"
    mtime = info.get("mtime") or info.get("updated") or info.get("LastModified") or ""
    return f"{info.get('size')}:{mtime}"
