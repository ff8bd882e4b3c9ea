"""Request messages -> the model's `Message`s: roles, text, and media from data URLs, base64 and
(when enabled) remote URLs.

Checks that cost nothing run first, on the event loop (roles, item counts, URL schemes, sizes
from the base64 length); decoding runs in a worker thread through `models.media` (via
`MediaItem.from_bytes`), the one place uploads are read. Every refusal names the part it is
about (`messages[0].content[1]`) and carries the status of shared/API.md.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from models.media import MediaError, MediaLimits
from models.types import MediaItem, Message

from . import remote
from .errors import APIError, as_api_error
from .protocol import ChatMessage
from .settings import Settings

MODALITY_OF_PART = {"image_url": "image", "audio_url": "audio", "video_url": "video", "input_audio": "audio"}
AUDIO_FORMAT_MIME = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "ogg": "audio/ogg",
                     "m4a": "audio/mp4", "aac": "audio/aac", "webm": "audio/webm", "mp4": "audio/mp4"}
_WHITESPACE = re.compile(rb"\s+")


@dataclass
class PendingMedia:
    param: str  # "messages[0].content[1]"
    modality: str  # what the part type declares
    kind: str  # "data_url" | "base64" | "remote"
    source: str  # the data URL, the base64 text, or the http(s) URL
    declared_mime: str | None = None
    data: bytes | None = None  # filled by remote fetches


@dataclass
class PendingMessage:
    role: str
    text: str
    media: list[PendingMedia] = field(default_factory=list)


def bad(param: str, message: str, status: int = 400, code: str | None = None) -> APIError:
    return APIError(status, f"{param}: {message}", param=param, code=code)


# --------------------------------------------------------------------------- cheap checks

def plan_messages(messages: list[ChatMessage], settings: Settings, *,
                  roles: tuple[str, ...] = ("user", "assistant")) -> list[PendingMessage]:
    """Roles, text, and where each media item comes from; nothing decoded yet.

    `system`/`developer` text is put before the next user message's text (the model has no
    system prompt); `tool`/`function` messages are refused."""
    plan: list[PendingMessage] = []
    preamble: list[str] = []
    count = 0
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if msg.role in ("tool", "function"):
            raise bad(f"{param}.role", f"role {msg.role!r} is not supported: this model has no tools")
        if msg.role in ("system", "developer"):
            if any(p.type != "text" for p in msg.content):
                raise bad(f"{param}.content", f"a {msg.role} message can hold text only")
            preamble += [p.text for p in msg.content if p.text.strip()]
            continue
        if msg.role not in roles:
            raise bad(f"{param}.role", f"role {msg.role!r} is not accepted here; expected {' or '.join(roles)}")
        texts, media = [], []
        for j, part in enumerate(msg.content):
            if part.type == "text":
                texts.append(part.text)
                continue
            count += 1
            if count > settings.max_media_items:
                raise bad(f"{param}.content[{j}]", f"more than {settings.max_media_items} media items in "
                          "one request", 413, "too_many_media_items")
            media.append(_plan_part(part, f"{param}.content[{j}]", settings))
        text = "\n".join(t for t in texts if t.strip())
        if msg.role == "user" and preamble:
            text, preamble = "\n".join([*preamble, text]).strip(), []
        if msg.role == "user" and not text.strip() and not media:
            raise bad(f"{param}.content", "a user message needs text or media")
        plan.append(PendingMessage(msg.role, text, media))
    if not plan or plan[-1].role != "user":
        raise APIError(400, "messages: the last message must come from the user", param="messages")
    return plan


def _plan_part(part, param: str, settings: Settings) -> PendingMedia:
    modality = MODALITY_OF_PART[part.type]
    if part.type == "input_audio":
        data = part.input_audio.data
        if data.startswith("data:"):  # some clients send a data URL here
            return _plan_data_url(data, modality, param, settings)
        _check_b64_size(data, param, settings.max_media_bytes)
        return PendingMedia(param, modality, "base64", data, AUDIO_FORMAT_MIME[part.input_audio.format])
    url = getattr(part, part.type).url.strip()
    if url.startswith("data:"):
        return _plan_data_url(url, modality, param, settings)
    if url.startswith(("http://", "https://")):
        if not settings.allow_remote_urls:
            raise bad(param, "remote URLs are disabled on this server: send the media inline as a data: "
                      "URL", code="remote_urls_disabled")
        return PendingMedia(param, modality, "remote", url)
    raise bad(param, "expected a data: URL (or an http(s) URL where the server allows them)",
              code="invalid_url")


def _plan_data_url(url: str, modality: str, param: str, settings: Settings) -> PendingMedia:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise bad(param, "malformed data URL: no ',' before the data", code="invalid_data_url")
    fields = [f.strip() for f in header.split(";")]
    mime = fields[0].lower() or None
    if fields[-1].lower() == "base64":
        _check_b64_size(payload, param, settings.max_media_bytes)
        return PendingMedia(param, modality, "base64", payload, mime)
    if len(payload) > 3 * settings.max_media_bytes:
        raise _too_big(param, settings.max_media_bytes)
    return PendingMedia(param, modality, "data_url", payload, mime)


def _check_b64_size(text: str, param: str, max_bytes: int) -> None:
    if len(text) * 3 // 4 > max_bytes + 3:
        payload = len(text) - sum(text.count(c) for c in " \t\r\n")  # line breaks are allowed
        if payload * 3 // 4 > max_bytes + 3:
            raise _too_big(param, max_bytes)


def _too_big(param: str, max_bytes: int) -> APIError:
    size = f"{max_bytes / 1e6:.1f} MB" if max_bytes >= 100_000 else f"{max_bytes / 1e3:.1f} kB"
    return bad(param, f"the media item is over the {size} limit", 413, "media_too_large")


# --------------------------------------------------------------------------- decoding

def b64decode(text: str, param: str) -> bytes:
    """Strict base64 (standard or URL-safe alphabet, padding optional, whitespace ignored)."""
    raw = _WHITESPACE.sub(b"", text.encode("ascii", errors="replace"))
    raw += b"=" * (-len(raw) % 4)
    try:
        if b"-" in raw or b"_" in raw:
            return base64.b64decode(raw.replace(b"-", b"+").replace(b"_", b"/"), validate=True)
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise bad(param, "the data is not valid base64", code="invalid_base64") from None


def _declared_modality(mime: str | None) -> str | None:
    major = (mime or "").split("/")[0]
    return major if major in ("image", "audio", "video") else None


def decode_item(item: PendingMedia, limits: MediaLimits) -> MediaItem:
    """Bytes -> MediaItem (runs in a worker thread); errors name the part."""
    if item.data is not None:
        data = item.data
    elif item.kind == "base64":
        data = b64decode(item.source, item.param)
    else:
        data = unquote_to_bytes(item.source)
    if not data:
        raise bad(item.param, "the media item is empty (zero bytes)", code="empty_media")
    if len(data) > limits.max_bytes:
        raise _too_big(item.param, limits.max_bytes)
    declared = _declared_modality(item.declared_mime)
    if declared and declared != item.modality and not (item.modality == "audio" and declared == "video"):
        raise bad(item.param, f"a {item.declared_mime} item was sent as {item.modality}", 415,
                  "unsupported_media")
    try:
        return MediaItem.from_bytes(data, item.modality, limits)
    except MediaError as e:
        raise as_api_error(e, item.param) from None


def _decode_all(plan: list[PendingMessage], limits: MediaLimits) -> list[Message]:
    return [Message(m.role, m.text, [decode_item(it, limits) for it in m.media]) for m in plan]


async def load_messages(plan: list[PendingMessage], settings: Settings) -> list[Message]:
    """Fetch remote items (when allowed), then decode everything in a worker thread."""
    for message in plan:
        for item in message.media:
            if item.kind == "remote":
                item.data, item.declared_mime = await remote.fetch(
                    item.source, item.param, settings.remote_timeout_s, settings.remote_max_bytes)
    return await asyncio.to_thread(_decode_all, plan, settings.media_limits())


def media_count(messages: list[Message]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in messages:
        for item in m.media:
            counts[item.modality] = counts.get(item.modality, 0) + 1
    return counts
