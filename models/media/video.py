"""Video: MP4, WebM, MOV -> the frames asked for, limits checked from the packets before decoding."""
from __future__ import annotations

import io
import math

import numpy as np

from .common import (CorruptMediaError, FrameChooser, MediaError, MediaLimits, MediaTooLargeError,
                     UnsupportedMediaError, VideoClip, _stream_seconds, _too_long, _too_many_frames, _why)
from .sniff import _check_input

# ---------------------------------------------------------------------------------- video

def decode_video(data: bytes, limits: MediaLimits = MediaLimits(),
                 keep: FrameChooser | None = None) -> VideoClip:
    """MP4, WebM, MOV (any frame rate) -> VideoClip of RGB frames via PyAV.

    A first pass demuxes packets without decoding them to count frames and measure the duration
    (limits checked there); the decode pass then keeps only the frames `keep(n_frames, fps)` names
    (all of them when `keep` is None) and stops after the last one it needs."""
    _check_input(data, "video", limits)
    try:
        n_frames, fps, (width, height) = _probe_video(data, limits)
        wanted = _wanted(keep, n_frames, fps, width * height * 3, limits)
        frames, indices, times, decoded = _decode_frames(data, wanted, limits)
        if wanted is None:
            n_frames = decoded  # every frame was decoded: their count is the truth
        elif 0 < decoded <= wanted[-1]:
            # Fewer frames decoded than packets demuxed (rare): choose again from the true count.
            n_frames = decoded
            wanted = _wanted(keep, n_frames, fps, width * height * 3, limits)
            frames, indices, times, _ = _decode_frames(data, wanted, limits)
    except MediaError:
        raise
    except Exception as e:  # av.error.InvalidDataError and friends
        raise CorruptMediaError(f"the video could not be decoded: {_why(e)}") from None
    if not frames:
        raise CorruptMediaError("the video has no frames that could be decoded")
    return VideoClip(frames=np.stack(frames), fps=fps, n_frames=n_frames,
                     indices=np.asarray(indices, np.int64), timestamps=np.asarray(times, np.float64))


def _video_stream(container):
    if container.streams.video:
        return container.streams.video[0]
    if container.streams.audio:
        raise UnsupportedMediaError("the file holds only sound: send it as audio, not video")
    raise CorruptMediaError("the file has no video stream")


def _probe_video(data: bytes, limits: MediaLimits) -> tuple[int, float, tuple[int, int]]:
    """(frame count, fps, (width, height)) from headers and demuxed packets, nothing decoded."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = _video_stream(container)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limits.max_pixels:
            raise MediaTooLargeError(f"the video is {width}x{height} pixels a frame; the limit is "
                                     f"{limits.max_pixels} pixels")
        seconds = _stream_seconds(container, stream)
        if seconds is not None and seconds > limits.max_video_seconds:
            raise _too_long("video", seconds, limits.max_video_seconds)
        if stream.frames > limits.max_video_frames:
            raise _too_many_frames(limits)
        pts = []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            pts.append(packet.pts)
            if len(pts) > limits.max_video_frames:
                raise _too_many_frames(limits)
        if not pts:
            raise CorruptMediaError("the video has no frames")
        times = sorted(float(p * stream.time_base) for p in pts if p is not None)
        if len(times) > 1 and times[-1] - times[0] > limits.max_video_seconds:
            raise _too_long("video", times[-1] - times[0], limits.max_video_seconds)
        return len(pts), _frame_rate(stream, times), (width, height)


def _frame_rate(stream, times: list[float]) -> float:
    """decord's rule (average rate, else the stream's base rate), then the timestamps' own rate
    for variable-frame-rate files that declare neither."""
    for rate in (stream.average_rate, stream.base_rate, stream.guessed_rate):
        if rate and float(rate) > 0 and math.isfinite(float(rate)):
            return float(rate)
    if len(times) > 1 and times[-1] > times[0]:
        return (len(times) - 1) / (times[-1] - times[0])
    return 1.0  # a single frame without timing: any rate gives the same one-frame clips


def _wanted(keep: FrameChooser | None, n_frames: int, fps: float, frame_bytes: int,
            limits: MediaLimits) -> list[int] | None:
    if keep is None:
        if n_frames * frame_bytes > limits.max_decoded_video_bytes:
            raise MediaTooLargeError(
                f"decoding all {n_frames} frames would take {n_frames * frame_bytes / 1e9:.1f} GB; "
                f"the limit is {limits.max_decoded_video_bytes / 1e9:.1f} GB")
        return None
    wanted = sorted({int(i) for i in keep(n_frames, fps) if 0 <= int(i) < n_frames})
    if not wanted:
        raise CorruptMediaError("the video has no frames to sample")
    return wanted


def _decode_frames(data: bytes, wanted: list[int] | None, limits: MediaLimits):
    """Decode in presentation order, keeping the `wanted` indices (all when None).
    Returns (frames [(H, W, 3) uint8], indices, timestamps, frames decoded)."""
    import av

    wanted_set = None if wanted is None else set(wanted)
    last = None if wanted is None else wanted[-1]
    frames, indices, times, size, index = [], [], [], None, -1
    with av.open(io.BytesIO(data)) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"  # frame threads: several times faster on long clips
        for index, frame in enumerate(container.decode(stream)):
            if index >= limits.max_video_frames:
                raise _too_many_frames(limits)
            if wanted_set is None or index in wanted_set:
                if frame.width * frame.height > limits.max_pixels:
                    raise MediaTooLargeError("a video frame is over the pixel limit")
                size = size or (frame.width, frame.height)  # a mid-stream size change is scaled back
                rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                frames.append(rgb)  # (H, W, 3)
                indices.append(index)
                times.append(float(frame.time) if frame.time is not None else math.nan)
            if last is not None and index >= last:
                break
    return frames, indices, times, index + 1
