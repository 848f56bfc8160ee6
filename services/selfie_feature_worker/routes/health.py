"""``GET /healthz``: 200 once the detector and the VLM are loaded, 503 while loading or after a failure.

It is unauthenticated: public model names only, and a short reason for a failed load (the log has the rest).
``concurrency`` is how many analyses run at once, so the interface sizes its per-worker budget to it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    state = request.app.state.models
    service = request.app.state.service
    admission = request.app.state.admission
    body: dict[str, Any]
    if state.analyzer is not None:
        body = {"status": "ok", "service": service, **state.info}
    elif state.loading:
        body = {"status": "loading", "service": service, "detail": "models are loading"}
    else:
        body = {"status": "error", "service": service, "detail": state.error or "models are not loaded"}
    body["concurrency"] = admission.max_concurrent
    body["queue_limit"] = admission.queue_limit
    return JSONResponse(body, status_code=200 if state.analyzer is not None else 503)
