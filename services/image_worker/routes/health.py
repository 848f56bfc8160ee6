from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.image_worker.deps import EngineDep
from shared.models import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz(engine: EngineDep) -> JSONResponse:
    """200 once the model is loaded and warmed up; 503 while loading or after a failed load.

    Unauthenticated, so public facts only: the model's public name (never a path), what the worker can run
    at once and the request limits it enforces (the interface refuses more before queueing).
    """
    s = engine.settings
    body = HealthResponse(
        status=engine.state,
        service=f"image_worker:{s.role}",
        detail=engine.error,
        model=engine.public_model,
        device=",".join(engine.devices) or None,
        dtype=engine.dtype,
        role=s.role,
    ).model_dump()
    body["concurrency"] = engine.batcher.concurrency if engine.batcher else 0
    body["max_batch"] = s.max_batch
    # What a call holds by size ({max pixels: images}); max_batch above is the bound over all sizes.
    body["max_batch_by_pixels"] = {str(k): v for k, v in sorted(s.max_batch_by_pixels.items())}
    body["limits"] = {
        "max_side": s.max_side,
        "max_pixels": s.max_pixels,
        "max_steps": s.max_steps,
        "max_guidance": s.max_guidance,
        "max_n": s.max_n,
        # Image-to-image: a request's ``strength`` must lie in these (422 otherwise).
        "min_strength": s.img2img_min_strength,
        "max_strength": s.img2img_max_strength,
    }
    return JSONResponse(body, status_code=200 if engine.state == "ok" else 503)
