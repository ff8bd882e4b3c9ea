"""Optional API keys: `Authorization: Bearer <key>` on every /v1 route and on the WebSocket.

No keys configured (the default) means no auth. As in vLLM, HTTP requests are checked by a
middleware, before any body is read, so every /v1 route (present and future) is covered and a
client without a key learns nothing about its request. Browsers cannot set headers on a
WebSocket, so the socket (checked by its route, which can refuse the handshake with a 401) also
accepts `?api_key=<key>`. Keys are compared in constant time.
"""
from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from .errors import APIError
from .settings import Settings

PROTECTED_PREFIX = "/v1/"


def presented_key(conn: HTTPConnection, allow_query: bool = False) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if allow_query:
        return conn.query_params.get("api_key") or None
    return None


def check_key(conn: HTTPConnection, settings: Settings, allow_query: bool = False) -> None:
    """Raises 401 unless no keys are configured or a configured key was presented."""
    if not settings.api_keys:
        return
    key = presented_key(conn, allow_query)
    headers = {"WWW-Authenticate": "Bearer"}
    if key is None:
        raise APIError(401, "missing API key: send `Authorization: Bearer <key>`", code="missing_api_key",
                       headers=headers)
    given = key.encode()
    if not any(hmac.compare_digest(given, k.encode()) for k in settings.api_keys):
        raise APIError(401, "invalid API key", code="invalid_api_key", headers=headers)


class APIKeyMiddleware:
    """Pure ASGI: 401 for an HTTP request to /v1/... without a configured key."""

    def __init__(self, app, get_settings):
        self.app = app
        self.get_settings = get_settings

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIX) and scope["method"] != "OPTIONS":
            try:
                check_key(HTTPConnection(scope), self.get_settings())
            except APIError as err:
                return await err.response()(scope, receive, send)
        await self.app(scope, receive, send)
