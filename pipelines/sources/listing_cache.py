"""What a reader learnt by reading a whole file, kept for the next run while the file is
unchanged: e.g. an RLDS shard's record offsets, step counts and tasks, which cost a full read
of the shard to learn (TFRecord has no index). A nightly run then reads only new shards.

Entries are JSON files named by a hash of (what, file URL, file token), under `WVM_LISTING_CACHE`
(a local path or any fsspec URL, e.g. a gs:// prefix shared by the pods of a cluster), default
`$WVM_CACHE/listings` (`~/.cache/wvm/listings`). A changed file has another token, so a stale entry is never read; an
unreadable or torn entry is a miss. Writes are atomic; losing the cache only costs time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

from pipelines import fs as fsx

ENV = "WVM_LISTING_CACHE"
log = logging.getLogger("wvm.listing_cache")


def _root() -> str:
    return os.environ.get(ENV) or os.path.join(os.environ.get("WVM_CACHE") or os.path.expanduser("~/.cache/wvm"), "listings")


def _path(kind: str, url: str, token: str) -> tuple[Any, str]:
    fs, root = fsx.filesystem(_root())
    name = hashlib.sha256(json.dumps([kind, url, token]).encode()).hexdigest()[:40]
    return fs, fsx.join(root, kind, f"{name}.json")


def get(kind: str, url: str, token: str) -> Any | None:
    """The value stored for this file at this token, or None."""
    fs, path = _path(kind, url, token)
    try:
        with fs.open(path, "rb") as f:
            entry = json.loads(f.read())
    except (FileNotFoundError, ValueError, OSError):
        return None
    if entry.get("url") != url or entry.get("token") != token:  # a hash collision or a foreign file
        return None
    return entry.get("value")


def put(kind: str, url: str, token: str, value: Any) -> None:
    fs, path = _path(kind, url, token)
    try:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fsx.atomic_write_bytes(fs, path, json.dumps({"url": url, "token": token, "value": value}).encode())
    except OSError as exc:  # a read-only or full cache only costs the next run time
        log.warning("listing cache %s not written: %s", path, exc)
