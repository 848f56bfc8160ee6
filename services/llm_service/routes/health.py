from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.llm_service.deps import EngineDep
from shared.models import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz(engine: EngineDep) -> JSONResponse:
    """200 when the model answers (loaded in-process, or the vLLM server serves our model); 503 otherwise."""
    state, detail = await engine.health()
    backend = engine.backend
    body = HealthResponse(
        status=state,
        service="llm_service",
        detail=detail,
        model=engine.settings.model_id,
        device=backend.device,
        dtype=backend.dtype,
    ).model_dump()
    body["backend"] = backend.name
    body["template_fallback"] = engine.settings.template_fallback
    return JSONResponse(body, status_code=200 if state == "ok" else 503)
