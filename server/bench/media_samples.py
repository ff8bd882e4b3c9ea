"""Small deterministic media made in memory (PNG, WAV, MP4) for the bench and the tests."""
from __future__ import annotations

import io

import av
import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw


def png(colour=(255, 0, 0), size=(64, 48), fmt="PNG") -> bytes:
    img = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(img).ellipse([size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4], fill=colour)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def wav(freq=440.0, seconds=1.0, rate=16000, fmt="WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format=fmt)
    return buf.getvalue()


def mp4(frames=16, fps=8, size=(64, 48), colour=(0, 0, 255)) -> bytes:
    """A square moving right on white, H.264 yuv420p."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            arr = np.full((size[1], size[0], 3), 255, np.uint8)
            x = int(i * (size[0] - 16) / max(frames - 1, 1))
            arr[16:32, x:x + 16] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
