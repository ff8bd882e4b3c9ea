"""WS /v1/chat/ws: one socket, one conversation (see server/ws_session.py for the messages)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, WebSocket

from ..auth import check_key
from ..errors import APIError
from ..settings import Settings, get_settings
from ..ws_session import ChatSession
from .deps import base_url, get_chat

router = APIRouter(tags=["chat"])


async def refuse(ws: WebSocket, err: APIError) -> None:
    """Refuse the handshake with the HTTP status and error body; close 1008 where the server
    cannot send an HTTP response to a WebSocket handshake."""
    try:
        await ws.send_denial_response(err.response())
    except RuntimeError:
        await ws.accept()
        await ws.send_json({"type": "error", "status": err.status, **err.body()})
        await ws.close(code=1008 if err.status == 401 else 1013)


@router.websocket("/v1/chat/ws")
async def chat_ws(ws: WebSocket, settings: Settings = Depends(get_settings)) -> None:
    try:
        check_key(ws, settings, allow_query=True)
        service = get_chat(ws)
    except APIError as err:
        return await refuse(ws, err)
    await ws.accept()
    await ChatSession(ws, service, settings, base_url(ws, settings)).serve()
