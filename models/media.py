"""Decoding uploaded media bytes into arrays, with typed errors the server maps to HTTP statuses.

Every failure raises a `MediaError` subclass with a plain-words message; nothing else escapes.
Limits are checked from headers before the bulk of the data is decoded wherever the format allows:
an image's size from its header (a decompression bomb is never allocated), a WAV's duration from
its `data` chunk, a video's frame count and duration from its packets (demuxing is cheap, decoding
is not), and decoding stops as soon as a limit is passed.
"""
from __future__ import annotations

import re

import io
import math
import struct
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

# ---------------------------------------------------------------------------------- sniffing

_ISO_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
_ISO_IMAGE_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"}
_QT_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
# Containers that may carry sound alone (a browser's audio/webm recording, an .m4a): accepted as audio.
_AUDIO_CONTAINERS = {"video/mp4", "video/webm", "video/x-matroska", "video/quicktime", "video/ogg"}
_SOUNDFILE_MIMES = {"audio/wav", "audio/flac", "audio/ogg", "audio/mpeg"}


_PREFIXES = [  # (magic at offset 0, modality, mime)
    (b"\x89PNG\r\n\x1a\n", "image", "image/png"), (b"\xff\xd8\xff", "image", "image/jpeg"),
    (b"GIF87a", "image", "image/gif"), (b"GIF89a", "image", "image/gif"),
    (b"fLaC", "audio", "audio/flac"), (b"ID3", "audio", "audio/mpeg"),
]
_RIFF = {b"WEBP": ("image", "image/webp"), b"WAVE": ("audio", "audio/wav"),
         b"AVI ": ("video", "video/x-msvideo")}  # RIFF/RF64/BW64 <size> <form type>


def sniff(data: bytes) -> tuple[str, str]:
    """(modality, mime) from the magic bytes alone. Raises UnsupportedMediaError (CorruptMediaError
    for zero bytes)."""
    if not data:
        raise CorruptMediaError("the upload is empty (zero bytes)")
    h = bytes(data[:512])
    for magic, modality, mime in _PREFIXES:
        if h.startswith(magic):
            return modality, mime
    if h[:4] in (b"RIFF", b"RF64", b"BW64") and h[8:12] in _RIFF:
        return _RIFF[h[8:12]]
    if h.startswith(b"OggS"):
        return ("video", "video/ogg") if b"\x80theora" in h else ("audio", "audio/ogg")
    if len(h) >= 2 and h[0] == 0xFF and h[1] & 0xE0 == 0xE0 and (h[1] >> 3) & 3 != 1:
        # MPEG audio frame sync; layer bits 00 mean ADTS AAC rather than MP1/2/3.
        return ("audio", "audio/aac") if (h[1] >> 1) & 3 == 0 else ("audio", "audio/mpeg")
    found = _sniff_iso_or_matroska(h)
    if found is None:
        raise UnsupportedMediaError(
            "not an image, audio or video format we read (PNG, JPEG, WebP, GIF; WAV, FLAC, OGG, MP3; "
            "MP4, WebM, MOV)")
    return found


def _sniff_iso_or_matroska(h: bytes) -> tuple[str, str] | None:
    if h[4:8] == b"ftyp":
        brand = h[8:12]
        if brand in _ISO_IMAGE_BRANDS:
            raise UnsupportedMediaError("HEIC/AVIF images are not supported: send PNG, JPEG or WebP")
        if brand in _ISO_AUDIO_BRANDS:
            return "audio", "audio/mp4"
        return "video", "video/quicktime" if brand == b"qt  " else "video/mp4"
    if h[4:8] in _QT_ATOMS:
        return "video", "video/quicktime"
    if h.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", "video/webm" if b"webm" in h[:64] else "video/x-matroska"
    return None


def _check_input(data: bytes, modality: str, limits: MediaLimits) -> str:
    """Size and type checks shared by the decoders; returns the sniffed mime."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UnsupportedMediaError(f"expected bytes, got {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise MediaTooLargeError(
            f"the {modality} is {len(data) / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.1f} MB")
    sniffed, mime = sniff(data)
    if sniffed != modality and not (modality == "audio" and mime in _AUDIO_CONTAINERS):
        raise UnsupportedMediaError(f"expected {_a(modality)} but the bytes are {_a(sniffed)} ({mime})")
    return mime


def _a(modality: str) -> str:
    return f"an {modality}" if modality[0] in "aeiou" else f"a {modality}"


# ---------------------------------------------------------------------------------- images

_PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}


def decode_image(data: bytes, limits: MediaLimits = MediaLimits()) -> Image.Image:
    """PNG, JPEG, WebP or GIF (first frame) -> RGB PIL image. Size is checked from the header."""
    mime = _check_input(data, "image", limits)
    try:
        img = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[mime]])  # reads the header only
    except Image.DecompressionBombError:  # Pillow's own guard, past twice its MAX_IMAGE_PIXELS
        size = "x".join(map(str, _png_size(data) or ())) or "over 178 million"
        raise MediaTooLargeError(f"the image is {size} pixels; the limit is {limits.max_pixels} "
                                 f"pixels") from None
    except Exception as e:  # UnidentifiedImageError, struct.error, SyntaxError...
        raise CorruptMediaError(f"the image could not be read: {_why(e)}") from None
    width, height = img.size
    if width * height > limits.max_pixels:
        raise MediaTooLargeError(
            f"the image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels")
    try:
        img.load()
        if img.mode.startswith("I"):  # 16-bit grey PNG: Pillow's convert("RGB") would clip it white
            img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8), "L")
        # ImageBind converts with a plain convert("RGB") (alpha dropped, no EXIF rotation): so do we.
        return img.convert("RGB")
    except Exception as e:  # truncated (OSError), zlib errors, broken streams
        raise CorruptMediaError(f"the image is damaged or truncated: {_why(e)}") from None


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, for the message when Pillow refuses to open it."""
    if bytes(data[12:16]) != b"IHDR":
        return None
    return struct.unpack(">II", bytes(data[16:24]))


def _why(e: BaseException) -> str:
    """The library's reason in words, without the object reprs some of them include."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(e)).strip()
    return text or type(e).__name__


def _too_long(what: str, seconds: float, limit: float) -> MediaTooLargeError:
    return MediaTooLargeError(f"the {what} lasts {seconds:.1f} s; the limit is {limit:g} s")


def _too_many_frames(limits: MediaLimits) -> MediaTooLargeError:
    return MediaTooLargeError(f"the video has more than {limits.max_video_frames} frames, the limit")


# ---------------------------------------------------------------------------------- audio

def decode_audio(data: bytes, limits: MediaLimits = MediaLimits()) -> np.ndarray:
    """WAV, FLAC, OGG, MP3 (soundfile) or audio in MP4/WebM/AAC (PyAV) -> (N,) float32 mono at
    16 kHz. Channels are averaged; other rates are resampled with soxr."""
    mime = _check_input(data, "audio", limits)
    if mime == "audio/wav":
        _check_wav_header(bytes(data[:4096]), len(data), limits)
    wave, rate = None, 0
    if mime in _SOUNDFILE_MIMES:
        wave, rate = _read_soundfile(data, limits)
    if wave is None:  # not a soundfile format, or libsndfile could not parse it
        wave, rate = _read_pyav_audio(data, limits)
    if wave.size == 0:
        raise CorruptMediaError("the audio contains no samples")
    if not np.isfinite(wave).all():
        raise CorruptMediaError("the audio contains invalid (NaN or infinite) samples")
    if rate != SAMPLE_RATE:
        import soxr  # imported here: only resampling needs it

        wave = soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    if wave.size < MIN_AUDIO_SAMPLES:
        raise CorruptMediaError(f"the audio is too short: {wave.size / SAMPLE_RATE * 1000:.1f} ms "
                                f"(at least 25 ms is needed)")
    return np.ascontiguousarray(wave, dtype=np.float32)


def _check_wav_header(head: bytes, total: int, limits: MediaLimits) -> None:
    """Refuse a RIFF WAV from its header: declared duration over the limit, or truncated data.

    libsndfile silently shortens a WAV whose `data` chunk runs past the end of the file, so its
    frame count can neither reveal a 10-hour header nor a truncated upload: read the chunks here."""
    if head[:4] != b"RIFF":
        return  # RF64/BW64 keep 64-bit sizes elsewhere; soundfile's frame count is checked later
    fmt, pos = None, 12
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if cid == b"fmt " and pos + 24 <= len(head):
            fmt = struct.unpack("<HHIIH", head[pos + 8:pos + 22])  # tag, channels, rate, byte rate, align
        if cid == b"data":
            break
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    else:
        return  # no data chunk in the first 4 KB: let libsndfile judge the file
    if fmt is None or fmt[2] == 0 or fmt[4] == 0:
        raise CorruptMediaError("the WAV header is damaged (no usable 'fmt ' chunk)")
    if size in (0, 0xFFFFFFFF):
        return  # a streamed WAV whose writer never filled in the size: the samples decide
    seconds = size / fmt[4] / fmt[2]
    if seconds > limits.max_audio_seconds:
        raise _too_long("audio", seconds, limits.max_audio_seconds)
    if pos + 8 + size > total:
        raise CorruptMediaError(f"the WAV is truncated: its header declares {seconds:.2f} s but only "
                                f"{max(total - pos - 8, 0) / fmt[4] / fmt[2]:.2f} s is present")


def _read_soundfile(data: bytes, limits: MediaLimits) -> tuple[np.ndarray | None, int]:
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, frames = f.samplerate, f.frames
            if rate <= 0:
                raise CorruptMediaError("the audio header has no sample rate")
            if frames > 0 and frames / rate > limits.max_audio_seconds:
                raise _too_long("audio", frames / rate, limits.max_audio_seconds)
            cap = int(limits.max_audio_seconds * rate) + 1  # never read past the limit
            wave = f.read(frames=cap, dtype="float32", always_2d=True)  # (N, C)
    except MediaError:
        raise
    except Exception:
        return None, 0  # PyAV gets a try: it reads more variants (ID3-wrapped FLAC, odd MP3s)
    if len(wave) / rate > limits.max_audio_seconds:
        raise _too_long("audio", len(wave) / rate, limits.max_audio_seconds)
    return wave.mean(axis=1, dtype=np.float32), rate


def _read_pyav_audio(data: bytes, limits: MediaLimits) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise UnsupportedMediaError("the file has no audio stream")
            stream = container.streams.audio[0]
            seconds = _stream_seconds(container, stream)
            if seconds is not None and seconds > limits.max_audio_seconds:
                raise _too_long("audio", seconds, limits.max_audio_seconds)
            return _decode_audio_frames(container, stream, limits)
    except MediaError:
        raise
    except Exception as e:
        raise CorruptMediaError(f"the audio could not be decoded: {_why(e)}") from None


def _decode_audio_frames(container, stream, limits: MediaLimits) -> tuple[np.ndarray, int]:
    import av

    rate = stream.codec_context.sample_rate or stream.rate
    if not rate:
        raise CorruptMediaError("the audio stream has no sample rate")
    # Planar float at the stream's own rate: soxr does the resampling, not swresample.
    resampler = av.AudioResampler(format="fltp", rate=rate)
    chunks, count, cap = [], 0, limits.max_audio_seconds * rate
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            chunk = out.to_ndarray().mean(axis=0, dtype=np.float32)  # (C, n) -> (n,)
            chunks.append(chunk)
            count += len(chunk)
        if count > cap:
            raise _too_long("audio", count / rate, limits.max_audio_seconds)
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), int(rate)


def _stream_seconds(container, stream) -> float | None:
    """Duration from the headers (stream, else container), or None when neither gives one."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # av.time_base
    return None


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
    from .preprocess import video_frame_indices  # lazy: preprocess imports this module

    return decode_video(data, limits, keep=video_frame_indices)
