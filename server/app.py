"""`create_app(settings)`: the FastAPI application.

The lifespan starts the file store and its sweeper, then loads the model in the background
(`/health` answers at once, `/ready` turns 200 after the warm-up); once the model is ready the
scheduler and the chat service are put on `app.state`. Shutdown cancels running requests.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from .auth import APIKeyMiddleware
from .engine import ModelHost
from .errors import APIError, install_handlers
from .files import FileStore
from .metrics import Metrics, MetricsMiddleware
from .routers import chat, files, health, models, ws
from .scheduler import Scheduler
from .serving_chat import ChatService
from .settings import Settings, app_settings
from .stages import StageBackend

log = logging.getLogger("nextgpt.server")
STATIC = Path(__file__).resolve().parent / "static"


class BodyLimitMiddleware:
    """Pure ASGI: 413 for a body over `max_bytes`, by Content-Length or by counting the chunks."""

    def __init__(self, app, get_limit):
        self.app = app
        self.get_limit = get_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.get_limit()
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            err = APIError(413, f"the request body is {int(length)} bytes; the limit is {limit}", code="too_large")
            return await err.response()(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # FastAPI re-raises HTTPException from body reading as it is
                    raise HTTPException(413, f"the request body is over the {limit} byte limit")
            return message

        await self.app(scope, counting_receive, send)


async def _start_model(app: FastAPI, settings: Settings, stages: StageBackend | None) -> None:
    host: ModelHost = app.state.host
    await host.start(settings)
    if host.ready:
        scheduler = Scheduler(host.model, app.state.metrics, decoder_workers=settings.decoder_max_batch,
                              backend=stages)
        app.state.scheduler = scheduler
        app.state.chat = ChatService(host, scheduler, app.state.files, app.state.metrics)


def create_app(settings: Settings | None = None, model: Any = None, stages: StageBackend | None = None) -> FastAPI:
    """The app; `model` may be a NextGPT already loaded (it is still warmed up unless disabled).
    `stages` runs the model's stages elsewhere (Ray Serve deployments, server/ray_serve/); `model` is
    then what the ingress needs to know of the model (server/ray_serve/backend.py: RemoteModel)."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.files = FileStore(settings.files_dir, settings.file_ttl_s)
        tasks = [asyncio.create_task(_start_model(app, settings, stages), name="nextgpt-load"),
                 asyncio.create_task(app.state.files.sweep_forever(), name="nextgpt-file-sweeper")]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            scheduler = getattr(app.state, "scheduler", None)
            if scheduler is not None:
                scheduler.shutdown()
            if app.state.host.model is not None:
                await asyncio.to_thread(app.state.host.model.close)  # batching workers end with the app
            app.state.files.close()

    app = FastAPI(title="NExT-GPT server", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible any-to-any chat: text, images, audio and video in and out.")
    app.state.settings = settings
    app.state.host = ModelHost(model)
    app.state.chat = None
    app.state.metrics = metrics = Metrics()
    metrics.watch_model(lambda: app.state.host.model)
    install_handlers(app)
    for router in (health.router, chat.router, ws.router, models.router, files.router):
        app.include_router(router)
    if (STATIC / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimitMiddleware, get_limit=lambda: app_settings(app).max_body_bytes)
    app.add_middleware(APIKeyMiddleware, get_settings=lambda: app_settings(app))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=False)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
