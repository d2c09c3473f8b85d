"""World Value Model: value labels for robot demonstration datasets."""

from __future__ import annotations

# One version for the whole distribution; labels stamp pipelines.version.code_version().
from pipelines.version import __version__

__all__ = ["__version__"]
