"""Output encoding: PNG images, 16 kHz WAV audio, H.264 MP4 (yuv420p, faststart) video.

Decoding of uploads is not here: it lives in `models.media`, the one place media are read.
"""
from __future__ import annotations

import base64
import io
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
MIME = {"image": "image/png", "audio": "audio/wav", "video": "video/mp4"}
EXTENSION = {"image/png": "png", "audio/wav": "wav", "video/mp4": "mp4"}


@dataclass(frozen=True)
class EncodedMedia:
    modality: str
    mime: str
    data: bytes

    @property
    def extension(self) -> str:
        return EXTENSION[self.mime]

    def data_url(self) -> str:
        return data_url(self.mime, self.data)


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def encode_png(image: Any) -> bytes:
    """A PIL image (or an (H, W, 3) uint8 array) -> PNG bytes."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def encode_wav(wave: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """(N,) float waveform in [-1, 1] -> mono 16-bit PCM WAV bytes."""
    import soundfile as sf

    wave = np.nan_to_num(np.asarray(wave, dtype=np.float32).reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0)
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: repeat the last row / column when a side is odd."""
    _, h, w, _ = frames.shape
    pad = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
    return np.pad(frames, pad, mode="edge") if h % 2 or w % 2 else frames


def encode_mp4(frames: np.ndarray, fps: int | float) -> bytes:
    """(F, H, W, 3) uint8 RGB -> H.264 MP4, yuv420p, moov atom first (plays in browsers)."""
    import av

    frames = _even(np.ascontiguousarray(frames, dtype=np.uint8))
    _, height, width, _ = frames.shape
    fd, path = tempfile.mkstemp(suffix=".mp4")  # faststart rewrites the file: it needs a real one
    os.close(fd)
    try:
        with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=max(1, int(round(fps))))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": "18", "preset": "veryfast"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def encode_output(modality: str, value: Any) -> EncodedMedia:
    """A model output (PIL image, waveform, GeneratedVideo) -> its file bytes."""
    if modality == "image":
        return EncodedMedia(modality, MIME["image"], encode_png(value))
    if modality == "audio":
        return EncodedMedia(modality, MIME["audio"], encode_wav(value))
    if modality == "video":
        return EncodedMedia(modality, MIME["video"], encode_mp4(value.frames, value.fps))
    raise ValueError(f"unknown output modality {modality!r}")
