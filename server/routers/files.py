"""GET /v1/files/{id} (and /content): generated media, with their mime type, until they expire."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from ..errors import APIError

router = APIRouter(prefix="/v1", tags=["files"])


def _file_response(file_id: str, request: Request) -> FileResponse:
    store = getattr(request.app.state, "files", None)  # made by the lifespan
    stored = store.get(file_id) if store is not None else None
    if stored is None:
        raise APIError(404, f"no file {file_id!r} (unknown or expired)", param="file_id", code="file_not_found")
    return FileResponse(stored.path, media_type=stored.mime, filename=stored.path.name,
                        content_disposition_type="inline",
                        headers={"Cache-Control": "private, max-age=3600"})


@router.get("/files/{file_id}")
async def get_file(file_id: str, request: Request) -> FileResponse:
    return _file_response(file_id, request)


@router.get("/files/{file_id}/content")
async def get_file_content(file_id: str, request: Request) -> FileResponse:
    return _file_response(file_id, request)
