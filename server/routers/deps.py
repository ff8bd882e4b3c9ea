"""Shared route dependencies: the chat service once the model is ready, and the public base URL."""
from __future__ import annotations

from starlette.requests import HTTPConnection

from ..errors import NotReady
from ..serving_chat import ChatService
from ..settings import Settings


def get_chat(conn: HTTPConnection) -> ChatService:
    """The chat service; 503 while the model loads (or after it failed to)."""
    service = getattr(conn.app.state, "chat", None)
    if service is None:
        conn.app.state.host.require_ready()
        raise NotReady()
    return service


def base_url(conn: HTTPConnection, settings: Settings) -> str:
    """Where clients reach this server: the setting, else the request's own scheme and host."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/") + "/"
    url = str(conn.base_url)
    if url.startswith("ws"):
        url = "http" + url[2:]
    return url
