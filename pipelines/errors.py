"""Errors that name the file and episode at fault, so a user can act on them."""

from __future__ import annotations


class WvmError(Exception):
    """Base of every error the project raises on purpose."""


class DatasetError(WvmError):
    """A whole dataset is unusable (missing metadata, unknown format version...)."""

    def __init__(self, reason: str, *, file: str):
        self.reason, self.file = reason, file
        super().__init__(f"{file}: {reason}")

    def __reduce__(self):  # keyword-only fields survive pickling across processes
        return (_rebuild, (type(self), self.reason, {"file": self.file}))


class EpisodeError(WvmError):
    """One episode is unusable; long jobs can skip it into the dead-letter table."""

    def __init__(self, reason: str, *, file: str, episode: int, stage: str = "decode"):
        self.reason, self.file, self.episode, self.stage = reason, file, episode, stage
        super().__init__(f"{file}: episode {episode}: {reason}")

    def __reduce__(self):
        fields = {"file": self.file, "episode": self.episode, "stage": self.stage}
        return (_rebuild, (type(self), self.reason, fields))


def _rebuild(cls, reason, fields):
    return cls(reason, **fields)


class PartitionFailed(WvmError):
    """A unit of work kept crashing (not a data error) after the engine's retries."""

    def __init__(self, reason: str, *, key: str):
        self.reason, self.key = reason, key
        super().__init__(f"partition {key} failed after retries: {reason}")

    def __reduce__(self):
        return (_rebuild, (type(self), self.reason, {"key": self.key}))
