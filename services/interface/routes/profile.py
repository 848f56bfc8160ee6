from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from services.interface.admission import run_admitted
from services.interface.deps import FlowsDep, QueuesDep, SettingsDep
from shared.errors import PayloadTooLarge
from shared.image_params import MAX_GUIDANCE, MAX_IMAGES, MAX_STEPS
from shared.images import probe_upload
from shared.models import MAX_SEED, ProfileCreateResponse

router = APIRouter(tags=["profile"])


@router.post("/v1/profile/create", response_model=ProfileCreateResponse)
async def create_profile(
    request: Request,
    flows: FlowsDep,
    queues: QueuesDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="The selfie: JPEG, PNG or WebP")],
    style: Annotated[
        str | None, Form(max_length=200, description="A style preset's name, or free text for the avatar")
    ] = None,
    seed: Annotated[int | None, Form(ge=0, le=MAX_SEED)] = None,
    steps: Annotated[int | None, Form(ge=1, le=MAX_STEPS)] = None,
    guidance_scale: Annotated[float | None, Form(ge=0.0, le=MAX_GUIDANCE)] = None,
    n: Annotated[int, Form(ge=1, le=MAX_IMAGES)] = 1,
) -> ProfileCreateResponse:
    """Selfie in, avatar out: face and features from the selfie worker, then the profile image(s)."""
    queue = queues["profile"]
    job = await flows.prepare_profile(style, seed, steps, guidance_scale, n)
    # Refuse for load before spending a decode (CPU and memory) on an upload that cannot be queued.
    queue.check_admission(n)
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"upload is over {settings.max_upload_bytes} bytes")
    # Refuse non-images and decompression bombs here, before they queue or travel to a GPU pod. The header
    # is enough: decoding here would cost up to 160 MB per upload only to throw the pixels away. Corrupt
    # pixel data behind a valid header is refused by the selfie worker, whose 4xx reaches the client as is.
    await asyncio.to_thread(
        probe_upload, data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels
    )
    name = file.filename or "selfie"
    content_type = file.content_type or "application/octet-stream"
    return await run_admitted(
        request, queue, lambda: flows.create_profile(data, name, content_type, job), weight=n
    )
