"""POST /v1/chat/completions: JSON or SSE."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import Cancelled
from ..protocol import ChatCompletionRequest
from ..scheduler import Job
from ..serving_chat import ChatService
from ..settings import Settings, get_settings
from .deps import base_url, get_chat

router = APIRouter(prefix="/v1", tags=["chat"])
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def cancel_on_disconnect(request: Request, job: Job) -> None:
    """The body is read; the next ASGI message is the client hanging up (or the response ending)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel("client")
            return


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           settings: Settings = Depends(get_settings),
                           service: ChatService = Depends(get_chat)) -> Response:
    job, turn, _ = await service.submit(body, settings)
    base = base_url(request, settings)
    if body.stream:
        return StreamingResponse(service.stream(job, turn, body, settings, base),
                                 media_type="text/event-stream", headers=SSE_HEADERS)
    watcher = asyncio.create_task(cancel_on_disconnect(request, job))
    try:
        result = await service.collect(job, turn, body, settings, base)
    except Cancelled:
        return Response(status_code=499)  # nobody is left to read it
    finally:
        watcher.cancel()
        job.cancel("client")  # no-op when the job finished; stops it when this handler failed
    return JSONResponse(service.completion(result))
