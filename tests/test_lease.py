"""The per-output lease (pipelines/lease.py): one writer at a time, renewed while it lives,
taken over when its holder dies, re-entrant within a thread."""

from __future__ import annotations

import json
import threading
import time

import pytest

from pipelines import fs as fsx
from pipelines.lease import LEASE_FILE, OutputBusy, OutputLease, holds_data


def read(out) -> dict:
    return json.loads((out / LEASE_FILE).read_text())


def test_renewed_while_held_and_removed_after(tmp_path):
    with OutputLease(str(tmp_path), "relabel", ttl=0.4):
        first = read(tmp_path)["expires_at"]
        time.sleep(0.5)  # longer than the ttl: only renewal keeps it alive
        assert read(tmp_path)["expires_at"] > first > time.time() - 0.5
        with pytest.raises(OutputBusy, match="another wvm relabel is writing here"):
            OutputLease(str(tmp_path), "nightly", ttl=0.4).acquire()  # a live holder, not ours
    assert not (tmp_path / LEASE_FILE).exists()


def test_a_lease_alone_does_not_make_a_directory_hold_data(tmp_path):
    fs, root = fsx.filesystem(str(tmp_path))
    with OutputLease(str(tmp_path), "ingest"):
        assert not holds_data(fs, root)  # a store may still be created here
        (tmp_path / "wvm_labels.json.tmp-0123abcd").write_text("{}")  # another run writing its marker
        assert not holds_data(fs, root)
        (tmp_path / "notes.txt").write_text("mine")
        assert holds_data(fs, root)


def test_reentrant_in_one_thread_exclusive_across_threads(tmp_path):
    events = []
    with OutputLease(str(tmp_path), "nightly"):
        with OutputLease(str(tmp_path), "relabel"):  # the flow's pipeline takes the same lease
            pass
        assert (tmp_path / LEASE_FILE).exists()  # still held by the outer block

        def other():
            with OutputLease(str(tmp_path), "nightly", wait_s=10):
                events.append(("other got it", time.monotonic()))

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.5)
        assert not events  # waits while we hold it
        released = time.monotonic()
    thread.join(timeout=15)
    assert events and events[0][1] >= released


def test_an_expired_lease_is_taken_over(tmp_path):
    (tmp_path / LEASE_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "expires_at": time.time() + 0.3}))
    with pytest.raises(OutputBusy, match=r"host elsewhere, pid 1"):
        OutputLease(str(tmp_path), "relabel").acquire()
    with OutputLease(str(tmp_path), "relabel", wait_s=5):  # waits out the expiry, then takes over
        assert read(tmp_path)["host"] != "elsewhere"
