"""Request and response shapes: OpenAI's chat completions, plus the extensions of shared/API.md.

Top-level request fields the server does not know are ignored (as OpenAI-compatible servers do);
inside a content part or a decoder-parameter object, an unknown name is a schema violation (422).
Responses are dumped with `exclude_none`, so extension fields appear only when they carry data.
"""
from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

Modality = Literal["text", "image", "audio", "video"]
MediaModality = Literal["image", "audio", "video"]
AudioFormat = Literal["wav", "mp3", "flac", "ogg", "m4a", "aac", "webm", "mp4"]


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- content parts

class MediaURL(Lenient):
    url: str = Field(min_length=1)
    detail: str | None = None  # OpenAI's image detail hint; the encoder has one resolution


class InputAudio(Lenient):
    data: str = Field(min_length=1)  # base64
    format: AudioFormat


class TextPart(Lenient):
    type: Literal["text"]
    text: str


class ImageURLPart(Lenient):
    type: Literal["image_url"]
    image_url: MediaURL


class AudioURLPart(Lenient):
    type: Literal["audio_url"]
    audio_url: MediaURL


class VideoURLPart(Lenient):
    type: Literal["video_url"]
    video_url: MediaURL


class InputAudioPart(Lenient):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[Union[TextPart, ImageURLPart, AudioURLPart, VideoURLPart, InputAudioPart],
                        Field(discriminator="type")]


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: list[ContentPart] = Field(default_factory=list)
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _string_content(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [{"type": "text", "text": value}]
        return value


# --------------------------------------------------------------------------- decoder parameters

class ImageOptions(Strict):
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    height: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)


class AudioOptions(Strict):
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    audio_length_in_s: float | None = Field(None, gt=0)
    # OpenAI's own `audio` request object: accepted so its clients work; wav is what we make.
    voice: str | None = None
    format: Literal["wav"] | None = None

    def decoder_overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"voice", "format"})


class VideoOptions(Strict):
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    num_frames: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    fps: int | None = Field(None, ge=1)


class StreamOptions(Lenient):
    include_usage: bool = False


# --------------------------------------------------------------------------- the request

class ChatCompletionRequest(Lenient):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    modalities: list[Modality] | None = None
    required_modalities: list[MediaModality] = Field(default_factory=list)  # ext
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, le=1)
    stop: str | list[str] | None = None
    image: ImageOptions | None = None  # ext
    audio: AudioOptions | None = None  # ext (OpenAI's voice/format accepted)
    video: VideoOptions | None = None  # ext
    media_format: Literal["b64_json", "url"] = "b64_json"  # ext
    user: str | None = None

    def decoder_overrides(self, modality: str) -> dict[str, Any]:
        options = getattr(self, modality)
        if options is None:
            return {}
        if isinstance(options, AudioOptions):
            return options.decoder_overrides()
        return options.model_dump(exclude_none=True)


class WSChatRequest(ChatCompletionRequest):
    """`{"type": "chat.request", ...}`: the same body, with only the new user message(s)."""

    type: Literal["chat.request"]
    request_id: str | None = Field(None, max_length=128)


# --------------------------------------------------------------------------- responses

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class MediaURLOut(BaseModel):
    url: str


class ImageOut(BaseModel):
    type: Literal["image_url"] = "image_url"
    image_url: MediaURLOut


class VideoOut(BaseModel):
    type: Literal["video_url"] = "video_url"
    video_url: MediaURLOut


class AudioOut(BaseModel):
    """OpenAI's `message.audio`; with media_format=url, `data` is null and `url` links the file."""

    id: str
    data: str | None = None
    format: Literal["wav"] = "wav"
    expires_at: int
    transcript: str = ""
    url: str | None = None  # ext

    @model_serializer(mode="wrap")
    def _keep_data(self, handler):
        out = handler(self)
        out.setdefault("data", None)  # OpenAI clients expect the key even when the file is linked
        return out


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    audio: AudioOut | None = None
    images: list[ImageOut] | None = None  # OpenRouter's convention
    videos: list[VideoOut] | None = None  # ext, same convention


class PromptTokensDetails(BaseModel):
    media_items: int = 0  # ext: media items in the prompt (each one token position)


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None = "stop"
    logprobs: None = None
    skipped_modalities: dict[str, str] | None = None  # ext: asked-for outputs not produced, and why


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: UsageInfo


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    audio: AudioOut | None = None
    images: list[ImageOut] | None = None
    videos: list[VideoOut] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta = Field(default_factory=Delta)
    finish_reason: str | None = None
    skipped_modalities: dict[str, str] | None = None


class Progress(BaseModel):
    modality: str
    step: int
    total: int


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None
    progress: Progress | None = None  # ext: a decoder's step, with an empty delta


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "nextgpt"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_none=True)
