"""Chat logic, transport-free: a request becomes a `Turn` for the scheduler, and the scheduler's
events become a `chat.completion`, a stream of `chat.completion.chunk`s, or WebSocket messages.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from models.generate import SamplingParams
from models.signals import MODALITIES
from models.types import LanguageOutput, Message

from . import codecs
from .errors import APIError, Cancelled, DeadlineExceeded, as_api_error
from .files import FileStore
from .inputs import load_messages, media_count, plan_messages
from .metrics import Metrics
from .protocol import (AssistantMessage, AudioOut, ChatCompletionChunk, ChatCompletionRequest,
                       ChatCompletionResponse, Choice, ChunkChoice, Delta, ImageOut, MediaURLOut,
                       PromptTokensDetails, Progress as ProgressOut, UsageInfo, VideoOut, dump, new_id)
from .scheduler import (Failed, Job, LanguageDone, MediaFailed, MediaReady, Progress, Scheduler,
                        TextDelta, Turn)
from .engine import ModelHost
from .settings import Settings

NOT_ASKED = ("the model's answer did not ask for {m} (no signal tokens); list it in "
             "required_modalities to force it")


@dataclass
class Rendered:
    """One generated media item as the client gets it."""

    modality: str
    mime: str
    url: str  # a data URL, or the /v1/files/{id} link
    expires_at: int
    encoded: codecs.EncodedMedia
    file_id: str | None = None


@dataclass
class TurnResult:
    lang: LanguageOutput
    media: dict[str, Rendered] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, separators=(',', ':'))}\n\n"


def usage_info(lang: LanguageOutput) -> UsageInfo:
    u = lang.usage
    return UsageInfo(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                     total_tokens=u.total_tokens, prompt_tokens_details=PromptTokensDetails(media_items=u.media_items))


class ChatService:
    def __init__(self, host: ModelHost, scheduler: Scheduler, files: FileStore, metrics: Metrics):
        self.host = host
        self.scheduler = scheduler
        self.files = files
        self.metrics = metrics

    # ------------------------------------------------------------------ request -> turn

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.host.model_id:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {self.host.model_id!r}",
                           param="model", code="model_not_found")

    def turn_spec(self, req: ChatCompletionRequest, settings: Settings) -> Turn:
        """Everything but the messages, checked before any work is queued."""
        self.check_model(req.model)
        if req.stop:
            raise APIError(400, "stop sequences are not supported by this model", param="stop")
        max_tokens = req.max_completion_tokens or req.max_tokens or settings.default_max_tokens
        if max_tokens > settings.max_tokens_limit:
            name = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            raise APIError(400, f"{name} is {max_tokens}; this server allows at most {settings.max_tokens_limit}",
                           param=name, code="invalid_parameter")
        modalities = set(req.modalities if req.modalities is not None else settings.default_modalities)
        required = set(req.required_modalities)
        if not required <= modalities:
            raise APIError(400, f"required_modalities {sorted(required - modalities)} are not in modalities",
                           param="required_modalities")
        model = self.host.model
        params = {m: model.decoder_params(m, req.decoder_overrides(m))
                  for m in MODALITIES if m in modalities | required}
        sampling = SamplingParams(max_new_tokens=max_tokens,
                                  temperature=1.0 if req.temperature is None else req.temperature,
                                  top_p=0.01 if req.top_p is None else req.top_p, seed=req.seed)
        return Turn([], modalities | {"text"}, required, sampling, params)

    async def submit(self, req: ChatCompletionRequest, settings: Settings, history: list[Message] = (),
                     roles: tuple[str, ...] = ("user", "assistant")) -> tuple[Job, Turn, list[Message]]:
        """Check, admit (429 when full), decode the media, start. Returns the job, its turn and
        the request's own messages (decoded)."""
        self.host.require_ready()
        try:
            turn = self.turn_spec(req, settings)
        except Exception as e:
            raise as_api_error(e) from None
        plan = plan_messages(req.messages, settings, roles=roles)
        ticket = self.scheduler.admit(settings.queue_size, settings.retry_after_s)
        try:  # the deadline runs from admission: fetching and decoding media count
            messages = await asyncio.wait_for(load_messages(plan, settings), settings.request_deadline_s)
        except asyncio.TimeoutError:
            ticket.release()
            raise DeadlineExceeded(settings.request_deadline_s) from None
        except BaseException:
            ticket.release()
            raise
        for modality, n in media_count(messages).items():
            self.metrics.media_in.labels(modality).inc(n)
        turn.messages = [*history, *messages]
        return self.scheduler.start(ticket, turn, settings.request_deadline_s), turn, messages

    # ------------------------------------------------------------------ outputs

    async def render(self, modality: str, value: Any, media_format: str, settings: Settings,
                     base_url: str) -> Rendered:
        """Encode an output (in a worker thread) and make its URL: inline or a stored file."""
        start = time.perf_counter()
        encoded = await asyncio.to_thread(codecs.encode_output, modality, value)
        expires_at = int(time.time() + settings.file_ttl_s)
        rendered = Rendered(modality, encoded.mime, "", expires_at, encoded)
        if media_format == "url":
            stored = await asyncio.to_thread(self.files.save, encoded, settings.file_ttl_s)
            rendered.file_id, rendered.expires_at = stored.id, int(stored.expires_at)
            rendered.url = f"{base_url.rstrip('/')}/v1/files/{stored.id}"
        else:
            rendered.url = encoded.data_url()
        self.metrics.stage_latency.labels("output_encode").observe(time.perf_counter() - start)
        return rendered

    def skipped(self, req: ChatCompletionRequest, turn: Turn, lang: LanguageOutput | None,
                produced: dict[str, Any], failed: dict[str, str]) -> dict[str, str]:
        """Accepted outputs that were not produced, with the reason; never silently dropped."""
        out = dict(lang.skipped) if lang else {}
        out.update(failed)
        if req.modalities is not None:  # the client named what it wants: report what is missing
            for m in MODALITIES:
                if m in turn.modalities and m not in produced and m not in out:
                    out[m] = NOT_ASKED.format(m=m)
        for m in out:
            self.metrics.media_skipped.labels(m).inc()
        return out

    async def collect(self, job: Job, turn: Turn, req: ChatCompletionRequest, settings: Settings,
                      base_url: str) -> TurnResult:
        """Wait for the whole turn, rendering media as they come."""
        lang, media, failed = None, {}, {}
        async for event in job.events():
            if isinstance(event, LanguageDone):
                lang = event.output
            elif isinstance(event, MediaReady):
                media[event.modality] = await self.render(event.modality, event.value, req.media_format,
                                                          settings, base_url)
            elif isinstance(event, MediaFailed):
                failed[event.modality] = event.reason
            elif isinstance(event, Failed):
                raise event.error
        return TurnResult(lang, media, self.skipped(req, turn, lang, media, failed))

    # ------------------------------------------------------------------ OpenAI shapes

    def completion(self, result: TurnResult) -> dict[str, Any]:
        message = AssistantMessage(content=result.lang.text)
        for modality, rendered in result.media.items():
            attach(message, rendered)
        choice = Choice(message=message, finish_reason=result.lang.finish_reason,
                        skipped_modalities=result.skipped or None)
        response = ChatCompletionResponse(id=new_id("chatcmpl"), model=self.host.model_id, choices=[choice],
                                          usage=usage_info(result.lang))
        return dump(response)

    async def stream(self, job: Job, turn: Turn, req: ChatCompletionRequest, settings: Settings,
                     base_url: str) -> AsyncIterator[str]:
        """SSE: role, text deltas as generated, progress, media as each is ready, the finish
        chunk (with `skipped_modalities`), usage when asked, then `[DONE]`."""
        cid, model = new_id("chatcmpl"), self.host.model_id

        def chunk(delta: Delta | None = None, **extra: Any) -> str:
            choices = extra.pop("choices", [ChunkChoice(delta=delta or Delta())])
            return sse(dump(ChatCompletionChunk(id=cid, model=model, choices=choices, **extra)))

        lang, media, failed = None, {}, {}
        try:
            yield chunk(Delta(role="assistant", content=""))
            async for event in job.events():
                if isinstance(event, TextDelta):
                    yield chunk(Delta(content=event.text))
                elif isinstance(event, Progress):
                    yield chunk(progress=ProgressOut(modality=event.modality, step=event.step, total=event.total))
                elif isinstance(event, LanguageDone):
                    lang = event.output
                elif isinstance(event, MediaReady):
                    rendered = await self.render(event.modality, event.value, req.media_format, settings, base_url)
                    media[event.modality] = rendered
                    yield chunk(attach(Delta(), rendered))
                elif isinstance(event, MediaFailed):
                    failed[event.modality] = event.reason
                elif isinstance(event, Failed):
                    if isinstance(event.error, Cancelled):
                        return
                    yield sse(event.error.body())
                    yield sse("[DONE]")
                    return
            skipped = self.skipped(req, turn, lang, media, failed) or None
            yield chunk(choices=[ChunkChoice(finish_reason=lang.finish_reason, skipped_modalities=skipped)])
            if req.stream_options and req.stream_options.include_usage:
                yield chunk(choices=[], usage=usage_info(lang))
            yield sse("[DONE]")
        except Exception as e:  # rendering failed: say so in the stream, never a traceback
            yield sse(as_api_error(e).body())
            yield sse("[DONE]")
        finally:
            job.cancel("client")  # no-op once the job is done; stops the model if the client left


def attach(target: AssistantMessage | Delta, rendered: Rendered) -> AssistantMessage | Delta:
    """Put one rendered output where OpenAI-style clients look for it."""
    if rendered.modality == "image":
        target.images = [ImageOut(image_url=MediaURLOut(url=rendered.url))]
    elif rendered.modality == "video":
        target.videos = [VideoOut(video_url=MediaURLOut(url=rendered.url))]
    else:
        inline = rendered.file_id is None
        target.audio = AudioOut(
            id=rendered.file_id or new_id("audio"), expires_at=rendered.expires_at,
            data=base64.b64encode(rendered.encoded.data).decode("ascii") if inline else None,
            url=None if inline else rendered.url)
    return target
