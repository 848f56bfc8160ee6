"""The LLM's product routes: image-prompt expansion per kind, captions and in-character replies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter

from services.llm_service.deps import EngineDep
from services.llm_service.prompts import ExpandKind
from shared.models import (
    CaptionRequest,
    CaptionResponse,
    ExpandRequest,
    ExpandResponse,
    ReplyRequest,
    ReplyResponse,
)

router = APIRouter(prefix="/v1/chat", tags=["chat"])


def _expand_route(kind: ExpandKind) -> Callable[[ExpandRequest, EngineDep], Awaitable[ExpandResponse]]:
    async def expand(req: ExpandRequest, engine: EngineDep) -> ExpandResponse:
        return await engine.expand(kind, req)

    expand.__name__ = f"expand_{kind}"
    moderated = " with moderation rules and a safety clause" if kind != "1to1" else ""
    expand.__doc__ = f"Chat message (+ history, persona) -> a detailed image prompt for {kind}{moderated}."
    return expand


for _kind in ("1to1", "shorts", "scenes"):
    router.add_api_route(
        f"/{_kind}/expand", _expand_route(_kind), methods=["POST"], response_model=ExpandResponse
    )


@router.post("/1to1/caption", response_model=CaptionResponse)
async def caption(req: CaptionRequest, engine: EngineDep) -> CaptionResponse:
    """A safe caption of caption_min_words..caption_max_words words, or 502 when the model gives none."""
    return await engine.caption(req)


@router.post("/1to1/reply", response_model=ReplyResponse)
async def reply(req: ReplyRequest, engine: EngineDep) -> ReplyResponse:
    """An in-character reply; history is cut to the newest turns that fit the token budget."""
    return await engine.reply(req)
