"""Generation routes: the role-free ``/v1/generate`` and each role's own route."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter

from services.image_worker.deps import EngineDep
from services.image_worker.engine import GenerationParams, ImageEngine
from services.image_worker.moderation import check_negative_prompt, moderate
from services.image_worker.profile_prompt import build_profile_prompt
from services.image_worker.settings import Role
from shared.images import encode_image_base64
from shared.models import (
    GeneratedImage,
    GenerateRequest,
    GenerateResponse,
    ImageFormat,
    ProfileGenerateRequest,
)
from shared.roles import RoleName


async def run_generation(
    engine: ImageEngine,
    params: GenerationParams,
    output_format: ImageFormat,
    *,
    route_role: RoleName,
    soft_blocked: bool = False,
) -> GenerateResponse:
    started = time.perf_counter()
    generated = await engine.generate(params, route_role)
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
    )


# One router per route, each path written out where it is served; a worker mounts the general router and
# its own role's router (role_routers).
general = APIRouter(tags=["generate"])
profile = APIRouter(tags=["generate"])
chat1to1 = APIRouter(tags=["generate"])
shorts = APIRouter(tags=["generate"])
scenes = APIRouter(tags=["generate"])


@general.post("/v1/generate", response_model=GenerateResponse)
async def generate(req: GenerateRequest, engine: EngineDep) -> GenerateResponse:
    """Text to image for the interface's general pool, with the general role's policy on any worker."""
    return await _generate_text(req, engine, "general")


@profile.post("/v1/profile/generate", response_model=GenerateResponse)
async def profile_generate(req: ProfileGenerateRequest, engine: EngineDep) -> GenerateResponse:
    """An avatar from selfie features, in the house style unless a style is given."""
    prompt = (await moderate(build_profile_prompt(req.features, req.style), "profile")).prompt
    params = GenerationParams(
        prompt, None, req.seed, req.width, req.height, req.steps, req.guidance_scale, req.n
    )
    return await run_generation(engine, params, req.output_format, route_role="profile")


@chat1to1.post("/v1/chat/1to1/generate", response_model=GenerateResponse)
async def chat1to1_generate(req: GenerateRequest, engine: EngineDep) -> GenerateResponse:
    """A 1:1 chat image: hard block only."""
    return await _generate_text(req, engine, "chat1to1")


@shorts.post("/v1/chat/shorts/generate", response_model=GenerateResponse)
async def shorts_generate(req: GenerateRequest, engine: EngineDep) -> GenerateResponse:
    """A shorts image: soft block and the pixel check."""
    return await _generate_text(req, engine, "shorts")


@scenes.post("/v1/chat/scenes/generate", response_model=GenerateResponse)
async def scenes_generate(req: GenerateRequest, engine: EngineDep) -> GenerateResponse:
    """A scenes image: soft block and the pixel check."""
    return await _generate_text(req, engine, "scenes")


async def _generate_text(req: GenerateRequest, engine: ImageEngine, route_role: RoleName) -> GenerateResponse:
    checked = await moderate(req.prompt, route_role)
    await check_negative_prompt(req.negative_prompt)
    return await run_generation(
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
