"""One WebSocket is one conversation: the server keeps its history and the decoded media.

Client -> server: `chat.request` (the chat body with only the new user message), `cancel`, `reset`.
Server -> client: `session.created`, `text.delta`, `media.progress`, `media.done`, `media.failed`,
`done`, `error`, `reset.done`. Every server message of a turn carries the turn's `request_id`.

History: each finished turn adds the user message(s) and the assistant's answer, whose text has
the signal tokens stripped (the model's own text) and whose generated media are that turn's
media, decoded from the very bytes the client received. Decoded items stay in the history, and
the encoder caches their embeddings by content hash, so no earlier item is decoded or encoded
again. A cancelled or failed turn leaves the history as it was.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import WebSocket
from pydantic import ValidationError

from models.types import MediaItem, Message

from .errors import APIError, Cancelled, as_api_error, schema_error
from .protocol import WSChatRequest, dump, new_id
from .scheduler import Failed, LanguageDone, MediaFailed, MediaReady, Progress, TextDelta
from .serving_chat import ChatService, Rendered, usage_info
from .settings import Settings

log = logging.getLogger("nextgpt.server")


class ChatSession:
    def __init__(self, ws: WebSocket, service: ChatService, settings: Settings, base_url: str):
        self.ws = ws
        self.service = service
        self.settings = settings
        self.base_url = base_url
        self.id = new_id("sess")
        self.history: list[Message] = []
        self.task: asyncio.Task | None = None
        self.job = None
        self.cancel_asked = False
        self._send_lock = asyncio.Lock()
        self._open = True

    # ------------------------------------------------------------------ the socket

    async def send(self, message: dict[str, Any]) -> None:
        if not self._open:
            return
        async with self._send_lock:
            try:
                await self.ws.send_text(json.dumps(message, separators=(",", ":")))
            except Exception:  # the client is gone
                self._open = False

    async def send_error(self, err: APIError, request_id: str | None = None) -> None:
        await self.send({"type": "error", "request_id": request_id, "status": err.status, **err.body()})

    async def serve(self) -> None:
        await self.send({"type": "session.created", "session_id": self.id, "model": self.service.host.model_id})
        try:
            while self._open:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None and message.get("bytes") is not None:
                    text = message["bytes"].decode("utf-8", errors="replace")
                await self.handle(text or "")
        finally:
            self._open = False
            await self.stop_turn("client")

    async def handle(self, text: str) -> None:
        if len(text) > self.settings.max_body_bytes:
            return await self.send_error(APIError(413, f"the message is over the {self.settings.max_body_bytes} "
                                                       "byte limit", code="too_large"))
        try:
            message = json.loads(text)
        except ValueError as e:
            return await self.send_error(APIError(400, f"the message is not valid JSON: {e}", code="invalid_json"))
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "chat.request":
            return await self.start_turn(message)
        if kind == "cancel":
            self.cancel_asked = True
            if self.job is not None:
                self.job.cancel("cancel")
            return
        if kind == "reset":
            await self.stop_turn("cancel")
            self.history.clear()
            return await self.send({"type": "reset.done"})
        await self.send_error(APIError(400, f"unknown message type {kind!r}: expected chat.request, cancel "
                                            "or reset", param="type", code="unknown_message_type"))

    async def stop_turn(self, reason: str) -> None:
        if self.task is None or self.task.done():
            return
        self.cancel_asked = True
        if self.job is not None:
            self.job.cancel(reason)
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout=30)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self.task.cancel()

    async def start_turn(self, message: dict[str, Any]) -> None:
        request_id = message.get("request_id") if isinstance(message.get("request_id"), str) else None
        if self.task is not None and not self.task.done():
            return await self.send_error(APIError(409, "a request is already running on this socket: wait for its "
                                                       "`done` or send `cancel`", code="request_in_progress"),
                                         request_id)
        try:
            req = WSChatRequest.model_validate(message)
        except ValidationError as e:
            return await self.send_error(schema_error(e.errors()), request_id)
        self.cancel_asked = False
        self.task = asyncio.create_task(self.run_turn(req, req.request_id or new_id("req")))

    # ------------------------------------------------------------------ one turn

    async def run_turn(self, req: WSChatRequest, rid: str) -> None:
        """One turn; always ends with `done` (finish_reason "cancelled" after a cancel) or `error`."""
        try:
            await self.stream_turn(req, rid)
            self.service.metrics.ws_turns.labels("done").inc()
        except Cancelled:
            self.service.metrics.ws_turns.labels("cancelled").inc()
            await self.send({"type": "done", "request_id": rid, "finish_reason": "cancelled"})
        except Exception as e:
            self.service.metrics.ws_turns.labels("error").inc()
            await self.send_error(as_api_error(e), rid)
        finally:
            self.job = None

    async def stream_turn(self, req: WSChatRequest, rid: str) -> None:
        job, turn, new = await self.service.submit(req, self.settings, self.history, roles=("user",))
        self.job = job
        if self.cancel_asked:  # a cancel that came while the media were being decoded
            job.cancel("cancel")
        lang, media, failed = None, {}, {}
        async for event in job.events():
            if isinstance(event, TextDelta):
                await self.send({"type": "text.delta", "request_id": rid, "delta": event.text})
            elif isinstance(event, Progress):
                await self.send({"type": "media.progress", "request_id": rid, "modality": event.modality,
                                 "step": event.step, "total": event.total})
            elif isinstance(event, LanguageDone):
                lang = event.output
            elif isinstance(event, MediaReady):
                media[event.modality] = r = await self.service.render(
                    event.modality, event.value, req.media_format, self.settings, self.base_url)
                await self.send({"type": "media.done", "request_id": rid, "modality": r.modality,
                                 "url": r.url, "mime_type": r.mime, "file_id": r.file_id})
            elif isinstance(event, MediaFailed):
                failed[event.modality] = event.reason
                await self.send({"type": "media.failed", "request_id": rid, "modality": event.modality,
                                 "reason": event.reason})
            elif isinstance(event, Failed):
                raise event.error
        await self.remember(new, lang.text, media)
        skipped = self.service.skipped(req, turn, lang, media, failed)
        await self.send({"type": "done", "request_id": rid, "finish_reason": lang.finish_reason,
                         "text": lang.text, "usage": dump(usage_info(lang)), "skipped_modalities": skipped or None})

    async def remember(self, new: list[Message], text: str, media: dict[str, Rendered]) -> None:
        """Add the turn to the history; generated media become the assistant turn's media."""
        limits = self.settings.media_limits()

        def decode() -> list[MediaItem]:
            return [MediaItem.from_bytes(r.encoded.data, m, limits) for m, r in media.items()]

        items = await asyncio.to_thread(decode)
        self.history += [*new, Message("assistant", text, items)]
        users = [i for i, m in enumerate(self.history) if m.role == "user"]
        if len(users) > self.settings.ws_max_turns:
            del self.history[:users[-self.settings.ws_max_turns]]
