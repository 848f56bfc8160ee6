from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile

from services.interface.flows import fixed_seed
from services.interface.jobs.submission import ACCEPTED, Submitted, answer, submit_job
from services.interface.settings import InterfaceSettings
from shared.errors import PayloadTooLarge
from shared.image_params import MAX_GUIDANCE, MAX_IMAGES, MAX_STEPS
from shared.images import probe_upload
from shared.models import MAX_SEED, JobOptions, ProfileCreateResponse

router = APIRouter(tags=["profile"])


@router.post("/v1/profile/create", response_model=ProfileCreateResponse, responses=ACCEPTED)
async def create_profile(
    request: Request,
    file: Annotated[UploadFile, File(description="The selfie: JPEG, PNG or WebP")],
    style: Annotated[
        str | None, Form(max_length=200, description="A style preset's name, or free text for the avatar")
    ] = None,
    seed: Annotated[int | None, Form(ge=0, le=MAX_SEED)] = None,
    steps: Annotated[int | None, Form(ge=1, le=MAX_STEPS)] = None,
    guidance_scale: Annotated[float | None, Form(ge=0.0, le=MAX_GUIDANCE)] = None,
    n: Annotated[int, Form(ge=1, le=MAX_IMAGES)] = 1,
    webhook: Annotated[str | None, Form(min_length=1, max_length=2048)] = None,
    webhook_events_filter: Annotated[
        list[Literal["start", "progress", "completed"]] | None, Form(max_length=3)
    ] = None,
) -> object:
    """Selfie in, avatar out: face and features from the selfie worker, then the profile image(s)."""
    form = {"style": style, "steps": steps, "guidance_scale": guidance_scale, "n": n}
    options = JobOptions(webhook=webhook, webhook_events_filter=webhook_events_filter)
    return await answer(request, await submit_profile(request, file, form, seed, options))


async def submit_profile(
    request: Request,
    file: UploadFile,
    form: dict[str, Any],
    seed: int | None,
    options: JobOptions,
    *,
    asynchronous: bool | None = None,
) -> Submitted:
    """The selfie's checks, then its profile job (see ``submit_job``): shared by this route and the personas
    made from a selfie. ``form``: style, steps, guidance_scale, n, validated with the route's bounds."""
    settings: InterfaceSettings = request.app.state.settings
    n = form.get("n") or 1
    # Refuse for load before spending a decode (CPU and memory) on an upload that cannot be queued.
    request.app.state.queues["profile"].check_admission(n)
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"upload is over {settings.max_upload_bytes} bytes")
    # Refuse non-images and decompression bombs here, before they queue or travel to a GPU pod. The header
    # is enough: decoding here would cost up to 160 MB per upload only to throw the pixels away. Corrupt
    # pixel data behind a valid header is refused by the selfie worker, whose 4xx reaches the client as is.
    await asyncio.to_thread(
        probe_upload, data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels
    )
    spec = {k: v for k, v in form.items() if v is not None}
    spec |= {
        "seed": fixed_seed(seed),
        "filename": file.filename or "selfie",
        "content_type": file.content_type or "application/octet-stream",
    }
    return await submit_job(
        request,
        "profile",
        spec,
        weight=n,
        client_body=lambda: {**form, "seed": seed, **options.model_dump()},
        options=options,
        blob=data,
        asynchronous=asynchronous,
    )
