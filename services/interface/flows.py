"""The public flows of DESIGN.md, each a short sequence of worker calls with a policy gate between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from services.interface.pools import WorkerPool
from services.interface.settings import InterfaceSettings
from shared.errors import ImgPodError, PolicyBlocked, UpstreamFailed
from shared.models import (
    AnalyzeResponse,
    CaptionResponse,
    ChatImageRequest,
    ChatImageResponse,
    ExpandResponse,
    GenerateResponse,
    ImageGenRequest,
    ImageGenResponse,
    ProfileCreateResponse,
    ReplyRequest,
    ReplyResponse,
)
from shared.policy import PolicyDecision, check_expanded_prompt, evaluate_private_chat, sanitize_general
from shared.timings import StageTimer

ChatKind = Literal["1to1", "shorts", "scenes"]
M = TypeVar("M", bound=BaseModel)
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


@dataclass(slots=True)
class Pools:
    profile: WorkerPool
    selfie: WorkerPool
    chat1to1: WorkerPool
    shorts: WorkerPool
    scenes: WorkerPool
    text2img: WorkerPool
    llm: WorkerPool

    def all(self) -> list[WorkerPool]:
        return [self.profile, self.selfie, self.chat1to1, self.shorts, self.scenes, self.text2img, self.llm]

    def pick_selfie_feature_worker(self) -> str:
        return self.selfie.pick().url

    def pick_profile_worker(self) -> str:
        return self.profile.pick().url

    def pick_chat1to1_worker(self) -> str:
        return self.chat1to1.pick().url

    def pick_shorts_worker(self) -> str:
        return self.shorts.pick().url

    def pick_scenes_worker(self) -> str:
        return self.scenes.pick().url

    def chat_pool(self, kind: ChatKind) -> WorkerPool:
        return {"1to1": self.chat1to1, "shorts": self.shorts, "scenes": self.scenes}[kind]


class Flows:
    def __init__(self, pools: Pools, settings: InterfaceSettings) -> None:
        self.pools = pools
        self.s = settings

    async def create_profile(
        self, image: bytes, filename: str, content_type: str, style: str | None, seed: int | None
    ) -> ProfileCreateResponse:
        timer = StageTimer()
        with timer.stage("analyze"):
            body = await self.pools.selfie.request(
                "POST",
                "/v1/profile/analyze",
                stage="analyze",
                timeout_s=self.s.analyze_timeout_s,
                files={"file": (filename, image, content_type)},
            )
        analysis = parse_upstream(AnalyzeResponse, body, "analyze")
        request: dict[str, Any] = {"features": analysis.features.model_dump(), "style": style, "seed": seed}
        with timer.stage("generate"):
            body = await self.pools.profile.request(
                "POST",
                "/v1/profile/generate",
                stage="generate",
                timeout_s=self.s.generate_timeout_s,
                json={k: v for k, v in request.items() if v is not None},
            )
        generated = parse_upstream(GenerateResponse, body, "generate")
        return ProfileCreateResponse(
            profile_image_base64=generated.image_base64,
            features=analysis.features,
            features_parsed=analysis.features_parsed,
            face=analysis.face,
            prompt_used=generated.prompt_used,
            seed=generated.seed,
            timings_ms=timer.done(),
        )

    async def chat_image(self, kind: ChatKind, req: ChatImageRequest) -> ChatImageResponse:
        moderated = kind != "1to1"
        timer = StageTimer()
        with timer.stage("policy"):
            decision = sanitize_general(req.message) if moderated else evaluate_private_chat(req.message)
            enforce(decision, "policy")
        with timer.stage("expand"):
            body = await self.pools.llm.request(
                "POST",
                f"/v1/chat/{kind}/expand",
                stage="expand",
                timeout_s=self.s.expand_timeout_s,
                json=req.model_dump(include={"message", "history", "persona"}, exclude_none=True),
            )
        expanded = parse_upstream(ExpandResponse, body, "expand")
        # The LLM can turn an innocent message into a blocked prompt: check again before any pixels exist.
        with timer.stage("policy_expanded"):
            prompt = enforce(check_expanded_prompt(expanded.prompt, moderated=moderated), "policy_expanded")
        with timer.stage("generate"):
            body = await self.pools.chat_pool(kind).request(
                "POST",
                f"/v1/chat/{kind}/generate",
                stage="generate",
                timeout_s=self.s.generate_timeout_s,
                json={
                    "prompt": prompt,
                    **req.model_dump(include={"seed", "width", "height"}, exclude_none=True),
                },
            )
        generated = parse_upstream(GenerateResponse, body, "generate")
        caption, caption_source = await self._caption(prompt, req.message, timer)
        return ChatImageResponse(
            image_base64=generated.image_base64,
            caption=caption,
            prompt_used=generated.prompt_used,
            seed=generated.seed,
            source=expanded.source,
            caption_source=caption_source,
            timings_ms=timer.done(),
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
                    timeout_s=self.s.caption_timeout_s,
                    json={"prompt": prompt[:2000], "message": message},
                )
                caption = parse_upstream(CaptionResponse, body, "caption")
                return caption.caption, caption.source
            except ImgPodError:
                if not self.s.caption_fallback:
                    raise
                return TEMPLATE_CAPTION, "template"

    async def private_image(self, req: ImageGenRequest) -> ImageGenResponse:
        timer = StageTimer()
        prompt = enforce(evaluate_private_chat(req.prompt), "policy")
        return await self._text_to_image(
            self.pools.chat1to1, "/v1/chat/1to1/generate", req, prompt, False, timer
        )

    async def general_image(self, req: ImageGenRequest) -> ImageGenResponse:
        timer = StageTimer()
        decision = sanitize_general(req.prompt)
        prompt = enforce(decision, "policy")
        return await self._text_to_image(
            self.pools.text2img, "/v1/generate", req, prompt, decision.soft_blocked, timer
        )

    async def _text_to_image(
        self, pool: WorkerPool, path: str, req: ImageGenRequest, prompt: str, soft: bool, timer: StageTimer
    ) -> ImageGenResponse:
        with timer.stage("generate"):
            body = await pool.request(
                "POST",
                path,
                stage="generate",
                timeout_s=self.s.generate_timeout_s,
                json={"prompt": prompt, **req.model_dump(exclude={"prompt"}, exclude_none=True)},
            )
        generated = parse_upstream(GenerateResponse, body, "generate")
        return ImageGenResponse(
            image_base64=generated.image_base64,
            prompt_used=generated.prompt_used,
            seed=generated.seed,
            width=generated.width,
            height=generated.height,
            soft_blocked=soft,
            timings_ms=timer.done(),
        )

    async def reply(self, req: ReplyRequest) -> ReplyResponse:
        timer = StageTimer()
        enforce(evaluate_private_chat(req.message), "policy")
        with timer.stage("reply"):
            body = await self.pools.llm.request(
                "POST",
                "/v1/chat/1to1/reply",
                stage="reply",
                timeout_s=self.s.reply_timeout_s,
                json=req.model_dump(),
            )
        reply = parse_upstream(ReplyResponse, body, "reply")
        return reply.model_copy(update={"timings_ms": timer.done()})
