"""Generation routes: the role-free ``/v1/generate`` and each role's own route.

A caller that accepts ``application/x-ndjson`` gets the progress stream of ``shared/progress_stream.py``:
refusals that come before the work (validation, policy, not ready, the worker's 429) are plain HTTP errors as
without it, then one line per denoising step and one final line (the plain answer's body, or its error).
Closing the connection cancels the generation: uvicorn speaks ASGI 2.3 over HTTP, so Starlette's
``StreamingResponse`` listens for the disconnect and cancels the body iterator, whose ``finally`` cancels the
generation task, which leaves its pipeline call at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from services.image_worker.batcher import ProgressListener
from services.image_worker.deps import EngineDep
from services.image_worker.engine import Admission, GenerationParams, ImageEngine, PartialImageListener
from services.image_worker.moderation import check_negative_prompt, moderate
from services.image_worker.profile_prompt import build_profile_prompt
from services.image_worker.settings import Role
from shared.errors import ErrorReply, ImgPodError, native_shape
from shared.images import encode_image_base64
from shared.models import (
    GeneratedImage,
    GenerateRequest,
    GenerateResponse,
    ImageFormat,
    ProfileGenerateRequest,
)
from shared.progress_stream import MEDIA_TYPE, error_line, partial_line, progress_line, result_line
from shared.request_context import get_request_id
from shared.roles import RoleName

log = logging.getLogger(__name__)


async def answer(
    request: Request,
    engine: ImageEngine,
    params: GenerationParams,
    output_format: ImageFormat,
    *,
    route_role: RoleName,
    soft_blocked: bool = False,
) -> GenerateResponse | Response:
    """The plain JSON answer, or the progress stream when the caller accepts it."""
    # A bad start image is refused here too, as a plain HTTP error before any stream starts.
    admission = await engine.admit_decoded(params)
    if MEDIA_TYPE not in request.headers.get("accept", ""):
        return await run_generation(
            engine, admission, output_format, route_role=route_role, soft_blocked=soft_blocked
        )
    lines = progress_lines(engine, admission, output_format, route_role=route_role, soft_blocked=soft_blocked)

    async def close() -> None:
        # Starlette runs this after the body, also when a disconnect cancelled it while it was not inside
        # the iterator (or before it started): whatever happened, the generation stops and the bound is
        # given back.
        await lines.aclose()
        engine.release(admission)

    return StreamingResponse(lines, media_type=MEDIA_TYPE, background=BackgroundTask(close))


async def progress_lines(
    engine: ImageEngine,
    admission: Admission,
    output_format: ImageFormat,
    *,
    route_role: RoleName,
    soft_blocked: bool,
) -> AsyncIterator[bytes]:
    """The stream's lines; the generation runs as a task so its steps can be written as they happen."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def on_progress(step: int, total: int) -> None:
        queue.put_nowait(progress_line(step, total))

    def on_partial(step: int, total: int, image_base64: str) -> None:
        queue.put_nowait(partial_line(step, total, image_base64))

    task = asyncio.create_task(
        run_generation(
            engine,
            admission,
            output_format,
            route_role=route_role,
            soft_blocked=soft_blocked,
            on_progress=on_progress,
            on_partial=on_partial,
        )
    )
    # After the last step's line: the batcher relays steps with call_soon_threadsafe before the pipeline
    # call returns, and run_admitted passes on every partial image before it returns, so they are all
    # queued before the task can finish.
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (line := await queue.get()) is not None:
            yield line
        yield await final_line(task)
    finally:
        # A no-op once it is done; otherwise the caller went away and the generation stops at its next step.
        task.cancel()
        # A task cancelled before it ran never entered run_admitted's own release.
        engine.release(admission)


async def final_line(task: asyncio.Task[GenerateResponse]) -> bytes:
    """The result line, or the error line with the status, body and headers the plain call would answer."""
    exc = task.exception()
    if exc is None:
        response = task.result()
        # Megabytes of base64 for a large image: milliseconds of JSON encoding, off the loop.
        return await asyncio.to_thread(lambda: result_line(response.model_dump(mode="json")))
    if isinstance(exc, ImgPodError):
        if exc.status_code >= 500:
            log.warning(
                "request failed",
                extra={"code": exc.code, "stage": exc.stage, "detail": exc.detail},
                exc_info=exc,
            )
        reply = ErrorReply.of(exc)
    else:
        log.error("unhandled error", exc_info=exc)
        reply = ErrorReply(500, "internal server error", "internal_error")
    status, body = native_shape(reply)
    if request_id := get_request_id():
        body["request_id"] = request_id
    return error_line(status, body, dict(reply.headers))


async def run_generation(
    engine: ImageEngine,
    admission: Admission,
    output_format: ImageFormat,
    *,
    route_role: RoleName,
    soft_blocked: bool = False,
    on_progress: ProgressListener | None = None,
    on_partial: PartialImageListener | None = None,
) -> GenerateResponse:
    started = time.perf_counter()
    generated = await engine.run_admitted(admission, route_role, on_progress, on_partial)
    encode_started = time.perf_counter()
    # 200-400 ms for a 1024x1024 PNG: on the loop it would stall /healthz past the interface's probe timeout.
    encoded = await asyncio.to_thread(
        lambda: [encode_image_base64(image, output_format) for image in generated.result.images]
    )
    done = time.perf_counter()
    job = generated.job
    return GenerateResponse(
        image_base64=encoded[0],
        more_images=[
            GeneratedImage(image_base64=b64, seed=seed)
            for b64, seed in zip(encoded[1:], job.seeds[1:], strict=True)
        ],
        format=output_format,
        seed=job.seed,
        width=job.width,
        height=job.height,
        steps=job.steps,
        guidance_scale=job.guidance_scale,
        negative_prompt=job.negative_prompt,
        prompt_used=job.prompt,
        prompt_tokens=generated.prompt_tokens,
        prompt_truncated=generated.prompt_truncated,
        soft_blocked=soft_blocked,
        safety_checked=generated.safety_checked,
        strength=job.strength,
        model=engine.public_model,
        role=engine.settings.role,
        timings_ms={
            "queue": round(generated.result.queue_ms, 2),
            "inference": round(generated.result.inference_ms, 2),
            "encode": round((done - encode_started) * 1000, 2),
            "total": round((done - started) * 1000, 2),
            "batch_size": generated.result.batch_size,
        },
    )


def params_from(req: GenerateRequest, prompt: str | None = None) -> GenerationParams:
    return GenerationParams(
        prompt=prompt if prompt is not None else req.prompt,
        negative_prompt=req.negative_prompt,
        seed=req.seed,
        width=req.width,
        height=req.height,
        steps=req.steps,
        guidance_scale=req.guidance_scale,
        n=req.n,
        partial_images=req.partial_images,
        init_image=req.init_image,
        strength=req.strength,
    )


# One router per route, each path written out where it is served; a worker mounts the general router and
# its own role's router (role_routers).
general = APIRouter(tags=["generate"])
profile = APIRouter(tags=["generate"])
chat1to1 = APIRouter(tags=["generate"])
shorts = APIRouter(tags=["generate"])
scenes = APIRouter(tags=["generate"])


# Each route answers plain JSON (the response model), or the progress stream under ``Accept`` (``answer``).
@general.post("/v1/generate", response_model=GenerateResponse)
async def generate(req: GenerateRequest, request: Request, engine: EngineDep) -> GenerateResponse | Response:
    """Text to image for the interface's general pool, with the general role's policy on any worker."""
    return await _generate_text(req, request, engine, "general")


@profile.post("/v1/profile/generate", response_model=GenerateResponse)
async def profile_generate(
    req: ProfileGenerateRequest, request: Request, engine: EngineDep
) -> GenerateResponse | Response:
    """An avatar from selfie features, in the house style unless a style is given."""
    prompt = (await moderate(build_profile_prompt(req.features, req.style), "profile")).prompt
    params = GenerationParams(
        prompt, None, req.seed, req.width, req.height, req.steps, req.guidance_scale, req.n
    )
    return await answer(request, engine, params, req.output_format, route_role="profile")


@chat1to1.post("/v1/chat/1to1/generate", response_model=GenerateResponse)
async def chat1to1_generate(
    req: GenerateRequest, request: Request, engine: EngineDep
) -> GenerateResponse | Response:
    """A 1:1 chat image: hard block only."""
    return await _generate_text(req, request, engine, "chat1to1")


@shorts.post("/v1/chat/shorts/generate", response_model=GenerateResponse)
async def shorts_generate(
    req: GenerateRequest, request: Request, engine: EngineDep
) -> GenerateResponse | Response:
    """A shorts image: soft block and the pixel check."""
    return await _generate_text(req, request, engine, "shorts")


@scenes.post("/v1/chat/scenes/generate", response_model=GenerateResponse)
async def scenes_generate(
    req: GenerateRequest, request: Request, engine: EngineDep
) -> GenerateResponse | Response:
    """A scenes image: soft block and the pixel check."""
    return await _generate_text(req, request, engine, "scenes")


async def _generate_text(
    req: GenerateRequest, request: Request, engine: ImageEngine, route_role: RoleName
) -> GenerateResponse | Response:
    checked = await moderate(req.prompt, route_role)
    await check_negative_prompt(req.negative_prompt)
    return await answer(
        request,
        engine,
        params_from(req, checked.prompt),
        req.output_format,
        route_role=route_role,
        soft_blocked=checked.soft_blocked,
    )


ROLE_ROUTERS: dict[Role, list[APIRouter]] = {
    "general": [general],
    "profile": [general, profile],
    "chat1to1": [general, chat1to1],
    "shorts": [general, shorts],
    "scenes": [general, scenes],
}
