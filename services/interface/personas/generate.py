"""``POST /v1/personas/generate``: a persona the LLM writes from a brief, the profile worker draws, kept.

Three steps, each on the queue of the work it is: the LLM's persona (the reply queue: an LLM call of the same
size), the checks on both sides of it (services/interface/persona_generation.py: adults only, the word rules),
then the avatar(s) from its features on the profile workers (the profile queue, weight ``n``), exactly as a
selfie's analysis is drawn. The persona is stored only once both succeeded, with the first avatar approved.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.interface.admission import owner_of, run_admitted
from services.interface.deps import FlowsDep, QueuesDep
from services.interface.persona_generation import generate_persona
from services.interface.personas.access import persona_store
from services.interface.personas.avatars import avatar_pngs
from services.interface.personas.records import PersonaRecord, persona_path
from shared.models import GeneratedPersonaView, PersonaBrief, PersonaGenerate
from shared.timings import StageTimer

router = APIRouter(tags=["personas"])


@router.post(
    "/v1/personas/generate",
    response_model=GeneratedPersonaView,
    status_code=201,
    responses={201: {"headers": {"Location": {"description": "The persona's URL"}}}},
)
async def generate(
    body: PersonaGenerate, request: Request, response: Response, flows: FlowsDep, queues: QueuesDep
) -> GeneratedPersonaView:
    """A persona from a brief ("a cheerful barista from Lisbon"): 422 for a minor or hard-blocked content."""
    owner = owner_of(request)
    store = persona_store(request)
    # Refused before the LLM and the GPU spend anything on a persona the store would not keep.
    await store.check_room(owner)
    brief = PersonaBrief(brief=body.brief)
    written = await run_admitted(request, queues["reply"], lambda: generate_persona(flows, brief))
    draft = written.persona
    job = await flows.prepare_profile(body.style, body.seed, body.steps, None, body.n)
    drawn = await run_admitted(
        request,
        queues["profile"],
        lambda: flows.draw_avatar(draft.features, job, StageTimer()),
        weight=body.n,
    )
    avatars = await avatar_pngs([drawn.image_base64, *(m.image_base64 for m in drawn.more_images)])
    record = PersonaRecord.drawn(
        owner,
        draft.features,
        len(avatars),
        name=draft.name,
        personality=draft.personality,
        speaking_style=draft.speaking_style,
    )
    record = await store.create(record, avatars)
    response.headers["Location"] = persona_path(record.id)
    return GeneratedPersonaView(**record.view().model_dump(), age=draft.age, source=written.source)
