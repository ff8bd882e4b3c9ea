"""models/media.py: every format we read, every bad input we refuse, resampling and the limits.

All media are made in memory here, small and seeded, so the file runs in a few seconds.
"""
from __future__ import annotations

import io
import struct
import time
import zlib
from fractions import Fraction
from functools import lru_cache
from types import SimpleNamespace

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from models import media
from models.media import video as media_video
from models.media import (CorruptMediaError, MediaError, MediaLimits, MediaTooLargeError,
                          UnsupportedMediaError, VideoClip)

# ---------------------------------------------------------------------------------- makers


def image_bytes(fmt="PNG", size=(40, 30), mode="RGB", **save) -> bytes:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    arr = arr[..., 0] if channels == 1 else arr
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def tone(freq=440.0, seconds=1.0, rate=16000, channels=1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    wave = (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def audio_bytes(fmt="WAV", subtype=None, **kw) -> bytes:
    rate = kw.pop("rate", 16000)
    buf = io.BytesIO()
    sf.write(buf, tone(rate=rate, **kw), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def av_audio_bytes(fmt="mp4", codec="aac", rate=44100, seconds=1.0) -> bytes:
    """Sound alone in a video container (an .m4a, a browser's audio/webm recording)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        wave = tone(seconds=seconds, rate=rate)
        size = stream.codec_context.frame_size or 1024
        for i in range(0, len(wave), size):
            frame = av.AudioFrame.from_ndarray(wave[None, i:i + size], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@lru_cache(maxsize=None)
def video_bytes(fmt="mp4", codec="libx264", fps=10, frames=12, size=(48, 32), pts=None) -> bytes:
    """Frame i is filled with grey level 20*i (mod 240), so decoded order is checkable.
    `pts` (milliseconds per frame) makes a variable-frame-rate file."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 20 * i % 240, np.uint8),
                                               format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, with a tiny (wrong) IDAT: a decompression bomb
    for anyone who allocates from the header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def wav_declaring(seconds: float, rate=16000, actual_samples=1600) -> bytes:
    """A PCM16 mono WAV whose data chunk claims `seconds` but holds `actual_samples`."""
    data = np.zeros(actual_samples, "<i2").tobytes()
    size = int(seconds * rate * 2)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", size) + data)


# ---------------------------------------------------------------------------------- sniffing

@pytest.mark.parametrize("data,expected", [
    (image_bytes("PNG"), ("image", "image/png")),
    (image_bytes("JPEG"), ("image", "image/jpeg")),
    (image_bytes("WEBP"), ("image", "image/webp")),
    (image_bytes("GIF"), ("image", "image/gif")),
    (audio_bytes("WAV"), ("audio", "audio/wav")),
    (audio_bytes("FLAC"), ("audio", "audio/flac")),
    (audio_bytes("OGG", "VORBIS"), ("audio", "audio/ogg")),
    (audio_bytes("MP3", "MPEG_LAYER_III"), ("audio", "audio/mpeg")),
    (video_bytes("mp4"), ("video", "video/mp4")),
    (video_bytes("mov"), ("video", "video/quicktime")),
    (video_bytes("webm", "libvpx"), ("video", "video/webm")),
])
def test_sniff_formats(data, expected):
    assert media.sniff(data) == expected


@pytest.mark.parametrize("data", [b"hello world, plain text", b"%PDF-1.7\n" + b"\0" * 64, bytes(range(256)),
                                  b"\0\0\0\x18ftypheic" + b"\0" * 32, b"BM" + b"\0" * 60])
def test_sniff_refuses_other_formats(data):
    with pytest.raises(UnsupportedMediaError) as e:
        media.sniff(data)
    assert e.value.status == 415


# ---------------------------------------------------------------------------------- images

@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("JPEG", "RGB"),
                                      ("WEBP", "RGB"), ("GIF", "RGB")])
def test_decode_image_formats(fmt, mode):
    img = media.decode_image(image_bytes(fmt, size=(40, 30), mode=mode))
    assert img.mode == "RGB" and img.size == (40, 30)


def test_png_pixels_survive_exactly():
    arr = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    assert np.array_equal(np.asarray(media.decode_image(buf.getvalue())), arr)


def test_16_bit_grey_png_is_scaled_not_clipped():
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(buf, format="PNG")
    assert media.decode_image(buf.getvalue()).getpixel((0, 0)) == (156, 156, 156)  # 40000 >> 8


def test_one_pixel_image_is_fine():
    assert media.decode_image(image_bytes("PNG", size=(1, 1))).size == (1, 1)


@pytest.mark.parametrize("side", [5_000, 100_000])
def test_png_bomb_refused_from_header_quickly(side):
    """A few hundred bytes declaring 75 MB or 30 GB of pixels: refused before any allocation."""
    started = time.perf_counter()
    with pytest.raises(MediaTooLargeError) as e:
        media.decode_image(png_header_only(side, side))
    assert e.value.status == 413 and f"{side}x{side}" in str(e.value)
    assert time.perf_counter() - started < 1.0


def test_pillow_bomb_guard_maps_to_too_large():
    """Even with our pixel limit lifted, Pillow's own DecompressionBombError becomes a 413."""
    with pytest.raises(MediaTooLargeError):
        media.decode_image(png_header_only(100_000, 100_000), MediaLimits(max_pixels=10 ** 12))


def test_image_pixel_limit():
    data = image_bytes("PNG", size=(40, 30))
    assert media.decode_image(data, MediaLimits(max_pixels=1200)).size == (40, 30)
    with pytest.raises(MediaTooLargeError):
        media.decode_image(data, MediaLimits(max_pixels=1199))


def _corrupt_idat(png: bytes) -> bytes:
    at = png.index(b"IDAT") + 4
    length = struct.unpack(">I", png[at - 8:at - 4])[0]
    return png[:at] + b"\xff" * length + png[at + length:]


@pytest.mark.parametrize("make", [
    lambda: _corrupt_idat(image_bytes("PNG")),
    lambda: image_bytes("PNG")[:-200],  # truncated inside IDAT
    lambda: image_bytes("JPEG")[:300],
    lambda: b"\x89PNG\r\n\x1a\n" + b"not a png at all" * 4,
    lambda: b"\xff\xd8\xff" + b"\0" * 50,
    lambda: png_header_only(10, 10),  # IDAT too short for the declared size
])
def test_corrupt_images(make):
    with pytest.raises(CorruptMediaError) as e:
        media.decode_image(make())
    assert e.value.status == 400 and str(e.value)


# ---------------------------------------------------------------------------------- audio

@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("WAV", "PCM_24"),
                                         ("FLAC", None), ("OGG", "VORBIS"), ("OGG", "OPUS"),
                                         ("MP3", "MPEG_LAYER_III")])
def test_decode_audio_formats(fmt, subtype):
    wave = media.decode_audio(audio_bytes(fmt, subtype, seconds=1.0))
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) < 1600  # MP3/Opus add a little encoder padding
    assert 0.3 < np.abs(wave[2000:-2000]).max() < 0.5  # lossy codecs ring at the abrupt ends


def test_wav_16k_is_not_altered():
    wave = media.decode_audio(audio_bytes("WAV", "PCM_16"))
    assert np.abs(wave - tone()).max() <= 1 / 32768


@pytest.mark.parametrize("fmt,codec", [("mp4", "aac"), ("webm", "libopus")])
def test_audio_in_video_containers(fmt, codec):
    """An .m4a or a browser's audio/webm recording sniffs as a container, but is accepted as audio."""
    wave = media.decode(av_audio_bytes(fmt, codec, rate=48000 if codec == "libopus" else 44100), "audio")
    assert abs(len(wave) - 16000) < 2000 and wave.dtype == np.float32


def test_stereo_is_averaged_to_mono():
    left_right = np.stack([tone(), -tone()], axis=1)  # cancels when averaged
    buf = io.BytesIO()
    sf.write(buf, left_right, 16000, format="WAV", subtype="FLOAT")
    assert np.abs(media.decode_audio(buf.getvalue())).max() < 1e-6


def _peak_hz(wave: np.ndarray, rate=16000) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * rate / len(wave))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_frequency(rate):
    wave = media.decode_audio(audio_bytes("WAV", "FLOAT", freq=1000.0, seconds=2.0, rate=rate))
    assert abs(len(wave) - 32000) <= 2
    assert abs(_peak_hz(wave) - 1000.0) <= 1.0  # bins are 0.5 Hz wide


def test_resampling_mp3_at_44k1():
    wave = media.decode_audio(audio_bytes("MP3", "MPEG_LAYER_III", freq=1000.0, seconds=2.0, rate=44100))
    assert abs(_peak_hz(wave) - 1000.0) <= 2.0


def test_wav_declaring_ten_hours_refused_from_header():
    data = wav_declaring(10 * 3600)
    assert len(data) < 5000
    with pytest.raises(MediaTooLargeError) as e:
        media.decode_audio(data)
    assert e.value.status == 413 and "36000" in str(e.value)


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", None), ("OGG", "VORBIS"),
                                         ("MP3", "MPEG_LAYER_III")])
def test_audio_duration_limit(fmt, subtype):
    data = audio_bytes(fmt, subtype, seconds=3.0)
    with pytest.raises(MediaTooLargeError):
        media.decode_audio(data, MediaLimits(max_audio_seconds=2.0))


def test_audio_limit_in_container_without_header_duration():
    with pytest.raises(MediaTooLargeError):
        media.decode(av_audio_bytes("webm", "libopus", rate=48000, seconds=3.0), "audio",
                     MediaLimits(max_audio_seconds=1.0))


@pytest.mark.parametrize("make", [
    lambda: audio_bytes("WAV")[:20000],  # truncated data chunk
    lambda: audio_bytes("WAV")[:30],  # truncated header
    lambda: wav_declaring(1.0, actual_samples=0)[:44],  # header promises 1 s, nothing follows
    lambda: audio_bytes("WAV", seconds=0.0),  # a valid WAV of zero samples
    lambda: audio_bytes("WAV", seconds=0.01),  # 10 ms: shorter than one fbank window
    lambda: audio_bytes("FLAC")[:8],
    lambda: b"RIFF\0\0\0\0WAVEjunkjunkjunk",
    lambda: b"fLaC" + b"\x00" * 100,
    lambda: b"OggS" + b"\x01" * 100,
    lambda: b"ID3" + b"\x00" * 100,
])
def test_corrupt_audio(make):
    with pytest.raises(CorruptMediaError) as e:
        media.decode_audio(make())
    assert e.value.status == 400


def test_nan_samples_refused():
    buf = io.BytesIO()
    sf.write(buf, np.full(8000, np.nan, np.float32), 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(CorruptMediaError):
        media.decode_audio(buf.getvalue())


# ---------------------------------------------------------------------------------- video

@pytest.mark.parametrize("fmt,codec,fps", [("mp4", "libx264", 10), ("mp4", "libx264", 24),
                                           ("mov", "libx264", 30), ("webm", "libvpx", 10),
                                           ("mp4", "libx264", Fraction(30000, 1001))])
def test_decode_video_formats(fmt, codec, fps):
    clip = media.decode_video(video_bytes(fmt, codec, fps=fps, frames=12))
    assert clip.frames.shape == (12, 32, 48, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(float(fps)) and clip.n_frames == 12
    assert clip.duration == pytest.approx(12 / float(fps))
    grey = clip.frames.mean(axis=(1, 2, 3))
    assert np.all(np.abs(grey - 20 * np.arange(12)) < 6)  # presentation order, right frames
    assert np.all(np.diff(clip.timestamps) > 0)


def test_decode_keeps_only_the_imagebind_frames():
    data = video_bytes(frames=40)
    clip = media.decode(data, "video")
    assert clip.n_frames == 40 and len(clip.frames) <= 10
    full = media.decode_video(data)
    for k, index in enumerate(clip.indices):
        assert np.array_equal(clip.frames[k], full.frames[index])
    with pytest.raises(KeyError):
        clip.frame(int(np.setdiff1d(np.arange(40), clip.indices)[0]))


def test_variable_frame_rate():
    pts = [0, 40, 120, 130, 300, 310, 500, 520, 700, 1000]
    clip = media.decode_video(video_bytes(frames=10, pts=tuple(pts)))
    assert np.allclose(clip.timestamps, np.array(pts) / 1000)
    assert clip.fps > 0 and np.isfinite(clip.fps)


def test_frame_rate_fallback_without_declared_rate():
    stream = SimpleNamespace(average_rate=None, base_rate=None, guessed_rate=Fraction(0, 1))
    assert media_video._frame_rate(stream, [0.0, 0.5, 1.0, 1.5]) == pytest.approx(2.0)
    assert media_video._frame_rate(stream, [0.0]) == 1.0


def test_video_limits():
    data = video_bytes(fps=10, frames=30)  # 3 s
    with pytest.raises(MediaTooLargeError):
        media.decode_video(data, MediaLimits(max_video_seconds=2.0))
    with pytest.raises(MediaTooLargeError):
        media.decode_video(data, MediaLimits(max_video_frames=20))
    with pytest.raises(MediaTooLargeError):
        media.decode_video(data, MediaLimits(max_pixels=48 * 32 - 1))
    with pytest.raises(MediaTooLargeError):
        media.decode_video(data, MediaLimits(max_decoded_video_bytes=29 * 48 * 32 * 3))
    assert len(media.decode(data, "video", MediaLimits(max_decoded_video_bytes=1)).frames) <= 10


def test_webm_limits_without_header_frame_count():
    data = video_bytes("webm", "libvpx", fps=10, frames=30)
    with pytest.raises(MediaTooLargeError):
        media.decode_video(data, MediaLimits(max_video_frames=20, max_video_seconds=1000))


def _empty_mp4() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    return buf.getvalue()


@pytest.mark.parametrize("make", [
    _empty_mp4,  # a video stream with zero frames
    lambda: b"\0\0\0\x18ftypisom\0\0\0\0isomiso2",  # nothing after the brand
    lambda: video_bytes()[:len(video_bytes()) // 2],  # truncated: the index (moov) is at the end
    lambda: video_bytes("webm", "libvpx")[:60],
    lambda: video_bytes()[:40] + b"\xff" * (len(video_bytes()) - 40),
])
def test_corrupt_video(make):
    with pytest.raises(CorruptMediaError) as e:
        media.decode_video(make())
    assert e.value.status == 400


def test_audio_only_container_is_not_a_video():
    with pytest.raises(UnsupportedMediaError):
        media.decode(av_audio_bytes("mp4", "aac"), "video")


# ---------------------------------------------------------------------------------- dispatch

def test_decode_dispatches():
    assert isinstance(media.decode(image_bytes(), "image"), Image.Image)
    assert isinstance(media.decode(audio_bytes(), "audio"), np.ndarray)
    assert isinstance(media.decode(video_bytes(), "video"), VideoClip)


@pytest.mark.parametrize("data,modality,declared", [
    (image_bytes(), "audio", None),
    (audio_bytes(), "image", None),
    (audio_bytes(), "video", None),
    (video_bytes(), "image", None),
    (image_bytes(), "image", "video/mp4"),
    (audio_bytes(), "audio", "image/png"),
    (image_bytes(), "text", None),
    (b"plain text, not media", "image", None),
])
def test_type_mismatch_is_415(data, modality, declared):
    with pytest.raises(UnsupportedMediaError) as e:
        media.decode(data, modality, declared_mime=declared)
    assert e.value.status == 415


def test_subtype_mismatch_and_generic_types_are_accepted():
    assert media.decode(image_bytes("PNG"), "image", declared_mime="image/jpeg").size == (40, 30)
    assert media.decode(image_bytes("PNG"), "image", declared_mime="application/octet-stream")


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_zero_bytes_is_corrupt(modality):
    with pytest.raises(CorruptMediaError):
        media.decode(b"", modality)


@pytest.mark.parametrize("modality,make", [("image", image_bytes), ("audio", audio_bytes),
                                           ("video", video_bytes)])
def test_byte_limit(modality, make):
    data = make()
    with pytest.raises(MediaTooLargeError):
        media.decode(data, modality, MediaLimits(max_bytes=len(data) - 1))


def test_statuses_and_codes():
    assert issubclass(MediaError, ValueError)
    statuses = (UnsupportedMediaError.status, CorruptMediaError.status, MediaTooLargeError.status)
    assert statuses == (415, 400, 413)
    assert len({UnsupportedMediaError.code, CorruptMediaError.code, MediaTooLargeError.code}) == 3


@pytest.mark.parametrize("modality,make", [("image", lambda: image_bytes("PNG")),
                                           ("image", lambda: image_bytes("JPEG")),
                                           ("audio", lambda: audio_bytes("WAV")),
                                           ("audio", lambda: audio_bytes("FLAC")),
                                           ("audio", lambda: audio_bytes("MP3", "MPEG_LAYER_III")),
                                           ("video", lambda: video_bytes()),
                                           ("video", lambda: video_bytes("webm", "libvpx"))])
def test_damaged_inputs_only_raise_media_errors(modality, make):
    """Truncations and byte flips at seeded places: a result or a MediaError, nothing else."""
    data = make()
    rng = np.random.default_rng(7)
    cases = [data[:n] for n in sorted({1, 4, 11, len(data) // 3, len(data) - 1})]
    for _ in range(6):
        damaged = bytearray(data)
        for spot in rng.integers(0, len(data), 8):
            damaged[spot] = int(rng.integers(0, 256))
        cases.append(bytes(damaged))
    for case in cases:
        try:
            media.decode(case, modality)
        except MediaError as e:
            assert e.status in (400, 413, 415) and str(e)
