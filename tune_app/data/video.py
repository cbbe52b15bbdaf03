"""Video with PyAV (FFmpeg): decode the frames at given timestamps, and encode frames (demo data, tests).

Decoding seeks to the keyframe before the first wanted timestamp and decodes forward; each decoded
frame goes to the wanted timestamp nearest to it when it lies within ``tolerance_s`` (half a frame
period for a dataset's fps), so a frame is never taken for its neighbour. AV1 (LeRobot's default,
through libdav1d), H.264 and HEVC decode with the FFmpeg that PyAV's wheels ship; a stream whose
codec that FFmpeg cannot decode is one :class:`UnsupportedVideo` naming the codec.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

# Encoders for the codec names LeRobot writes into info.json ("video.codec").
SEEK_MARGIN_S = 1.0
ENCODERS = {"av1": "libsvtav1", "h264": "libx264", "hevc": "libx265"}
ENCODER_OPTIONS = {"libsvtav1": {"crf": "30", "preset": "8", "g": "2"}, "libx264": {"crf": "18", "g": "2"},
                   "libx265": {"crf": "18", "x265-params": "log-level=error:keyint=2"}}


class UnsupportedVideo(Exception):
    """A video this FFmpeg cannot open or decode (the message names the codec)."""


def open_video(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise UnsupportedVideo(f"cannot be opened as a video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise UnsupportedVideo("holds no video stream")
    return container


def codec_name(stream) -> str:
    return stream.codec_context.codec.name if stream.codec_context is not None else "unknown"


def decode_at(container, times: np.ndarray, tolerance_s: float, put: Callable[[int, np.ndarray], None]) -> np.ndarray:
    """Decode the frames nearest to each of ``times`` (seconds, ascending), calling ``put(i, rgb)``
    for each; returns a bool mask of the times that got a frame. Frames farther than ``tolerance_s``
    from every wanted time are skipped.

    It seeks to the keyframe before ``times[0] - SEEK_MARGIN_S`` (reordered B-frames and open GOPs
    can put a wanted frame before the keyframe that the seek finds); should frames still be missing,
    it decodes the file from its start once more."""
    found = np.zeros(len(times), dtype=bool)
    if len(times):
        best = np.full(len(times), np.inf)
        _decode_from(container, max(0.0, float(times[0]) - SEEK_MARGIN_S), times, tolerance_s, put, found, best)
        if not found.all() and times[0] > SEEK_MARGIN_S:
            _decode_from(container, 0.0, times, tolerance_s, put, found, best)
    return found


def _decode_from(container, seek_s: float, times: np.ndarray, tolerance_s: float, put, found: np.ndarray, best: np.ndarray) -> None:
    import av

    stream = container.streams.video[0]
    try:
        container.seek(int(seek_s / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else float(frame.pts * stream.time_base)
            if t < times[0] - tolerance_s:
                continue
            if t > times[-1] + tolerance_s:
                break
            i = _nearest(times, t)
            gap = abs(times[i] - t)
            if gap <= tolerance_s and gap < best[i]:
                best[i] = gap
                found[i] = True
                put(i, frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as exc:
        raise UnsupportedVideo(f"codec '{codec_name(stream)}': decoding failed ({exc}); this PyAV's FFmpeg may lack "
                               "its decoder: re-encode the videos as AV1 or H.264") from None


def _nearest(times: np.ndarray, t: float) -> int:
    i = int(np.searchsorted(times, t))
    if i == 0:
        return 0
    if i == len(times) or abs(times[i - 1] - t) <= abs(times[i] - t):
        return i - 1
    return i


def check_decodable(container, declared: str | None = None) -> None:
    """Refuse (one line) a stream that this FFmpeg has no decoder for, before decoding anything.
    ``declared``: the codec the dataset says it used (FFmpeg cannot name a codec it does not know)."""
    import av

    if container.streams.video[0].codec_context is None:
        raise UnsupportedVideo(f"codec '{declared or 'unknown'}' cannot be decoded by the FFmpeg in PyAV {av.__version__}; "
                               "re-encode the videos as AV1 or H.264")


def encode(path: Path, frames: np.ndarray, fps: float, codec: str = "av1") -> None:
    """Write ``frames`` (N, H, W, 3) uint8 as an MP4 in ``codec`` (av1/h264/hevc), frame i at i / fps."""
    import av

    encoder = ENCODERS[codec]
    os.environ.setdefault("SVT_LOG", "1")          # SVT-AV1 prints its banner on stderr otherwise
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = dict(ENCODER_OPTIONS[encoder])
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
