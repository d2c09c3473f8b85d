"""Video decoding shared by the readers whose frames live in video files (LeRobot, raw folders)."""

from __future__ import annotations

from collections.abc import Iterator

import av
import numpy as np

from pipelines.errors import EpisodeError


def decode_at_timestamps(
    opener,
    query: np.ndarray,
    *,
    size: tuple[int, int] | None,
    tolerance_s: float,
    declared: tuple[int, int] | None = None,
    threads: int,
    file: str,
    episode: int,
) -> Iterator[np.ndarray]:
    """Stream-decode a video and yield the frame nearest each (increasing) query time.

    A query with no frame within `tolerance_s` is an error: the table's timestamps do not match
    the video; so is a frame whose (height, width) is not `declared` (checked before resizing). Only one decoded frame is held at a time, so memory is flat in episode length.
    """
    height, width = size if size else (None, None)
    resize = {"width": width, "height": height, "interpolation": "AREA"} if size else {}
    try:
        container = opener()
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:  # PyAV decodes a corrupt file's metadata strings as UTF-8
        raise EpisodeError(f"cannot open video: {exc}", file=file, episode=episode) from None
    try:
        if not container.streams.video:
            raise EpisodeError("file has no video stream", file=file, episode=episode)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if threads > 1 else "SLICE"
        stream.codec_context.thread_count = max(1, threads)
        time_base = stream.time_base
        container.seek(max(0, int(query[0] / time_base)), stream=stream, backward=True, any_frame=False)
        frames = container.decode(stream)
        previous = current = None  # (time, frame)
        for i, q in enumerate(query):
            while current is None or current[0] < q:
                nxt = next(frames, None)
                if nxt is None:
                    break
                if nxt.pts is None:
                    continue
                previous, current = current, (float(nxt.pts * time_base), nxt)
            candidates = [c for c in (previous, current) if c is not None]
            if not candidates:
                raise EpisodeError("video has no frames", file=file, episode=episode)
            best = min(candidates, key=lambda c: abs(c[0] - q))
            if abs(best[0] - q) > tolerance_s:
                raise EpisodeError(
                    f"timestamps do not match the video: frame {i} wants t={q:.4f}s, nearest video frame "
                    f"is at t={best[0]:.4f}s (tolerance {tolerance_s}s)",
                    file=file,
                    episode=episode,
                )
            if declared and (best[1].height, best[1].width) != tuple(declared):
                raise EpisodeError(
                    f"video frames are {best[1].height}x{best[1].width} but the dataset declares {declared[0]}x{declared[1]}",
                    file=file,
                    episode=episode,
                )
            yield best[1].to_ndarray(format="rgb24", **resize)
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise EpisodeError(f"video cannot be decoded: {exc}", file=file, episode=episode) from None
    finally:
        container.close()
