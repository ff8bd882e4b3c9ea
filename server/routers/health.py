"""GET /health (alive; with the placement plan when one was made), /ready (loaded and warm: 503
before), /metrics (Prometheus), / (demo)."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import APIError

router = APIRouter(tags=["health"])
STATIC = Path(__file__).resolve().parent.parent / "static"


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    host = request.app.state.host
    if host.state == "failed":
        return APIError(503, f"the model failed to load: {host.error}", code="load_failed").response()
    body = {"status": "ok" if host.ready else "loading"}
    placement = getattr(host.model, "placement", None)  # the plan of an automatically placed release
    if placement is not None:
        body["placement"] = placement.as_dict()
    return JSONResponse(body)


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    host = request.app.state.host
    host.require_ready()
    return JSONResponse({"status": "ready", "model": host.model_id, "load_seconds": round(host.load_seconds, 3)})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def index() -> Response:
    page = STATIC / "index.html"
    if page.is_file():
        return FileResponse(page, media_type="text/html")
    return JSONResponse({"name": "NExT-GPT server", "api": "/v1/chat/completions", "docs": "/docs"})
