"""The public flows of the design, each a short sequence of worker calls with a policy gate between them.

Every flow is split in two. ``prepare_*`` runs before the request takes a queue slot: validation against the
deployed workers' limits and the policy check of the user's text, so a request that will be refused never
occupies the queue, and never teaches the queue's service-time estimate anything. ``run_*`` is the queued
part: the worker calls. Preparing also fixes the seed, so that any call can be re-sent to another worker
(when its first worker dies mid-call) and give the same image.

The guard model (``services/interface/guard.py``) is asked inside the queued part, since it is a call to the
LLM pool: about the user's text on every image route, side by side with the work that shows the user
nothing (the LLM expansion, the selfie analysis), and about the expanded prompt once it exists. No image
worker is called before every verdict is in.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, ValidationError

from services.interface.appearance import IdentityCheck, StartFrom, StartImage, check_strength
from services.interface.guard import Guard, soften
from services.interface.jobs.progress import progress_sink
from services.interface.pool_set import Pools
from services.interface.pools import WorkerPool
from services.interface.settings import InterfaceSettings
from shared.errors import ImgPodError, PolicyBlocked, UpstreamFailed, ValidationFailed
from shared.metrics import ServiceMetrics
from shared.models import (
    MAX_SEED,
    AnalyzeResponse,
    AppearanceLock,
    CaptionResponse,
    ChatImageRequest,
    ChatImageResponse,
    CoverageReason,
    ExpandResponse,
    Features,
    GenerateResponse,
    IdentityReport,
    ImageGenRequest,
    ImageGenResponse,
    ImageParams,
    Moderation,
    ModerationDecision,
    ProfileCreateResponse,
    ReplyRequest,
    ReplyResponse,
)
from shared.policy import (
    PolicyDecision,
    check_expanded_prompt,
    decide_off_loop,
    evaluate_private_chat,
    sanitize_general,
)
from shared.reply_templates import checked_template_reply
from shared.roles import CHAT_KIND_ROLE, ChatKind, RoleName, chat_policy, policy_for
from shared.styles import STYLE_PHRASES, StyleName, style_phrase
from shared.timings import StageTimer

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", ChatImageResponse, ImageGenResponse)
# Ten to fifteen words, safe whatever the image shows: used only when the caption stage fails, and labelled.
TEMPLATE_CAPTION = "Here is the picture you asked for, made just for you in this chat."


def parse_upstream(model: type[M], body: Any, stage: str) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise UpstreamFailed(f"{stage}: worker answered in an unexpected shape", stage=stage) from exc


def enforce(decision: PolicyDecision, stage: str) -> str:
    if decision.blocked:
        raise PolicyBlocked(decision.reason or "the request is not allowed", stage=stage)
    return decision.prompt


def _enforced(decision: PolicyDecision, stage: str) -> PolicyDecision:
    enforce(decision, stage)
    return decision


A = TypeVar("A")
B = TypeVar("B")


def fixed_seed(seed: int | None) -> int:
    return seed if seed is not None else secrets.randbelow(MAX_SEED + 1)


def check_limits(
    pool: WorkerPool,
    width: int | None,
    height: int | None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    n: int = 1,
) -> None:
    """Refuse what the deployed workers would refuse (the limits they advertise on /healthz), before the
    request takes a queue slot. The schema bounds (shared/image_params.py) were checked by the request model.
    """
    limits = pool.limits
    if limits is None:
        return
    for name, side in (("width", width), ("height", height)):
        if side is not None and side > limits.max_side:
            raise ValidationFailed(f"{name}: at most {limits.max_side} on this deployment", param=name)
    if width is not None and height is not None and width * height > limits.max_pixels:
        raise ValidationFailed(
            f"{width}x{height} is over this deployment's {limits.max_pixels} pixels", param="width"
        )
    if steps is not None and steps > limits.max_steps:
        raise ValidationFailed(f"steps: at most {limits.max_steps} on this deployment", param="steps")
    if guidance_scale is not None and guidance_scale > limits.max_guidance:
        raise ValidationFailed(
            f"guidance_scale: at most {limits.max_guidance:g} on this deployment", param="guidance_scale"
        )
    if n > limits.max_n:
        raise ValidationFailed(f"n: at most {limits.max_n} on this deployment", param="n")


def check_params(pool: WorkerPool, req: ImageParams) -> None:
    check_limits(pool, req.width, req.height, req.steps, req.guidance_scale, req.n)


async def check_negative_prompt(req: ImageParams) -> None:
    """The hard block on the negative prompt, on every route: it is a client's text that reaches the model.

    Not the soft block (a negative prompt names what to keep out: "nudity" is a usual one) and not the guard,
    whose verdict is about what a text asks for, which a list of things to avoid is not.
    """
    if req.negative_prompt and req.negative_prompt.strip():
        enforce(await decide_off_loop(evaluate_private_chat, req.negative_prompt), "policy")


def _start_fields(job: TextImageJob) -> dict[str, Any]:
    if job.init_image is None:
        return {}
    return {"init_image": job.init_image, **({"strength": job.strength} if job.strength is not None else {})}


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both results, run side by side; the first failure is raised at once and the other is cancelled (a
    caption that cannot be written stops the image it would go with, and the reverse)."""
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return tasks[0].result(), tasks[1].result()
    finally:
        for task in tasks:
            task.cancel()
        # Waited for: a cancelled worker call gives its slot back before this returns, as when awaited alone.
        await asyncio.gather(*tasks, return_exceptions=True)


def with_style(prompt: str, style: StyleName | None) -> str:
    """The prompt with the preset's phrase appended (routes without an LLM expansion)."""
    phrase = style_phrase(style)
    return f"{prompt}, {phrase}" if phrase else prompt


def generation_fields(req: ImageParams) -> dict[str, Any]:
    """The generation knobs as an image worker takes them (its GenerateRequest), unset ones left out."""
    return req.model_dump(
        include={"negative_prompt", "width", "height", "steps", "guidance_scale", "n", "partial_images"},
        exclude_none=True,
        exclude_defaults=True,
    )


def params_used(generated: GenerateResponse, n: int, style: StyleName | None) -> dict[str, Any]:
    """The fields of ImageParamsUsed, from what the worker reports it used."""
    count = 1 + len(generated.more_images)
    if count != n:
        raise UpstreamFailed(f"generate: the worker answered {count} images for {n} asked", stage="generate")
    return {
        "more_images": generated.more_images,
        "width": generated.width,
        "height": generated.height,
        "steps": generated.steps,
        "guidance_scale": generated.guidance_scale,
        "negative_prompt": generated.negative_prompt,
        "style": style,
    }


@dataclass(frozen=True, slots=True)
class ChatJob:
    kind: ChatKind
    req: ChatImageRequest
    seed: int
    # Why the message needs coverage (moderated kinds only): the expansion is told so.
    coverage: CoverageReason | None = None
    # The persona's approved avatar, where the image starts (the appearance lock); None: text to image.
    start: StartImage | None = None

    @property
    def moderated(self) -> bool:
        return chat_policy(self.kind).soft_block


@dataclass(frozen=True, slots=True)
class TextImageJob:
    pool: WorkerPool
    path: str
    req: ImageGenRequest
    prompt: str
    soft_blocked: bool
    seed: int
    # The route's policy soft-blocks (general), or passes explicit content (private 1:1 images).
    moderated: bool
    # Why the word rules covered the prompt, when they did.
    coverage: CoverageReason | None = None
    # Image to image (the OpenAI edits route): the start image as base64 JPEG, and how far from it.
    init_image: str | None = None
    strength: float | None = None


@dataclass(frozen=True, slots=True)
class ProfileJob:
    # The text that replaces the avatar's house style: a preset's phrase, or the client's own words.
    style_text: str | None
    # Set when the client named a preset; its phrase is ours, so only free text is judged.
    preset: StyleName | None
    seed: int
    steps: int | None
    guidance_scale: float | None
    n: int


class ModerationCounts:
    """Decisions of the word rules per role, as a metric: what share of a role's prompts gets coverage."""

    def __init__(self, metrics: ServiceMetrics | None) -> None:
        self._counter = (
            metrics.counter(
                "imgpod_moderation_decisions_total", "Policy decisions by role", ("role", "decision")
            )
            if metrics is not None
            else None
        )

    def count(self, role: RoleName, decision: ModerationDecision) -> None:
        if self._counter is not None:
            self._counter.labels(role, decision).inc()

    def blocked(self, role: RoleName, decision: PolicyDecision) -> None:
        """Count a refusal of the word rules before anything runs; what passes is counted when it ends."""
        if decision.blocked:
            self.count(role, "blocked")

    async def counted(self, role: RoleName, flow: Awaitable[R]) -> R:
        """The flow's response, its final decision counted; a refusal inside it (the guard, the re-check of
        the expansion) counted as that role's block."""
        try:
            response = await flow
        except PolicyBlocked:
            self.count(role, "blocked")
            raise
        assert response.moderation is not None
        self.count(role, response.moderation.decision)
        return response


class Flows:
    def __init__(
        self, pools: Pools, settings: InterfaceSettings, guard: Guard, metrics: ServiceMetrics | None = None
    ) -> None:
        self.pools = pools
        self.settings = settings
        self.guard = guard
        self.moderation = ModerationCounts(metrics)
        self.identity = IdentityCheck(pools.selfie, settings.identity_timeout_s, metrics)

    # --- profile ---------------------------------------------------------------------------------------

    async def prepare_profile(
        self,
        style: str | None,
        seed: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        n: int = 1,
    ) -> ProfileJob:
        """A preset name becomes its phrase; free text gets the word rules (the rest of the avatar prompt is
        the house style); the knobs are checked against the profile workers' limits."""
        preset = cast(StyleName, style) if style in STYLE_PHRASES else None
        style_text = style_phrase(preset) if preset else style
        if not preset and style and style.strip():
            enforce(await decide_off_loop(evaluate_private_chat, style), "policy")
        check_limits(self.pools.profile, None, None, steps, guidance_scale, n)
        return ProfileJob(style_text, preset, fixed_seed(seed), steps, guidance_scale, n)

    async def create_profile(
        self, image: bytes, filename: str, content_type: str, job: ProfileJob
    ) -> ProfileCreateResponse:
        timer = StageTimer()
        moderated = policy_for("profile").soft_block
        style = job.style_text
        # The style is the only text a client puts in the avatar prompt: judged while the selfie is analysed.
        style_check = (
            self.guard.in_background(style, moderated=moderated, stage="guard", timer=timer)
            if style and style.strip() and job.preset is None
            else None
        )
        try:
            with timer.stage("analyze"):
                body = await self.pools.selfie.request(
                    "POST",
                    "/v1/profile/analyze",
                    stage="analyze",
                    timeout_s=self.settings.analyze_timeout_s,
                    files={"file": (filename, image, content_type)},
                )
            if style_check is not None:
                style = enforce(await style_check, "guard")
        finally:
            if style_check is not None:
                style_check.cancel()
        analysis = parse_upstream(AnalyzeResponse, body, "analyze")
        generated = await self.draw_avatar(analysis.features, job, timer, style=style)
        return ProfileCreateResponse(
            profile_image_base64=generated.image_base64,
            features=analysis.features,
            features_parsed=analysis.features_parsed,
            face=analysis.face,
            prompt_used=generated.prompt_used,
            seed=generated.seed,
            timings_ms=timer.done(),
            **params_used(generated, job.n, job.preset),
        )

    async def draw_avatar(
        self, features: Features, job: ProfileJob, timer: StageTimer, *, style: str | None = None
    ) -> GenerateResponse:
        """The profile worker's avatar(s) of these features: a selfie's analysis, or a generated persona's.
        ``style``: the job's style text once judged (the guard may have softened it)."""
        request: dict[str, Any] = {
            "features": features.model_dump(),
            "style": job.style_text if style is None else style,
            "seed": job.seed,
            "steps": job.steps,
            "guidance_scale": job.guidance_scale,
            "n": job.n,
        }
        with timer.stage("generate"):
            body = await self.pools.profile.request(
                "POST",
                "/v1/profile/generate",
                stage="generate",
                timeout_s=self.settings.generate_timeout_s,
                on_progress=progress_sink.get(),
                json={k: v for k, v in request.items() if v is not None},
            )
        return parse_upstream(GenerateResponse, body, "generate")

    # --- chat images -----------------------------------------------------------------------------------

    async def prepare_chat_image(
        self, kind: ChatKind, req: ChatImageRequest, start: StartImage | None = None
    ) -> ChatJob:
        moderated = chat_policy(kind).soft_block
        decision = await decide_off_loop(
            sanitize_general if moderated else evaluate_private_chat, req.message
        )
        self.moderation.blocked(CHAT_KIND_ROLE[kind], decision)
        enforce(decision, "policy")
        await check_negative_prompt(req)
        check_params(self.pools.chat_pool(kind), req)
        check_strength(self.pools.chat_pool(kind), req.strength, starts_from_avatar=start is not None)
        return ChatJob(kind, req, fixed_seed(req.seed), decision.coverage if moderated else None, start)

    async def chat_image(self, job: ChatJob) -> ChatImageResponse:
        return await self.moderation.counted(CHAT_KIND_ROLE[job.kind], self._chat_image(job))

    async def _chat_image(self, job: ChatJob) -> ChatImageResponse:
        kind, req = job.kind, job.req
        timer = StageTimer()
        # The guard reads the message while the LLM expands it: the expansion shows the user nothing.
        message_check = self.guard.in_background(
            req.message, moderated=job.moderated, stage="guard", timer=timer
        )
        try:
            with timer.stage("expand"):
                body = await self.pools.llm.request(
                    "POST",
                    f"/v1/chat/{kind}/expand",
                    stage="expand",
                    timeout_s=self.settings.expand_timeout_s,
                    # The style is the expansion's to render: it writes the prompt.
                    json={
                        **req.model_dump(
                            include={"message", "history", "persona", "style"}, exclude_none=True
                        ),
                        **({"coverage": job.coverage} if job.coverage else {}),
                    },
                )
            expanded = parse_upstream(ExpandResponse, body, "expand")
            # The LLM can turn an innocent message into a blocked prompt: check again before any pixels exist.
            with timer.stage("policy_expanded"):
                decision = await decide_off_loop(
                    lambda text: check_expanded_prompt(text, moderated=job.moderated), expanded.prompt
                )
                # Coverage is added once: shared.policy's with_coverage sees the LLM's coverage sentence too.
                prompt = enforce(decision, "policy_expanded")
            message_soft = _enforced(await message_check, "guard").soft_blocked
        finally:
            message_check.cancel()
        with timer.stage("guard_expanded"):
            checked = await self.guard.check(prompt, moderated=job.moderated, stage="guard_expanded")
        prompt = enforce(checked, "guard_expanded")
        if message_soft:
            prompt = soften(prompt)
        # The decision of the whole request: the message's words first, then what the expansion or the guard
        # added (an LLM can write what the message did not say).
        reason = (
            job.coverage or decision.coverage or ("guard" if message_soft or checked.soft_blocked else None)
        )
        moderation = (
            Moderation(decision="covered", reason=reason)
            if job.moderated and reason is not None
            else Moderation(decision="neutral")
        )

        start = job.start
        fields: dict[str, Any] = {"prompt": prompt, "seed": job.seed, **generation_fields(req)}
        if start is not None:
            fields["init_image"] = start.image_base64
            if req.strength is not None:
                fields["strength"] = req.strength

        async def generate() -> tuple[GenerateResponse, IdentityReport | None]:
            with timer.stage("generate"):
                body = await self.pools.chat_pool(kind).request(
                    "POST",
                    f"/v1/chat/{kind}/generate",
                    stage="generate",
                    timeout_s=self.settings.generate_timeout_s,
                    on_progress=progress_sink.get(),
                    json=fields,
                )
            generated = parse_upstream(GenerateResponse, body, "generate")
            if start is None or not self.settings.identity_check:
                return generated, None
            with timer.stage("identity"):
                role = CHAT_KIND_ROLE[kind]
                return generated, await self.identity.report(role, start.image_base64, generated.image_base64)

        # The caption depends on the final prompt only: it is written while the image is made.
        (generated, identity), (caption, caption_source) = await both(
            generate(), self._caption(prompt, req.message, timer)
        )
        lock = None
        if start is not None:
            lock = AppearanceLock(
                persona_id=start.persona_id, avatar_index=start.avatar_index, strength=generated.strength
            )
        used = params_used(generated, req.n, req.style)
        return ChatImageResponse(
            image_base64=generated.image_base64,
            caption=caption,
            prompt_used=generated.prompt_used,
            prompt_tokens=generated.prompt_tokens,
            prompt_truncated=generated.prompt_truncated,
            seed=generated.seed,
            source=expanded.source,
            caption_source=caption_source,
            moderation=moderation,
            appearance_lock=lock,
            identity=identity,
            timings_ms=timer.done(),
            **used,
        )

    async def _caption(
        self, prompt: str, message: str, timer: StageTimer
    ) -> tuple[str, Literal["model", "template"]]:
        with timer.stage("caption"):
            try:
                body = await self.pools.llm.request(
                    "POST",
                    "/v1/chat/1to1/caption",
                    stage="caption",
                    timeout_s=self.settings.caption_timeout_s,
                    json={"prompt": prompt[:2000], "message": message},
                )
                caption = parse_upstream(CaptionResponse, body, "caption")
                return caption.caption, caption.source
            except ImgPodError:
                if not self.settings.caption_fallback:
                    raise
                return TEMPLATE_CAPTION, "template"

    # --- text to image ---------------------------------------------------------------------------------

    # No LLM writes these prompts: the style's phrase is appended here, before the word rules, so they judge
    # the very text the worker gets (the phrases are ours and pass them; the guard reads the client's prompt).

    async def prepare_private_image(
        self, req: ImageGenRequest, start: StartFrom | None = None
    ) -> TextImageJob:
        styled = with_style(req.prompt, req.style)
        private = await decide_off_loop(evaluate_private_chat, styled)
        self.moderation.blocked("chat1to1", private)
        prompt = enforce(private, "policy")
        path, moderated = "/v1/chat/1to1/generate", policy_for("chat1to1").soft_block
        return await self._text_job(
            self.pools.chat1to1, path, req, prompt, False, moderated=moderated, start=start
        )

    async def prepare_general_image(
        self, req: ImageGenRequest, start: StartFrom | None = None
    ) -> TextImageJob:
        decision = await decide_off_loop(sanitize_general, with_style(req.prompt, req.style))
        self.moderation.blocked("general", decision)
        prompt = enforce(decision, "policy")
        moderated = policy_for("general").soft_block
        return await self._text_job(
            self.pools.text2img,
            "/v1/generate",
            req,
            prompt,
            decision.soft_blocked,
            moderated=moderated,
            coverage=decision.coverage,
            start=start,
        )

    async def _text_job(
        self,
        pool: WorkerPool,
        path: str,
        req: ImageGenRequest,
        prompt: str,
        soft: bool,
        *,
        moderated: bool,
        coverage: CoverageReason | None = None,
        start: StartFrom | None = None,
    ) -> TextImageJob:
        await check_negative_prompt(req)
        check_params(pool, req)
        strength = start.strength if start else None
        check_strength(pool, strength, starts_from_avatar=start is not None)
        init_image = start.image_base64 if start else None
        return TextImageJob(
            pool, path, req, prompt, soft, fixed_seed(req.seed), moderated, coverage, init_image, strength
        )

    async def text_image(self, job: TextImageJob) -> ImageGenResponse:
        return await self.moderation.counted(
            "general" if job.moderated else "chat1to1", self._text_image(job)
        )

    async def _text_image(self, job: TextImageJob) -> ImageGenResponse:
        timer = StageTimer()
        prompt, soft_blocked = job.prompt, job.soft_blocked
        with timer.stage("guard"):
            checked = await self.guard.check(job.req.prompt, moderated=job.moderated, stage="guard")
        if _enforced(checked, "guard").soft_blocked:
            prompt, soft_blocked = soften(prompt), True
        with timer.stage("generate"):
            body = await job.pool.request(
                "POST",
                job.path,
                stage="generate",
                timeout_s=self.settings.generate_timeout_s,
                on_progress=progress_sink.get(),
                json={"prompt": prompt, "seed": job.seed, **generation_fields(job.req), **_start_fields(job)},
            )
        generated = parse_upstream(GenerateResponse, body, "generate")
        return ImageGenResponse(
            image_base64=generated.image_base64,
            prompt_used=generated.prompt_used,
            prompt_tokens=generated.prompt_tokens,
            prompt_truncated=generated.prompt_truncated,
            seed=generated.seed,
            soft_blocked=soft_blocked,
            moderation=Moderation(
                decision="covered" if soft_blocked else "neutral",
                reason=(job.coverage or "guard") if soft_blocked else None,
            ),
            timings_ms=timer.done(),
            **params_used(generated, job.req.n, job.req.style),
        )

    # --- reply -----------------------------------------------------------------------------------------

    async def prepare_reply(self, req: ReplyRequest) -> ReplyRequest:
        enforce(await decide_off_loop(evaluate_private_chat, req.message), "policy")
        # Who the persona is goes into the LLM's instructions: the same hard block as the message.
        character = "\n".join(t for t in (req.name, req.personality, req.speaking_style) if t)
        if character:
            enforce(await decide_off_loop(evaluate_private_chat, character), "policy")
        return req

    async def reply(self, req: ReplyRequest) -> ReplyResponse:
        timer = StageTimer()
        with timer.stage("reply"):
            body = await self.pools.llm.request(
                "POST",
                "/v1/chat/1to1/reply",
                stage="reply",
                timeout_s=self.settings.reply_timeout_s,
                json=req.model_dump(),
            )
        reply = parse_upstream(ReplyResponse, body, "reply")
        return reply.model_copy(update={"timings_ms": timer.done()})

    async def template_reply(self, req: ReplyRequest, exc: ImgPodError) -> ReplyResponse:
        """The labelled in-character template when the LLM cannot reply; ``exc`` again when that is off."""
        if not self.settings.reply_fallback:
            raise exc
        log.warning(
            "reply from template: the LLM could not answer",
            extra={"reason": exc.code, "stage": exc.stage, "detail": exc.detail},
            exc_info=exc,
        )
        timer = StageTimer()
        with timer.stage("template"):
            reply = await checked_template_reply(req.message, req.persona)
        return ReplyResponse(reply=reply, source="template", model="template", timings_ms=timer.done())
