"""One writer per output: a lease file with a heartbeat and an expiry, on the output's own
filesystem (local disk or gs://), so it outlives no one: a holder killed with -9 stops
renewing it and the next run takes over once it expires, or at once when the holder was a
process on the same machine that no longer exists (issue #14).

Taking a lease is an exclusive create (`open(mode="xb")`: O_EXCL on a local disk, a
generation-match precondition on GCS), so of two runs that start together exactly one wins.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from pipelines import fs as fsx
from pipelines.errors import WvmError
from pipelines.processes import process_alive

LEASE_FILE = ".wvm-lease.json"
LEASE_SECONDS = 120.0  # a dead holder blocks the output for at most this long


class OutputBusy(WvmError):
    pass


def holds_data(fs, root: str) -> bool:
    """Whether an output directory holds anything but a lease (its writer may take the lease
    before it creates the store) or a file another wvm writer is writing right now (the
    temporary sibling of an atomic write, e.g. the store's marker while two runs create it)."""
    if not fs.exists(root):
        return False
    names = (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    return any(name != LEASE_FILE and ".tmp-" not in name for name in names)


# Leases this thread holds: a flow that holds its output's lease may call the pipeline that
# takes the same lease (re-entrant per thread; another thread of this process must wait).
_held = threading.local()


def _dead_here(holder: dict) -> bool:
    """The holder ran on this machine and its process is gone (killed): no need to wait out
    its lease. Holders on other machines are only judged by their expiry."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    return not process_alive(holder["pid"])


class OutputLease:
    """`with OutputLease(url, "relabel"):` holds `url/.wvm-lease.json` while the block runs,
    renewing it every `ttl / 4` seconds; another run gets `OutputBusy` naming the holder, or
    waits up to `wait_s` for it to finish."""

    def __init__(self, url: str, purpose: str, ttl: float = LEASE_SECONDS, wait_s: float = 0.0):
        self.url, self.purpose, self.ttl, self.wait_s = url.rstrip("/"), purpose, ttl, wait_s
        self.fs, root = fsx.filesystem(self.url)
        self.path = fsx.join(root, LEASE_FILE)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        now = time.time()
        record = {"token": self.token, "purpose": self.purpose, "host": socket.gethostname(), "pid": os.getpid()}
        return json.dumps({**record, "renewed_at": now, "expires_at": now + self.ttl}).encode()

    def _read(self) -> dict | None:
        try:
            self.fs.invalidate_cache()
            with self.fs.open(self.path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError:  # torn or foreign content: treat as expired
            return {"expires_at": 0}

    def _create(self) -> bool:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(self._record())
            return True
        except FileExistsError:
            return False

    def acquire(self) -> None:
        """Take the lease, or raise OutputBusy; with `wait_s`, keep trying that long first (a
        dead holder's lease expires within `ttl`, so waiting never outlasts a crash)."""
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                return self._try_acquire()
            except OutputBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))

    def _try_acquire(self) -> None:
        for _ in range(3):
            if self._create():
                break
            holder = self._read()
            if holder is None:
                continue  # released between our two calls
            if holder.get("expires_at", 0) > time.time() and not _dead_here(holder):
                raise OutputBusy(
                    f"{self.url}: another wvm {holder.get('purpose', 'run')} is writing here "
                    f"(host {holder.get('host')}, pid {holder.get('pid')}); its lease runs until "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['expires_at']))} and is renewed while it lives. "
                    "Wait for it to finish; if it died, rerun after that time."
                )
            # Expired, or its holder is gone: break it, unless someone renewed or replaced it
            # since we read it. (Two runs breaking one stale lease in the same instant can still
            # both succeed; that needs a dead holder and two starts within milliseconds.)
            if self._read() == holder:
                try:
                    self.fs.rm(self.path)
                except FileNotFoundError:
                    pass
        else:
            raise OutputBusy(f"{self.url}: could not take the output's lease {self.path} (contended)")
        self._thread = threading.Thread(target=self._renew, name="wvm-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            holder = self._read()
            if not holder or holder.get("token") != self.token:
                return  # taken over after we stalled past expiry: stop touching it
            fsx.atomic_write_bytes(self.fs, self.path, self._record())

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        holder = self._read()
        if holder and holder.get("token") == self.token:
            self.fs.rm(self.path)

    def __enter__(self) -> OutputLease:
        held = _held.__dict__.setdefault("paths", {})
        self._nested = self.path in held
        if not self._nested:
            self.acquire()
        held[self.path] = held.get(self.path, 0) + 1
        return self

    def __exit__(self, *exc) -> None:
        held = _held.__dict__["paths"]
        held[self.path] -= 1
        if not held[self.path]:
            del held[self.path]
        if not self._nested:
            self.release()
