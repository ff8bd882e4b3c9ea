"""Audio: WAV, FLAC, OGG, MP3 and audio in MP4/WebM -> 16 kHz mono float32."""
from __future__ import annotations

import io
import struct

import numpy as np

from .common import (MIN_AUDIO_SAMPLES, SAMPLE_RATE, CorruptMediaError, MediaError, MediaLimits, UnsupportedMediaError,
                     _stream_seconds, _too_long, _why)
from .sniff import _SOUNDFILE_MIMES, _check_input

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
