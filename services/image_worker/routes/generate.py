"""Generation routes: the role-free ``/v1/generate`` and each role's own route."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter

from services.image_worker.deps import EngineDep
from services.image_worker.engine import GenerationParams, ImageEngine
from services.image_worker.moderation import moderate
from services.image_worker.profile_prompt import build_profile_prompt
from services.image_worker.settings import Role
from shared.images import encode_image_base64
from shared.models import GenerateRequest, GenerateResponse, ImageFormat, ProfileGenerateRequest

ROLE_ROUTES: dict[Role, str] = {
    "profile": "/v1/profile/generate",
    "chat1to1": "/v1/chat/1to1/generate",
    "shorts": "/v1/chat/shorts/generate",
    "scenes": "/v1/chat/scenes/generate",
}


async def run_generation(
    engine: ImageEngine,
    params: GenerationParams,
    output_format: ImageFormat,
    *,
    soft_blocked: bool = False,
) -> GenerateResponse:
    started = time.perf_counter()
    generated = await engine.generate(params)
    encode_started = time.perf_counter()
    # 200-400 ms for a 1024x1024 PNG: on the loop it would stall /healthz past the interface's probe timeout.
    image_b64 = await asyncio.to_thread(encode_image_base64, generated.result.image, output_format)
    done = time.perf_counter()
    job = generated.job
    return GenerateResponse(
        image_base64=image_b64,
        format=output_format,
        seed=job.seed,
        width=job.width,
        height=job.height,
        steps=job.steps,
        guidance_scale=job.guidance_scale,
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
    )


def build_router(role: Role) -> APIRouter:
    router = APIRouter(tags=["generate"])

    @router.post("/v1/generate", response_model=GenerateResponse)
    async def generate(req: GenerateRequest, engine: EngineDep) -> GenerateResponse:
        """Text to image with the worker's engine (the interface's general pool): hard block only."""
        checked = await moderate(req.prompt, role, moderated_route=False)
        return await run_generation(engine, params_from(req, checked.prompt), req.output_format)

    if role == "profile":

        @router.post(ROLE_ROUTES["profile"], response_model=GenerateResponse)
        async def profile_generate(req: ProfileGenerateRequest, engine: EngineDep) -> GenerateResponse:
            """An avatar from selfie features, in the house style unless a style is given."""
            prompt = (
                await moderate(build_profile_prompt(req.features, req.style), role, moderated_route=False)
            ).prompt
            params = GenerationParams(prompt, None, req.seed, req.width, req.height, req.steps, None)
            return await run_generation(engine, params, req.output_format)

    elif role in ROLE_ROUTES:

        @router.post(ROLE_ROUTES[role], response_model=GenerateResponse)
        async def role_generate(req: GenerateRequest, engine: EngineDep) -> GenerateResponse:
            checked = await moderate(req.prompt, role, moderated_route=True)
            return await run_generation(
                engine, params_from(req, checked.prompt), req.output_format, soft_blocked=checked.soft_blocked
            )

    return router
