"""Chat and text-to-image routes: validation and policy before the queue, worker calls inside it.

A request for ``n`` images is one queue item of weight ``n``: it takes n places of the queue's bounds
(shared/queue_manager.py) and one worker call, which makes all n in one batched pipeline call.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.interface.admission import run_admitted
from services.interface.deps import FlowsDep, QueuesDep
from shared.errors import ImgPodError
from shared.models import (
    ChatImageRequest,
    ChatImageResponse,
    ImageGenRequest,
    ImageGenResponse,
    ReplyRequest,
    ReplyResponse,
)

router = APIRouter(tags=["chat"])


@router.post("/v1/chat/1to1/imagegen", response_model=ChatImageResponse)
async def chat_1to1_image(
    req: ChatImageRequest, request: Request, flows: FlowsDep, queues: QueuesDep
) -> ChatImageResponse:
    """1:1 chat image: LLM expansion (unmoderated, hard block only), image, caption."""
    job = await flows.prepare_chat_image("1to1", req)
    return await run_admitted(request, queues["chat1to1"], lambda: flows.chat_image(job), weight=req.n)


@router.post("/v1/chat/shorts/generate", response_model=ChatImageResponse)
async def chat_shorts(
    req: ChatImageRequest, request: Request, flows: FlowsDep, queues: QueuesDep
) -> ChatImageResponse:
    """Shorts image: moderated expansion, image, caption."""
    job = await flows.prepare_chat_image("shorts", req)
    return await run_admitted(request, queues["shorts"], lambda: flows.chat_image(job), weight=req.n)


@router.post("/v1/chat/scenes/generate", response_model=ChatImageResponse)
async def chat_scenes(
    req: ChatImageRequest, request: Request, flows: FlowsDep, queues: QueuesDep
) -> ChatImageResponse:
    """Scenes image: moderated expansion, image, caption."""
    job = await flows.prepare_chat_image("scenes", req)
    return await run_admitted(request, queues["scenes"], lambda: flows.chat_image(job), weight=req.n)


@router.post("/v1/chat/private/imagegen", response_model=ImageGenResponse)
async def private_image(
    req: ImageGenRequest, request: Request, flows: FlowsDep, queues: QueuesDep
) -> ImageGenResponse:
    """Private chat image straight from the prompt: hard block only, no LLM."""
    job = await flows.prepare_private_image(req)
    return await run_admitted(request, queues["private"], lambda: flows.text_image(job), weight=req.n)


@router.post("/v1/chat/1to1/reply", response_model=ReplyResponse)
async def chat_reply(
    req: ReplyRequest, request: Request, flows: FlowsDep, queues: QueuesDep
) -> ReplyResponse:
    """An in-character reply from the persona; a labelled template one when the LLM cannot answer."""
    checked = await flows.prepare_reply(req)
    try:
        return await run_admitted(request, queues["reply"], lambda: flows.reply(checked))
    except ImgPodError as exc:
        # 5xx only: the LLM is down, broken or late. A 429 (busy: retry) or a 4xx (the request itself, or a
        # reply refused by the safety check) stays the answer.
        if exc.status_code < 500:
            raise
        return await flows.template_reply(checked, exc)


@router.post("/v1/imagegen", response_model=ImageGenResponse)
async def general_image(
    req: ImageGenRequest, request: Request, flows: FlowsDep, queues: QueuesDep
) -> ImageGenResponse:
    """General text to image: soft-blocked prompts get safety constraints appended."""
    job = await flows.prepare_general_image(req)
    return await run_admitted(request, queues["text2img"], lambda: flows.text_image(job), weight=req.n)
