from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.llm_service.deps import EngineDep
from shared.models import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz(engine: EngineDep) -> JSONResponse:
    """200 when the model answers (loaded in-process, or the vLLM server serves our model); 503 otherwise.

    One exception: with the template fallback on, a model that failed is "degraded" and 200, because the
    service does answer (labelled templates) and the interface only routes to workers whose /healthz is 200.
    The guard is "loading" until loaded too; after that its state is reported under "guard" and does not
    change the status: a guard that is down refuses its own checks (503), it does not take the chat away.
    """
    state, detail = await engine.health()
    backend = engine.backend
    if state == "error" and getattr(backend, "starting", False):
        # An OpenAI server that answers but does not list our model yet is still starting: not ready, and
        # not a failure either (the fallback is not "degraded" for it).
        state = "loading"
    if state == "error" and engine.settings.template_fallback:
        state = "degraded"
    body = HealthResponse(
        status=state,
        service="llm_service",
        detail=detail,
        model=engine.public_model,  # unauthenticated: never a filesystem path
        device=backend.device,
        dtype=backend.dtype,
    ).model_dump()
    body["backend"] = backend.name
    body["template_fallback"] = engine.settings.template_fallback
    body["guard"] = await engine.guard.view()
    return JSONResponse(body, status_code=200 if state in ("ok", "degraded") else 503)
