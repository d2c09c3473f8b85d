"""The code version stamped on every label (schemas/labels.py `code_version`)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__version__ = "0.1.0"  # the distribution's version (pyproject.toml); the wvm package reports this one


@functools.cache
def code_version() -> str:
    """Package version plus the git commit when running from a checkout (stamped on labels)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__
