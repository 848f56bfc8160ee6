from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.image_worker.deps import EngineDep
from shared.models import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz(engine: EngineDep) -> JSONResponse:
    """200 once the model is loaded and warmed up; 503 while loading or after a failed load."""
    body = HealthResponse(
        status=engine.state,
        service=f"image_worker:{engine.settings.role}",
        detail=engine.error,
        model=engine.settings.model_id,
        device=",".join(engine.devices) or None,
        dtype=engine.dtype,
        role=engine.settings.role,
    ).model_dump()
    body["concurrency"] = engine.batcher.concurrency if engine.batcher else 0
    body["max_batch"] = engine.settings.max_batch
    body["output_safety"] = engine.safety is not None
    return JSONResponse(body, status_code=200 if engine.state == "ok" else 503)
