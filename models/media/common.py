"""What every media decoder shares: the limits, the typed errors, the decoded video clip."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Union

import numpy as np
from PIL import Image

SAMPLE_RATE = 16000  # ImageBind's audio rate
MIN_AUDIO_SAMPLES = 400  # one 25 ms kaldi fbank window at 16 kHz; shorter audio has no frames
MODALITIES = ("image", "audio", "video")


class MediaError(ValueError):
    """Base of every decoding failure; `status` is the HTTP status the server answers with."""

    status = 400
    code = "invalid_media"


class UnsupportedMediaError(MediaError):
    status = 415
    code = "unsupported_media"


class CorruptMediaError(MediaError):
    status = 400
    code = "corrupt_media"


class MediaTooLargeError(MediaError):
    status = 413
    code = "media_too_large"


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 4096 * 4096  # per image or video frame
    max_audio_seconds: float = 60.0
    max_video_seconds: float = 60.0
    max_video_frames: int = 1800
    # Only for decode_video(keep=None), which holds every frame: T*H*W*3 bytes.
    max_decoded_video_bytes: int = 2 * 1024 ** 3


@dataclass
class VideoClip:
    """Decoded RGB frames. `frames` may hold a subset of the stream (see `decode_video(keep=)`):
    `indices[k]` is the presentation-order index of `frames[k]` among all `n_frames` frames."""

    frames: np.ndarray  # (K, H, W, 3) uint8 RGB
    fps: float
    n_frames: int = -1  # frames in the whole stream; -1 means len(frames)
    indices: np.ndarray | None = None  # (K,) int64; None means 0..K-1
    timestamps: np.ndarray | None = None  # (K,) float64 seconds of each kept frame

    def __post_init__(self):
        if self.n_frames < 0:
            self.n_frames = len(self.frames)
        if self.indices is None:
            self.indices = np.arange(len(self.frames), dtype=np.int64)

    @property
    def duration(self) -> float:
        """Seconds, as decord (ImageBind's video reader) reports it: frame count / average fps."""
        return self.n_frames / self.fps

    def frame(self, index: int) -> np.ndarray:
        """The frame at stream index `index`, (H, W, 3); it must have been kept."""
        pos = int(np.searchsorted(self.indices, index))
        if pos >= len(self.indices) or self.indices[pos] != index:
            raise KeyError(f"frame {index} was not kept when decoding")
        return self.frames[pos]


Decoded = Union[Image.Image, np.ndarray, VideoClip]
FrameChooser = Callable[[int, float], Iterable[int]]  # (n_frames, fps) -> stream indices to keep


def _why(e: BaseException) -> str:
    """The library's reason in words, without the object reprs some of them include."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(e)).strip()
    return text or type(e).__name__


def _too_long(what: str, seconds: float, limit: float) -> MediaTooLargeError:
    return MediaTooLargeError(f"the {what} lasts {seconds:.1f} s; the limit is {limit:g} s")


def _too_many_frames(limits: MediaLimits) -> MediaTooLargeError:
    return MediaTooLargeError(f"the video has more than {limits.max_video_frames} frames, the limit")


def _stream_seconds(container, stream) -> float | None:
    """Duration from the headers (stream, else container), or None when neither gives one."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # av.time_base
    return None
