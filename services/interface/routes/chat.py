"""Chat and text-to-image routes: each request is a job (services/interface/jobs/), waited for on the
connection or, with ``Prefer: respond-async``, answered 202 with the job's URLs.

A request for ``n`` images is one job of weight ``n``: it takes n places of the queue's bounds
(shared/queue_manager.py) and one worker call, which makes all n in one batched pipeline call.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.interface.admission import owner_of, run_admitted
from services.interface.deps import FlowsDep, QueuesDep
from services.interface.flows import fixed_seed
from services.interface.job_kinds import request_spec
from services.interface.jobs.records import JobRoute
from services.interface.jobs.submission import ACCEPTED, run_job
from services.interface.personas.access import resolve_persona
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


async def _image_job(request: Request, route: JobRoute, req: ChatImageRequest | ImageGenRequest) -> object:
    seed = fixed_seed(req.seed)
    return await run_job(
        request,
        route,
        request_spec(req, seed),
        weight=req.n,
        client_body=lambda: req.model_dump(mode="json"),
        options=req,
        # The work is built from this model with the fixed seed: the same request the spec stores.
        request_model=req.model_copy(update={"seed": seed}),
    )


@router.post("/v1/chat/1to1/imagegen", response_model=ChatImageResponse, responses=ACCEPTED)
async def chat_1to1_image(req: ChatImageRequest, request: Request) -> object:
    """1:1 chat image: LLM expansion (unmoderated, hard block only), image, caption."""
    return await _image_job(request, "chat1to1", req)


@router.post("/v1/chat/shorts/generate", response_model=ChatImageResponse, responses=ACCEPTED)
async def chat_shorts(req: ChatImageRequest, request: Request) -> object:
    """Shorts image: moderated expansion, image, caption."""
    return await _image_job(request, "shorts", req)


@router.post("/v1/chat/scenes/generate", response_model=ChatImageResponse, responses=ACCEPTED)
async def chat_scenes(req: ChatImageRequest, request: Request) -> object:
    """Scenes image: moderated expansion, image, caption."""
    return await _image_job(request, "scenes", req)


@router.post("/v1/chat/private/imagegen", response_model=ImageGenResponse, responses=ACCEPTED)
async def private_image(req: ImageGenRequest, request: Request) -> object:
    """Private chat image straight from the prompt: hard block only, no LLM."""
    return await _image_job(request, "private", req)


@router.post("/v1/chat/1to1/reply", response_model=ReplyResponse)
async def chat_reply(
    req: ReplyRequest, request: Request, flows: FlowsDep, queues: QueuesDep
) -> ReplyResponse:
    """An in-character reply from the persona (``persona``, or a stored one's ``persona_id``); a labelled
    template one when the LLM cannot answer."""
    if req.persona_id is not None:
        # The stored persona is the one descriptor of the character: its looks and who it is.
        persona = await resolve_persona(request, owner_of(request), req.persona_id)
        character = {
            "persona": persona.features,
            "persona_id": None,
            "name": persona.name,
            "personality": persona.personality,
            "speaking_style": persona.speaking_style,
        }
        req = req.model_copy(update=character)
    checked = await flows.prepare_reply(req)
    try:
        return await run_admitted(request, queues["reply"], lambda: flows.reply(checked))
    except ImgPodError as exc:
        # 5xx only: the LLM is down, broken or late. A 429 (busy: retry) or a 4xx (the request itself, or a
        # reply refused by the safety check) stays the answer.
        if exc.status_code < 500:
            raise
        return await flows.template_reply(checked, exc)


@router.post("/v1/imagegen", response_model=ImageGenResponse, responses=ACCEPTED)
async def general_image(req: ImageGenRequest, request: Request) -> object:
    """General text to image: soft-blocked prompts get safety constraints appended."""
    return await _image_job(request, "text2img", req)
