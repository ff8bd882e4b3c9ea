"""GET /v1/models and /v1/models/{id}: OpenAI's shape."""
from __future__ import annotations

from fastapi import APIRouter, Request

from ..errors import APIError
from ..protocol import ModelCard, ModelList, dump

router = APIRouter(prefix="/v1", tags=["models"])


def card(request: Request) -> ModelCard:
    host = request.app.state.host
    return ModelCard(id=host.model_id, created=host.created)


@router.get("/models")
async def list_models(request: Request) -> dict:
    host = request.app.state.host
    return dump(ModelList(data=[card(request)] if host.ready else []))


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    host = request.app.state.host
    if not host.ready or model_id != host.model_id:
        raise APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
    return dump(card(request))
