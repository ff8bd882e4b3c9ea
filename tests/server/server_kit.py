"""Helpers for the server tests: small decoder settings and media made in memory."""
from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np

# Small decoder settings: the tiny decoders at 2-4 steps and toy sizes.
IMAGE = {"num_inference_steps": 2, "height": 32, "width": 32}
AUDIO = {"num_inference_steps": 2, "audio_length_in_s": 0.5}
VIDEO = {"num_inference_steps": 2, "num_frames": 8, "height": 32, "width": 32}
SMALL = {"image": IMAGE, "audio": AUDIO, "video": VIDEO}
# A decoder call that runs for many seconds: long enough to cancel or time out mid-way.
SLOW_VIDEO = {"num_inference_steps": 100, "num_frames": 8, "height": 32, "width": 32}


# --------------------------------------------------------------------------- media makers

def png_bytes(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float = 0.5, rate: int = 16000, freq: float = 440.0) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def mp4_bytes(frames: int = 8, size: int = 32, fps: int = 8) -> bytes:
    from server.codecs import encode_mp4

    rng = np.random.default_rng(1)
    return encode_mp4(rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8), fps)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG declaring huge dimensions, a few dozen bytes long."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{b64(data)}"


def image_part(data: bytes | None = None, mime: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(mime, data if data is not None else png_bytes())}}


def audio_part(data: bytes | None = None, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(data if data is not None else wav_bytes()), "format": fmt}}


def video_part(data: bytes | None = None, mime: str = "video/mp4") -> dict:
    return {"type": "video_url", "video_url": {"url": data_url(mime, data if data is not None else mp4_bytes())}}


def user(*parts: dict, text: str = "What is this?") -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}, *parts]}


def body(*messages: dict, **extra) -> dict:
    return {"messages": list(messages) or [user()], "max_tokens": 8, "seed": 1, **SMALL, **extra}



PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
