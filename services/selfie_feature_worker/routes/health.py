"""``GET /healthz``: 200 once the detector and the VLM are loaded, 503 while loading or after a failure."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    state = request.app.state.models
    service = request.app.state.service
    body: dict[str, Any]
    if state.analyzer is not None:
        body = {"status": "ok", "service": service, **state.info}
        return JSONResponse(body)
    if state.loading:
        body = {"status": "loading", "service": service, "detail": "models are loading"}
    else:
        body = {"status": "error", "service": service, "detail": state.error or "models are not loaded"}
    return JSONResponse(body, status_code=503)
