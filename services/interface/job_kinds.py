"""How each generate route's job becomes work: its stored spec, through the route's prepare step, to the flow.

The routes build their work with ``build_work`` too, from the very spec they store: so a job run again after a
restart, or by another replica, goes through exactly what the first submission went through (validation, the
word rules, the deployed workers' limits) with the same fixed seed.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from pydantic import BaseModel

from services.interface.appearance import StartFrom, StartImage, start_image, start_image_base64
from services.interface.flows import Flows
from services.interface.jobs.manager import Work
from services.interface.jobs.records import JobRoute
from services.interface.personas.access import approved_avatar, resolve_persona
from services.interface.personas.records import PersonaRecord
from services.interface.personas.store import PersonaStore
from shared.models import JOB_OPTION_FIELDS, ChatImageRequest, ImageGenRequest
from shared.roles import ChatKind

# The spec key of an edit's strength (services/interface/openai_images/routes.py).
STRENGTH = "strength"
CHAT_KINDS: dict[str, ChatKind] = {"chat1to1": "1to1", "shorts": "shorts", "scenes": "scenes"}


def request_spec(req: BaseModel, seed: int) -> dict[str, Any]:
    """The request as its job stores it: JSON, the job's own fields left out, the seed fixed."""
    spec = req.model_dump(mode="json", exclude=set(JOB_OPTION_FIELDS), exclude_none=True)
    spec["seed"] = seed
    return spec


async def build_work(
    flows: Flows,
    route: JobRoute,
    spec: dict[str, Any],
    blob: bytes | None,
    validated: BaseModel | None = None,
    *,
    owner: str | None = None,
    personas: PersonaStore | None = None,
) -> Work:
    """The job's work; ``validated``: the route's own model of this spec (its seed fixed), which saves
    validating the spec again on the request's path. A rebuilt job validates its stored spec. ``owner``: the
    job's API key, whose ``persona_id`` a chat spec may name (resolved from ``personas`` on every build: the
    spec keeps the id, so a rebuilt job reads the persona as it is then, or fails if it was deleted)."""
    if route in CHAT_KINDS:
        chat_req = _model(ChatImageRequest, spec, validated)
        start: StartImage | None = None
        if chat_req.persona_id is not None:
            if personas is None:
                raise ValueError("a chat job names a persona but no persona store was given")
            persona = await resolve_persona(personas, owner, chat_req.persona_id)
            chat_req = chat_req.model_copy(update={"persona": persona.features, "persona_id": None})
            start = await _start_image(flows, personas, persona, chat_req.appearance_lock)
        chat = await flows.prepare_chat_image(CHAT_KINDS[route], chat_req, start)
        return lambda: flows.chat_image(chat)
    if route in ("private", "text2img"):
        # An upload on a text route is the start image of an edit (the OpenAI edits route); its strength is
        # kept beside the request in the spec, since the native request has no such field.
        text_spec = {k: v for k, v in spec.items() if k != STRENGTH}
        text_req = _model(ImageGenRequest, text_spec, validated)
        start = None
        if blob is not None:
            start = StartFrom(await asyncio.to_thread(start_image_base64, blob), spec.get(STRENGTH))
        if route == "private":
            private = await flows.prepare_private_image(text_req, start)
            return lambda: flows.text_image(private)
        general = await flows.prepare_general_image(text_req, start)
        return lambda: flows.text_image(general)
    if route == "profile":
        if blob is None:
            raise ValueError("a profile job has no upload")
        profile = await flows.prepare_profile(
            spec.get("style"), spec["seed"], spec.get("steps"), spec.get("guidance_scale"), spec.get("n", 1)
        )
        name, content_type = spec["filename"], spec["content_type"]
        return lambda: flows.create_profile(blob, name, content_type, profile)
    raise ValueError(f"no job kind for route {route}")


async def _start_image(
    flows: Flows, personas: PersonaStore, persona: PersonaRecord, wanted: bool
) -> StartImage | None:
    """The persona's approved avatar as the image's start (the appearance lock), when the request and the
    deployment want it and the persona has one; otherwise the image is made from the features alone."""
    if not wanted or flows.settings.appearance_lock == "off" or persona.approved is None:
        return None
    avatar = await approved_avatar(personas, persona)
    if avatar is None:
        return None
    return await start_image(persona.id, persona.approved, avatar)


M = TypeVar("M", bound=BaseModel)


def _model(model: type[M], spec: dict[str, Any], validated: BaseModel | None) -> M:
    if isinstance(validated, model):
        return validated
    return model.model_validate(spec)
