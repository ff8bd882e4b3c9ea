"""What the bytes are, from their magic numbers alone, and the size and type checks every decoder runs first."""
from __future__ import annotations

from .common import MediaLimits, MediaTooLargeError, UnsupportedMediaError, CorruptMediaError

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
