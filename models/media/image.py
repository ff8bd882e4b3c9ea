"""Images: PNG, JPEG, WebP, GIF -> RGB, the size checked from the header first."""
from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

from .common import CorruptMediaError, MediaLimits, MediaTooLargeError, _why
from .sniff import _check_input

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
