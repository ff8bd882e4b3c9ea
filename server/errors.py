"""Every error leaves the server in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Statuses (shared/API.md): 400 malformed or undecodable input, 401 missing or wrong API key, 404
unknown model or file, 413 body or media over the limits, 415 unsupported media type, 422 schema
violations, 429 queue full (with Retry-After), 503 not ready, 504 over the request deadline, 500
anything unexpected (logged here, never sent to the client).
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.decoders import ParameterError
from models.media import MediaError

log = logging.getLogger("nextgpt.server")

TYPE_OF_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
    413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
    429: "rate_limit_error", 503: "service_unavailable_error", 504: "timeout_error",
}
CODE_OF_STATUS = {
    400: "invalid_request", 401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed",
    413: "too_large", 415: "unsupported_media_type", 422: "invalid_schema", 429: "queue_full",
    503: "not_ready", 504: "deadline_exceeded", 500: "internal_error",
}


class APIError(Exception):
    """An error meant for the client: status, message, and the OpenAI fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or CODE_OF_STATUS.get(status, "error")
        self.type = type or TYPE_OF_STATUS.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class QueueFull(APIError):
    def __init__(self, retry_after: int):
        super().__init__(429, "the server is busy: its request queue is full; retry later",
                         headers={"Retry-After": str(retry_after)})


class DeadlineExceeded(APIError):
    def __init__(self, seconds: float):
        super().__init__(504, f"the request did not finish within the server's {seconds:g} s deadline")


class NotReady(APIError):
    def __init__(self, why: str = "the model is still loading"):
        super().__init__(503, why, headers={"Retry-After": "5"})


class Cancelled(Exception):
    """The client went away or cancelled; nobody is left to answer."""


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def internal_error() -> APIError:
    return APIError(500, "internal server error", type="server_error")


def as_api_error(exc: BaseException, param: str | None = None) -> APIError:
    """Known failures of the model layer -> the status API.md names; anything else -> 500."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, MediaError):
        return APIError(exc.status, f"{param}: {exc}" if param else str(exc), param=param, code=exc.code)
    if isinstance(exc, ParameterError):
        return APIError(400, str(exc), param=exc.param, code="invalid_parameter")
    if isinstance(exc, ValueError):  # the model's input checks (roles, modalities)
        return APIError(400, str(exc), param=param)
    log.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
    return internal_error()


# --------------------------------------------------------------------------- validation errors

PART_TYPES = {"text", "image_url", "input_audio", "audio_url", "video_url"}


def loc_to_param(loc: Sequence[Any]) -> str:
    """('body', 'messages', 0, 'content', 1, 'image_url', 'image_url', 'url') ->
    'messages[0].content[1].image_url.url' (the tagged union's tag is dropped)."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    i = 0
    while i < len(parts):
        item = parts[i]
        if isinstance(item, int):
            out += f"[{item}]"
            if i >= 1 and parts[i - 1] == "content" and i + 1 < len(parts) and parts[i + 1] in PART_TYPES:
                i += 1  # the discriminator's tag, not a field
        elif isinstance(item, str) and ("[" in item or "(" in item):
            pass  # a union member's name, not a field
        else:
            out += ("." if out else "") + str(item)
        i += 1
    return out


def validation_error(exc: RequestValidationError, content_type: str = "application/json") -> APIError:
    errors = list(exc.errors())
    if errors and tuple(errors[0].get("loc", ())) == ("body",):  # no body, or not an object
        hint = "" if "json" in content_type else " sent with Content-Type: application/json"
        return APIError(400, f"the body must be a JSON object{hint}", code="invalid_body")
    return schema_error(errors)


def schema_error(errors: list[dict[str, Any]]) -> APIError:
    """pydantic errors -> 400 for unparseable JSON, else 422 naming the first offending field."""
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        why = (first.get("ctx") or {}).get("error", "")
        return APIError(400, f"the body is not valid JSON{': ' + str(why) if why else ''}", code="invalid_json")
    if not errors:
        return APIError(422, "the request does not match the schema")
    first = errors[0]
    param = loc_to_param(first.get("loc", ()))
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return APIError(422, message, param=param or None, code="invalid_schema")


# --------------------------------------------------------------------------- handlers

def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc, request.headers.get("content-type", "")).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        err = APIError(exc.status_code, message, headers=dict(exc.headers or {}))
        return err.response()

    @app.exception_handler(MediaError)
    @app.exception_handler(ParameterError)
    async def _model_input(request: Request, exc: Exception) -> JSONResponse:
        return as_api_error(exc).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return internal_error().response()
