"""Typed inputs and outputs of the model, independent of any transport."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import media
from .encoder import content_key


@dataclass
class MediaItem:
    modality: str  # "image" | "audio" | "video"
    value: Any  # PIL.Image (RGB) | float32 waveform at 16 kHz | VideoClip
    key: str | None = None  # content hash: the encoder's cache key
    embedding: Any = None  # its ImageBind embedding (D,), when an encoder elsewhere already made it

    def encoded(self, embedding: Any) -> "MediaItem":
        """The same item carrying its embedding and no longer its pixels or samples (what a
        separate LLM process needs of it)."""
        return MediaItem(self.modality, None, self.key, embedding)

    @classmethod
    def from_bytes(cls, data: bytes, modality: str, limits=None) -> "MediaItem":
        value = media.decode(data, modality, limits) if limits is not None else media.decode(data, modality)
        return cls(modality, value, content_key(modality, data))


@dataclass
class Message:
    role: str  # "user" | "assistant"
    text: str = ""
    media: list[MediaItem] = field(default_factory=list)


@dataclass
class GeneratedVideo:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    fps: int


@dataclass
class Usage:
    prompt_tokens: int = 0  # every prompt position, media tokens included
    completion_tokens: int = 0
    media_items: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class LanguageOutput:
    """What the LLM stage hands to the decoders."""

    text: str
    ids: list[int]
    finish_reason: str
    conditions: dict[str, Any] = field(default_factory=dict)  # modality -> decoder prompt_embeds (1, ...)
    skipped: dict[str, str] = field(default_factory=dict)  # modality -> why it was not produced
    usage: Usage = field(default_factory=Usage)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ChatResult:
    text: str  # signal tokens removed
    image: Any = None  # PIL.Image
    audio: np.ndarray | None = None  # (samples,) float32 at 16 kHz
    video: GeneratedVideo | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # modality -> reason it was not produced
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    @property
    def media(self) -> dict[str, Any]:
        return {m: v for m, v in (("image", self.image), ("audio", self.audio), ("video", self.video)) if v is not None}
