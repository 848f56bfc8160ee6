"""The guard's route: is this text safe? Asked by the interface about every image route's prompts."""

from __future__ import annotations

from fastapi import APIRouter

from services.llm_service.deps import EngineDep
from shared.models import ModerateRequest, ModerateResponse

router = APIRouter(tags=["guard"])


@router.post("/v1/moderate", response_model=ModerateResponse)
async def moderate(req: ModerateRequest, engine: EngineDep) -> ModerateResponse:
    """The guard model's verdict on a prompt, or on a response to a prompt; 503 when the guard is off,
    loading or down (callers refuse then: the check was not made)."""
    return await engine.guard.moderate(req.text, req.kind, req.prompt)
