"""Decoding uploaded media bytes into arrays, with typed errors the server maps to HTTP statuses.

Every failure raises a `MediaError` subclass with a plain-words message; nothing else escapes.
Limits are checked from headers before the bulk of the data is decoded wherever the format allows:
an image's size from its header (a decompression bomb is never allocated), a WAV's duration from
its `data` chunk, a video's frame count and duration from its packets (demuxing is cheap, decoding
is not), and decoding stops as soon as a limit is passed.
"""
from __future__ import annotations

from .audio import decode_audio
from .common import (MIN_AUDIO_SAMPLES, MODALITIES, SAMPLE_RATE, CorruptMediaError, Decoded, FrameChooser,
                     MediaError, MediaLimits, MediaTooLargeError, UnsupportedMediaError, VideoClip)
from .image import decode_image
from .sniff import _a, sniff
from .video import decode_video

__all__ = ["MIN_AUDIO_SAMPLES", "MODALITIES", "SAMPLE_RATE", "CorruptMediaError", "Decoded", "FrameChooser",
           "MediaError", "MediaLimits", "MediaTooLargeError", "UnsupportedMediaError", "VideoClip", "decode",
           "decode_audio", "decode_image", "decode_video", "sniff"]

# ---------------------------------------------------------------------------------- dispatch

def decode(data: bytes, modality: str, limits: MediaLimits = MediaLimits(),
           declared_mime: str | None = None, video_frames: str = "imagebind") -> Decoded:
    """Decode an upload announced as `modality`. `declared_mime` (e.g. a Content-Type) must name
    the same modality as the bytes; a different subtype (image/jpg for a PNG) or a generic type
    (application/octet-stream) is accepted since clients get those wrong. Video keeps only the
    frames ImageBind samples unless `video_frames="all"`."""
    if modality not in MODALITIES:
        raise UnsupportedMediaError(f"unknown modality {modality!r}: expected one of {MODALITIES}")
    if declared_mime:
        declared = declared_mime.split(";")[0].strip().lower().split("/")[0]
        if declared in MODALITIES and declared != modality:
            raise UnsupportedMediaError(f"declared as {declared_mime} but sent as {_a(modality)}")
    if modality == "image":
        return decode_image(data, limits)
    if modality == "audio":
        return decode_audio(data, limits)
    if video_frames == "all":
        return decode_video(data, limits)
    from ..preprocess import video_frame_indices  # lazy: preprocess imports this module

    return decode_video(data, limits, keep=video_frame_indices)
