"""Child processes that do not outlive their parent, and whether a local process still lives."""

from __future__ import annotations

import os
import signal
import subprocess


def process_alive(pid: int) -> bool:
    """Whether a process of this machine exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def die_with_parent() -> None:
    """Use as `preexec_fn`: the kernel sends the child SIGTERM when the thread that started it
    dies, even by kill -9 (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def reap_with_parent(pid: int) -> subprocess.Popen:
    """For a child started by code we do not control (so without `die_with_parent`): a small
    watchdog that terminates `pid` when this process dies, however it dies. Stop the watchdog with
    `.kill()` (not terminate: that fires its trap) after stopping the child normally."""
    script = f'trap "kill -TERM {pid} 2>/dev/null; exit 0" TERM; while kill -0 {pid} 2>/dev/null; do sleep 1; done'
    return subprocess.Popen(["sh", "-c", script], preexec_fn=die_with_parent, stdin=subprocess.DEVNULL)
