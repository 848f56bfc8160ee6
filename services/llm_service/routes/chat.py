"""The LLM's product routes: image-prompt expansion per kind, captions and in-character replies."""

from __future__ import annotations

from fastapi import APIRouter

from services.llm_service.deps import EngineDep
from shared.models import (
    CaptionRequest,
    CaptionResponse,
    ExpandRequest,
    ExpandResponse,
    ReplyRequest,
    ReplyResponse,
)

router = APIRouter(tags=["chat"])


@router.post("/v1/chat/1to1/expand", response_model=ExpandResponse)
async def expand_1to1(req: ExpandRequest, engine: EngineDep) -> ExpandResponse:
    """Chat message (+ history, persona, style) -> a detailed image prompt for 1:1 chat: no moderation
    rules and no clause; a ``coverage`` in the body is ignored.

    The prompt fits the image model's token budget; ``trimmed`` says when it was cut to fit, ``prompt_tokens``
    what it counts. An unknown ``style`` is a 422."""
    return await engine.expand("1to1", req)


@router.post("/v1/chat/shorts/expand", response_model=ExpandResponse)
async def expand_shorts(req: ExpandRequest, engine: EngineDep) -> ExpandResponse:
    """Chat message (+ history, persona, style) -> a detailed image prompt for shorts; with ``coverage`` set,
    a covered one (coverage rules, explicit words removed, the coverage clause at its end)."""
    return await engine.expand("shorts", req)


@router.post("/v1/chat/scenes/expand", response_model=ExpandResponse)
async def expand_scenes(req: ExpandRequest, engine: EngineDep) -> ExpandResponse:
    """Chat message (+ history, persona, style) -> a detailed image prompt for scenes; with ``coverage`` set,
    a covered one (coverage rules, explicit words removed, the coverage clause at its end)."""
    return await engine.expand("scenes", req)


@router.post("/v1/chat/1to1/caption", response_model=CaptionResponse)
async def caption(req: CaptionRequest, engine: EngineDep) -> CaptionResponse:
    """A safe caption of caption_min_words..caption_max_words words, or 502 when the model gives none."""
    return await engine.caption(req)


@router.post("/v1/chat/1to1/reply", response_model=ReplyResponse)
async def reply(req: ReplyRequest, engine: EngineDep) -> ReplyResponse:
    """An in-character reply; history is cut to the newest turns that fit the token budget."""
    return await engine.reply(req)
