"""OpenAI Images API routes: translation at the edge, then the native flows and queues.

Errors on these routes take OpenAI's shape (``shared.errors.openai_shape``, chosen by path prefix in
services/interface/app.py), so the official SDKs raise their own exception classes for them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from services.interface.admission import run_admitted
from services.interface.deps import FlowsDep, PoolsDep, QueuesDep, SettingsDep
from services.interface.flows import Flows
from services.interface.openai_images.catalogue import MODELS, Generated, ImageModel, Wanted
from services.interface.openai_images.models import (
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    ImageUsage,
    ModelCard,
    ModelList,
)
from services.interface.openai_images.output_store import FILES_PATH, OutputStore
from shared.errors import NotDeployed, ValidationFailed

router = APIRouter(tags=["openai"])
# Model cards need a creation time; the catalogue has no history, so one fixed instant (2026-01-01).
MODELS_CREATED = 1_767_225_600
PNG = "image/png"


async def get_outputs(request: Request) -> OutputStore:
    return request.app.state.openai_outputs


OutputsDep = Annotated[OutputStore, Depends(get_outputs)]


@router.get("/v1/models", response_model=ModelList)
async def list_models(pools: PoolsDep) -> ModelList:
    """The image models this deployment serves (those whose workers are configured)."""
    cards = [ModelCard(id=m.id, created=MODELS_CREATED) for m in MODELS.values() if m.deployed(pools)]
    return ModelList(data=cards)


@router.post(
    "/v1/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream"}},
)
async def generate_images(
    req: ImageGenerationRequest,
    request: Request,
    flows: FlowsDep,
    queues: QueuesDep,
    settings: SettingsDep,
    outputs: OutputsDep,
) -> Any:
    """OpenAI's image generation over the model's native flow: ``n`` images are one queue item of weight
    ``n`` and one worker call, as on the native routes."""
    model = MODELS.get(req.model)
    if model is None:
        raise ValidationFailed(
            f"model: unknown model {req.model!r}; GET /v1/models lists them", param="model"
        )
    n = req.n or 1
    if n > settings.openai_max_n:
        raise ValidationFailed(f"n: at most {settings.openai_max_n} on this deployment", param="n")
    if req.steps is not None and not model.takes_steps:
        raise ValidationFailed(f"steps: {model.id} uses its role's own steps", param="steps")
    if req.stream and req.response_format == "url":
        raise ValidationFailed(
            "response_format: streamed images are always b64_json", param="response_format"
        )
    width, height = req.dimensions or (None, None)
    # Seeds seed, seed+1, ...: n different images, each reproducible alone from its own seed.
    job = await _prepare(model, flows, Wanted(req.prompt, width, height, req.seed, req.steps, n))
    generated: list[Generated] = await run_admitted(
        request, queues[model.queue], functools.partial(model.run, flows, job), weight=n
    )
    size = f"{width}x{height}" if width else "auto"
    usage = ImageUsage.of_prompt_tokens(sum(g.prompt_tokens or 0 for g in generated))
    created = int(time.time())
    if req.stream:
        return StreamingResponse(
            _events(generated, size, usage, created),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store"},
        )
    if req.response_format == "url":
        data = [await _as_url(g, request, outputs, settings.openai_public_url) for g in generated]
    else:
        data = [ImageData(b64_json=g.image_base64, revised_prompt=g.revised_prompt) for g in generated]
    return ImagesResponse(created=created, data=data, size=None if size == "auto" else size, usage=usage)


async def _prepare(model: ImageModel, flows: Flows, wanted: Wanted) -> Any:
    try:
        return await model.prepare(flows, wanted)
    except ValidationFailed as exc:
        # The flow checks width and height against the workers' limits; this API calls them size.
        if exc.param in ("width", "height"):
            exc.param = "size"
        raise
    except ValidationError as exc:
        # The request model mirrors the native limits, so this is a gap between the two, named all the same.
        loc = next(iter(exc.errors()), {}).get("loc", ())
        param = "size" if loc and loc[0] in ("width", "height") else "prompt"
        raise ValidationFailed(f"{param}: not accepted by the {model.id} flow", param=param) from exc


async def _as_url(g: Generated, request: Request, outputs: OutputStore, public_url: str | None) -> ImageData:
    # Decoding megabytes of base64 is CPU work: off the event loop, with the store's put beside it.
    path = await asyncio.to_thread(lambda: outputs.put(base64.b64decode(g.image_base64), PNG))
    base = (public_url or str(request.base_url)).rstrip("/")
    return ImageData(url=base + path, revised_prompt=g.revised_prompt)


async def _events(
    generated: list[Generated], size: str, usage: ImageUsage, created: int
) -> AsyncIterator[str]:
    """OpenAI's stream events: ``image_generation.completed`` per image (no partial images yet)."""
    for g in generated:
        event = {
            "type": "image_generation.completed",
            "b64_json": g.image_base64,
            "created_at": created,
            "size": size,
            "quality": "auto",
            "background": "opaque",
            "output_format": "png",
            "usage": usage.model_dump(),
        }
        # A multi-megabyte JSON string: encoded in a thread like every image-sized piece of work.
        data = await asyncio.to_thread(json.dumps, event)
        yield f"event: image_generation.completed\ndata: {data}\n\n"


@router.post("/v1/images/edits")
async def edit_images() -> Response:
    """Image to image: not deployed yet (it is the appearance-lock work's path)."""
    raise NotDeployed(
        "/v1/images/edits needs image-to-image generation (the appearance-lock work), which this deployment "
        "does not have yet; use /v1/images/generations"
    )


@router.get(FILES_PATH + "/{file_id}", response_class=Response, responses={200: {"content": {PNG: {}}}})
async def image_file(
    file_id: Annotated[str, PathParam(max_length=64)],
    outputs: OutputsDep,
    expires: Annotated[int, Query()],
    sig: Annotated[str, Query(max_length=128)],
) -> Response:
    """An output made with ``response_format=url``; the signature is the credential (no API key)."""
    stored = outputs.get(file_id, expires, sig)
    if stored is None:
        raise HTTPException(404, "no such image, or its URL has expired")
    remaining = max(0, stored.expires_at - int(time.time()))
    return Response(
        stored.data, media_type=stored.media_type, headers={"Cache-Control": f"private, max-age={remaining}"}
    )
