"""OpenAI Images API routes: translation at the edge, then a job of the model's native route.

A generation is the native route's job (services/interface/jobs/submission.py): the same prepare step,
admission, queue (local or Redis), worker call and cancel-on-disconnect. Errors on these routes take OpenAI's
shape (``shared.errors.openai_shape``, chosen by path prefix in services/interface/app.py), so the official
SDKs raise their own exception classes for them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from services.interface.deps import PoolsDep, SettingsDep
from services.interface.flows import fixed_seed
from services.interface.job_kinds import STRENGTH, request_spec
from services.interface.jobs.manager import JobCanceled, JobManager
from services.interface.jobs.records import JobEvent, JobRecord, JobStatus, new_job_id
from services.interface.jobs.submission import JobWasCanceled, Submitted, answer, submit_job
from services.interface.openai_images.catalogue import MODELS, Generated, ImageModel, NativeRequest, Wanted
from services.interface.openai_images.models import (
    ImageData,
    ImageEditRequest,
    ImageGenerationRequest,
    ImagesResponse,
    ImageUsage,
    ModelCard,
    ModelList,
)
from services.interface.openai_images.output_urls import FILES_PATH, OutputUrls
from services.interface.settings import InterfaceSettings
from shared.errors import ErrorReply, ImgPodError, PayloadTooLarge, ValidationFailed, openai_shape
from shared.images import probe_upload
from shared.models import JobOptions
from shared.request_context import get_request_id

log = logging.getLogger(__name__)
router = APIRouter(tags=["openai"])
# Model cards need a creation time; the catalogue has no history, so one fixed instant (2026-01-01).
MODELS_CREATED = 1_767_225_600
PNG = "image/png"
# Native field -> the OpenAI request's name for it.
_OPENAI_PARAM = {"width": "size", "height": "size", "message": "prompt", "guidance_scale": "guidance"}
JobIdPath = Annotated[str, PathParam(pattern=r"^job_[0-9a-f]{24}$")]


async def get_urls(request: Request) -> OutputUrls:
    return request.app.state.openai_urls


async def get_manager(request: Request) -> JobManager:
    return request.app.state.jobs


UrlsDep = Annotated[OutputUrls, Depends(get_urls)]
ManagerDep = Annotated[JobManager, Depends(get_manager)]


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
    req: ImageGenerationRequest, request: Request, settings: SettingsDep, manager: ManagerDep, urls: UrlsDep
) -> Any:
    """OpenAI's image generation as a job of the model's native route: ``n`` images are one job of weight
    ``n`` and one worker call, as on the native routes."""
    model = MODELS.get(req.model)
    if model is None:
        raise ValidationFailed(
            f"model: unknown model {req.model!r}; GET /v1/models lists them", param="model"
        )
    n = req.n or 1
    if n > settings.openai_max_n:
        raise ValidationFailed(f"n: at most {settings.openai_max_n} on this deployment", param="n")
    if req.stream and req.response_format == "url":
        raise ValidationFailed(
            "response_format: streamed images are always b64_json", param="response_format"
        )
    width, height = req.dimensions or (None, None)
    # Partial images only mean something on a stream; elsewhere nobody would see them.
    partials = (req.partial_images or 0) if req.stream else 0
    # Seeds seed, seed+1, ...: n different images, each reproducible alone from its own seed.
    wanted = Wanted(
        req.prompt,
        width,
        height,
        fixed_seed(req.seed),
        req.steps,
        req.guidance,
        n,
        partials,
        persona_id=req.persona_id,
        strength=req.strength,
    )
    native = _native(model, wanted)
    size = f"{width}x{height}" if width else "auto"
    url = req.response_format == "url"
    if not req.stream:
        submitted = await _submit(request, model, native, req, keep_output=url)
        return await _images_response(request, model, submitted, size, url, settings, urls)
    # Subscribed before the job exists, under the id it will have: no partial image can be missed.
    job_id = new_job_id()
    stack = contextlib.AsyncExitStack()
    events = await stack.enter_async_context(manager.store.subscribe(job_id))
    try:
        submitted = await _submit(request, model, native, req, job_id=job_id)
    except BaseException:
        await stack.aclose()
        raise
    return StreamingResponse(
        _stream(request, model, submitted, events, stack, size),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


async def _images_response(
    request: Request,
    model: ImageModel,
    submitted: Submitted,
    size: str,
    url: bool,
    settings: InterfaceSettings,
    urls: OutputUrls,
) -> ImagesResponse:
    """Wait for the job and answer its images in OpenAI's shape: base64, or signed URLs of its output."""
    response = await answer(request, submitted)
    images = model.images(response)
    usage = ImageUsage.of_prompt_tokens(model.prompt_tokens(response) * len(images))
    if url:
        base = (settings.openai_public_url or str(request.base_url)).rstrip("/")
        expires = int(time.time() + settings.jobs_output_ttl_s)
        data = [
            ImageData(url=base + urls.path(submitted.record.id, i, expires), revised_prompt=g.revised_prompt)
            for i, g in enumerate(images)
        ]
    else:
        data = [ImageData(b64_json=g.image_base64, revised_prompt=g.revised_prompt) for g in images]
    return ImagesResponse(
        created=int(time.time()), data=data, size=None if size == "auto" else size, usage=usage
    )


def _native(model: ImageModel, wanted: Wanted) -> NativeRequest:
    try:
        return model.native(wanted)
    except ValidationError as exc:
        # The request model mirrors the native bounds, so this is a gap between the two, named all the same.
        loc = next(iter(exc.errors()), {}).get("loc", ())
        field = str(loc[0]) if loc else "prompt"
        param = _OPENAI_PARAM.get(field, field)
        raise ValidationFailed(f"{param}: not accepted by the {model.id} model", param=param) from exc


async def _submit(
    request: Request,
    model: ImageModel,
    native: NativeRequest,
    req: ImageGenerationRequest | ImageEditRequest,
    *,
    keep_output: bool = False,
    job_id: str | None = None,
    blob: bytes | None = None,
    extra_spec: dict[str, Any] | None = None,
) -> Submitted:
    try:
        return await submit_job(
            request,
            model.route,
            {**request_spec(native, fixed_seed(native.seed)), **(extra_spec or {})},
            weight=native.n,
            client_body=lambda: req.model_dump(mode="json"),
            options=JobOptions(),
            blob=blob,
            request_model=native,
            # The OpenAI API has no 202: these requests always wait, whatever Prefer says.
            asynchronous=False,
            keep_output=keep_output,
            job_id=job_id,
        )
    except ValidationFailed as exc:
        # The flow checks the native fields against the workers' limits; this API names two of them otherwise.
        native_name = exc.param or ""
        exc.param = _OPENAI_PARAM.get(native_name, exc.param)
        if native_name == "guidance_scale":
            exc.detail = exc.detail.replace("guidance_scale", "guidance", 1)
        raise


async def _stream(
    request: Request,
    model: ImageModel,
    submitted: Submitted,
    events: asyncio.Queue[JobEvent],
    stack: contextlib.AsyncExitStack,
    size: str,
) -> AsyncIterator[str]:
    """OpenAI's stream events: ``image_generation.partial_image`` for each partial image the job's progress
    carries, then ``image_generation.completed`` per image; an error after the stream began is an ``error``
    event (the SDK raises it). A client that goes away cancels the job."""
    record = submitted.record
    manager: JobManager = request.app.state.jobs
    # The job's own outcome, not ``answer``: Starlette's stream already watches for the disconnect (and
    # cancels this generator on it), so nothing else may read the request's receive channel.
    waiter = asyncio.ensure_future(manager.wait(record))
    getter: asyncio.Future[JobEvent] | None = None
    created = int(time.time())
    index = 0
    try:
        while not waiter.done():
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait({waiter, getter}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                break
            if (partial := _partial_of(getter.result())) is not None:
                yield await _event(partial_event(partial, index, size, created))
                index += 1
        while not events.empty():
            if (partial := _partial_of(events.get_nowait())) is not None:
                yield await _event(partial_event(partial, index, size, created))
                index += 1
        try:
            response = waiter.result()
        except JobCanceled:
            yield await _event(error_event(JobWasCanceled("the job was cancelled", stage="job")))
            return
        except ImgPodError as exc:
            yield await _event(error_event(exc))
            return
        images: list[Generated] = model.images(response)
        usage = ImageUsage.of_prompt_tokens(model.prompt_tokens(response) * len(images))
        for g in images:
            yield await _event(completed_event(g, size, created, usage))
    finally:
        if getter is not None:
            getter.cancel()
        # Starlette cancels this generator inside an anyio cancel scope when the client goes away, and every
        # await here would be cancelled again at once: the clean-up runs as a task of its own.
        task = asyncio.create_task(_end_stream(manager, record, waiter, stack))
        _ENDING.add(task)
        task.add_done_callback(_ENDING.discard)


# Stream clean-ups under way: referenced until they finish (the loop keeps only weak references to tasks).
_ENDING: set[asyncio.Task[None]] = set()


async def _end_stream(
    manager: JobManager, record: JobRecord, waiter: asyncio.Future[Any], stack: contextlib.AsyncExitStack
) -> None:
    try:
        if not waiter.done():
            # The client went away mid-stream: its job stops at the worker's next step.
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await waiter
            await manager.cancel(record)
    except Exception:
        log.exception("could not cancel the job of a closed stream", extra={"job_id": record.id})
    finally:
        await stack.aclose()


def _partial_of(event: JobEvent) -> str | None:
    return event.data.get("partial_image") if event.type == "progress" else None


def _common(size: str, created: int) -> dict[str, Any]:
    return {
        "created_at": created,
        "size": size,
        "quality": "auto",
        "background": "opaque",
        "output_format": "png",
    }


def partial_event(b64: str, index: int, size: str, created: int) -> dict[str, Any]:
    return {
        "type": "image_generation.partial_image",
        "b64_json": b64,
        **_common(size, created),
        "partial_image_index": index,
    }


def completed_event(g: Generated, size: str, created: int, usage: ImageUsage) -> dict[str, Any]:
    return {
        "type": "image_generation.completed",
        "b64_json": g.image_base64,
        **_common(size, created),
        "usage": usage.model_dump(),
    }


def error_event(exc: ImgPodError) -> dict[str, Any]:
    if exc.status_code >= 500:
        log.warning("stream failed", extra={"code": exc.code, "stage": exc.stage}, exc_info=exc)
    _, body = openai_shape(ErrorReply.of(exc))
    if request_id := get_request_id():
        body["error"]["request_id"] = request_id
    return {"type": "error", **body}


async def _event(event: dict[str, Any]) -> str:
    # A multi-megabyte JSON string: encoded in a thread like every image-sized piece of work.
    data = await asyncio.to_thread(json.dumps, event)
    return f"event: {event['type']}\ndata: {data}\n\n"


_EDIT_MODELS = tuple(m.id for m in MODELS.values() if not m.chat)
_IMAGE_FIELDS = ("image", "image[]")


@router.post(
    "/v1/images/edits",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image", "prompt"],
                        "properties": {
                            "image": {"type": "string", "format": "binary"},
                            **ImageEditRequest.model_json_schema()["properties"],
                        },
                    }
                }
            },
        }
    },
)
async def edit_images(request: Request, settings: SettingsDep, urls: UrlsDep) -> ImagesResponse:
    """OpenAI's image edit as image to image: the model's text route, starting from the uploaded image
    (``image``, or ``image[]`` as the SDK sends a list: one image), at ``strength`` or the default."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ValidationFailed("image: send the edit as multipart/form-data", param="image")
    async with request.form(max_files=2, max_fields=32) as form:
        if "mask" in form:
            raise ValidationFailed("mask: inpainting is not served by this deployment", param="mask")
        uploads = [v for k, v in form.multi_items() if k in _IMAGE_FIELDS and not isinstance(v, str)]
        if len(uploads) != 1:
            raise ValidationFailed("image: exactly one image to edit", param="image")
        fields = {k: v for k, v in form.multi_items() if k not in _IMAGE_FIELDS}
        data = await uploads[0].read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"image: over {settings.max_upload_bytes} bytes", param="image")
    try:
        req = ImageEditRequest.model_validate(fields)
    except ValidationError as exc:
        # The app's own handler: the same 400 naming the field (unknown ones as unknown_parameter).
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    model = MODELS.get(req.model)
    if model is None or model.chat:
        raise ValidationFailed(f"model: edits are made by {' and '.join(_EDIT_MODELS)}", param="model")
    n = req.n or 1
    if n > settings.openai_max_n:
        raise ValidationFailed(f"n: at most {settings.openai_max_n} on this deployment", param="n")
    # A non-image (or a decompression bomb) is refused from its header, before anything is queued.
    try:
        await asyncio.to_thread(
            probe_upload, data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_upload_pixels
        )
    except ImgPodError as exc:
        if exc.status_code == 415:
            # OpenAI's clients expect a 400 for an input they cannot use (415 is no class of theirs).
            raise ValidationFailed(f"image: {exc.detail}", param="image") from None
        exc.param = "image"
        raise
    width, height = req.dimensions or (None, None)
    wanted = Wanted(req.prompt, width, height, fixed_seed(req.seed), req.steps, req.guidance, n, 0)
    native = _native(model, wanted)
    url = req.response_format == "url"
    extra = {STRENGTH: req.strength} if req.strength is not None else {}
    submitted = await _submit(request, model, native, req, keep_output=url, blob=data, extra_spec=extra)
    size = f"{width}x{height}" if width else "auto"
    return await _images_response(request, model, submitted, size, url, settings, urls)


@router.get(
    FILES_PATH + "/{job_id}/{index}", response_class=Response, responses={200: {"content": {PNG: {}}}}
)
async def image_file(
    job_id: JobIdPath,
    index: Annotated[int, PathParam(ge=0, lt=16)],
    urls: UrlsDep,
    manager: ManagerDep,
    expires: Annotated[int, Query()],
    sig: Annotated[str, Query(max_length=128)],
) -> Response:
    """An image made with ``response_format=url``; the signature is the credential (no API key)."""
    if not urls.valid(job_id, index, expires, sig):
        raise HTTPException(404, "no such image, or its URL has expired")
    record = await manager.store.get(job_id)
    data = await asyncio.to_thread(_image_bytes, record, index)
    if data is None:
        raise HTTPException(404, "no such image, or its URL has expired")
    remaining = max(0, expires - int(time.time()))
    return Response(data, media_type=PNG, headers={"Cache-Control": f"private, max-age={remaining}"})


def _image_bytes(record: JobRecord | None, index: int) -> bytes | None:
    if record is None or record.status is not JobStatus.succeeded or record.result is None:
        return None
    if record.expires_at is not None and record.expires_at <= time.time():
        return None  # the sweeper has not reached it yet
    result = record.result
    images = [result.get("image_base64"), *(m.get("image_base64") for m in result.get("more_images") or ())]
    if index >= len(images) or not isinstance(images[index], str):
        return None
    return base64.b64decode(images[index])
