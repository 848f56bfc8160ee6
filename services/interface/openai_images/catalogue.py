"""The public image models: each one id for exactly one native route, its job kind and its queue (no second
path).

An OpenAI request becomes the native route's own request model (``ImageModel.native``); from there it is a
job of that route like any other (services/interface/jobs/submission.py): the same prepare step (validation
against the deployed workers, word rules, guard), the same admission and queue, the same worker call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.interface.jobs.records import JobRoute
from services.interface.pool_set import Pools
from shared.errors import ValidationFailed
from shared.models import ChatImageRequest, ImageGenRequest

NativeRequest = ImageGenRequest | ChatImageRequest


@dataclass(frozen=True, slots=True)
class Wanted:
    """What an OpenAI request asks of a model, in img_pod's terms."""

    prompt: str
    width: int | None
    height: int | None
    seed: int
    steps: int | None
    guidance_scale: float | None
    n: int
    partial_images: int
    persona_id: str | None = None
    strength: float | None = None


@dataclass(frozen=True, slots=True)
class Generated:
    image_base64: str
    # Set when an LLM wrote the prompt the image was made from.
    revised_prompt: str | None


@dataclass(frozen=True, slots=True)
class ImageModel:
    id: str
    # The native route's job kind, which is also its queue: the same admission, SLA and Retry-After.
    route: JobRoute
    # The native request model; chat models take the prompt as the chat message, which the LLM expands.
    chat: bool

    def deployed(self, pools: Pools) -> bool:
        return all(pool.deployed for pool in pools.for_queues()[self.route])

    def native(self, wanted: Wanted) -> NativeRequest:
        """The native route's request; raises pydantic's ValidationError as that route would."""
        fields: dict[str, Any] = {
            "seed": wanted.seed,
            "width": wanted.width,
            "height": wanted.height,
            "steps": wanted.steps,
            "guidance_scale": wanted.guidance_scale,
            "n": wanted.n,
            "partial_images": wanted.partial_images,
        }
        if self.chat:
            persona = {"persona_id": wanted.persona_id, "strength": wanted.strength}
            return ChatImageRequest(message=wanted.prompt, **fields, **persona)
        if wanted.strength is not None:
            raise ValidationFailed(
                "strength: only for an image that starts from another one: a chat model with persona_id, "
                "or /v1/images/edits",
                param="strength",
            )
        if wanted.persona_id is not None:
            raise ValidationFailed(
                f"persona_id: {self.id} draws no persona; the chat models "
                f"({', '.join(m.id for m in MODELS.values() if m.chat)}) do",
                param="persona_id",
            )
        return ImageGenRequest(prompt=wanted.prompt, **fields)

    def images(self, response: Any) -> list[Generated]:
        """The images of the native route's response: its model (ran here), or its JSON (ran elsewhere)."""
        get = response.get if isinstance(response, dict) else lambda name: getattr(response, name)
        revised = get("prompt_used") if self.chat else None
        more = get("more_images") or []
        firsts = [get("image_base64")]
        rest = [m["image_base64"] if isinstance(m, dict) else m.image_base64 for m in more]
        return [Generated(b64, revised) for b64 in firsts + rest]

    @staticmethod
    def prompt_tokens(response: Any) -> int:
        tokens = response.get("prompt_tokens") if isinstance(response, dict) else response.prompt_tokens
        return int(tokens or 0)


MODELS: dict[str, ImageModel] = {
    m.id: m
    for m in (
        # POST /v1/imagegen: word rules with soft block, guard, the general text-to-image pool.
        ImageModel("img-pod-general", "text2img", chat=False),
        # POST /v1/chat/private/imagegen: hard block only, the chat1to1 workers.
        ImageModel("img-pod-private", "private", chat=False),
        # POST /v1/chat/{shorts,scenes}/generate: the prompt is the chat message, expanded by the LLM.
        ImageModel("img-pod-shorts", "shorts", chat=True),
        ImageModel("img-pod-scenes", "scenes", chat=True),
    )
}
