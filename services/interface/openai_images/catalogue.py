"""The public image models: each one id for exactly one existing flow and its queue (no second path).

A model is the two halves every flow has (services/interface/flows.py): ``prepare`` (validation against the
deployed workers, the policy check, a fixed seed) before the queue, ``run`` (the worker calls) inside it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.interface.flows import ChatJob, Flows, TextImageJob
from services.interface.pool_set import Pools
from shared.models import ChatImageRequest, GeneratedImage, ImageGenRequest
from shared.roles import ChatKind

Job = TextImageJob | ChatJob


@dataclass(frozen=True, slots=True)
class Wanted:
    """What an OpenAI request asks of a flow, in img_pod's terms."""

    prompt: str
    width: int | None
    height: int | None
    seed: int | None
    steps: int | None
    n: int = 1


@dataclass(frozen=True, slots=True)
class Generated:
    image_base64: str
    prompt_tokens: int | None
    # Set when an LLM wrote the prompt the image was made from.
    revised_prompt: str | None


@dataclass(frozen=True, slots=True)
class ImageModel:
    id: str
    # The native route's queue: the same admission, SLA and Retry-After as that route.
    queue: str
    prepare: Callable[[Flows, Wanted], Awaitable[Job]]
    # All n images of the request, from one worker call (one batched pipeline call on the GPU).
    run: Callable[[Flows, Any], Awaitable[list[Generated]]]
    # The native route takes no steps (chat images use the role's own).
    takes_steps: bool

    def deployed(self, pools: Pools) -> bool:
        return all(pool.workers for pool in pools.for_queues()[self.queue])


def _text_request(wanted: Wanted) -> ImageGenRequest:
    return ImageGenRequest(
        prompt=wanted.prompt,
        seed=wanted.seed,
        width=wanted.width,
        height=wanted.height,
        steps=wanted.steps,
        n=wanted.n,
    )


def _images(
    first: str, more: list[GeneratedImage], tokens: int | None, revised: str | None
) -> list[Generated]:
    return [Generated(b64, tokens, revised) for b64 in (first, *(m.image_base64 for m in more))]


async def _run_text(flows: Flows, job: TextImageJob) -> list[Generated]:
    out = await flows.text_image(job)
    return _images(out.image_base64, out.more_images, out.prompt_tokens, None)


def _chat(kind: ChatKind) -> Callable[[Flows, Wanted], Awaitable[Job]]:
    async def prepare(flows: Flows, wanted: Wanted) -> Job:
        req = ChatImageRequest(
            message=wanted.prompt, seed=wanted.seed, width=wanted.width, height=wanted.height, n=wanted.n
        )
        return await flows.prepare_chat_image(kind, req)

    return prepare


async def _run_chat(flows: Flows, job: ChatJob) -> list[Generated]:
    out = await flows.chat_image(job)
    return _images(out.image_base64, out.more_images, out.prompt_tokens, out.prompt_used)


async def _prepare_general(flows: Flows, wanted: Wanted) -> Job:
    return await flows.prepare_general_image(_text_request(wanted))


async def _prepare_private(flows: Flows, wanted: Wanted) -> Job:
    return await flows.prepare_private_image(_text_request(wanted))


MODELS: dict[str, ImageModel] = {
    m.id: m
    for m in (
        # POST /v1/imagegen: word rules with soft block, guard, the general text-to-image pool.
        ImageModel("img-pod-general", "text2img", _prepare_general, _run_text, takes_steps=True),
        # POST /v1/chat/private/imagegen: hard block only, the chat1to1 workers.
        ImageModel("img-pod-private", "private", _prepare_private, _run_text, takes_steps=True),
        # POST /v1/chat/{shorts,scenes}/generate: the prompt is the chat message, expanded by the LLM.
        ImageModel("img-pod-shorts", "shorts", _chat("shorts"), _run_chat, takes_steps=False),
        ImageModel("img-pod-scenes", "scenes", _chat("scenes"), _run_chat, takes_steps=False),
    )
}
