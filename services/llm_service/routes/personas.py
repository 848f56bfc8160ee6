"""Generated personas: a brief in, an adult persona out, as JSON of the shared schema."""

from __future__ import annotations

from fastapi import APIRouter

from services.llm_service.deps import EngineDep
from services.llm_service.persona_writer import write_persona
from shared.models import GeneratedPersona, PersonaBrief

router = APIRouter(tags=["personas"])


@router.post("/v1/personas/generate", response_model=GeneratedPersona)
async def generate_persona(req: PersonaBrief, engine: EngineDep) -> GeneratedPersona:
    """A persona (name, age 18-100, appearance as selfie ``Features``, personality, speaking style) written
    by the model as JSON of that schema (constrained where the server supports it) and read failing closed:
    one retry, then 502 ``unusable_model_output``, or a persona labelled ``source: "template"`` when the
    template fallback is on. An answer that fails the word rules or the guard twice is a 422
    ``policy_blocked``. The brief's own policy check is the interface's, before it calls."""
    return await write_persona(engine, req)
