"""A persona from a brief: the model's JSON answer, read failing closed, checked, retried once.

Why the answer is validated even where the server constrains decoding to the schema (vLLM's
``structured_outputs``): in process, transformers has no constrained decoding, and a server that cannot
compile a schema may fall back to any JSON (llama.cpp's server does) or ignore the field. So every answer is
parsed against ``PersonaDraft``; one that fails is generated again with the next seed, and after that the
call is a 502 ``unusable_model_output`` (or, with ``LLM_TEMPLATE_FALLBACK``, a persona labelled
``source="template"``), never a made-up persona passed off as the model's.

An answer that parses but fails the word rules (a hard-block category, or a minor's words or age anywhere in
it) or the guard is also generated again; if no attempt passes and one was unsafe, the call is a 422
``policy_blocked``, never a template: the brief itself may be what steered the model there.
"""

from __future__ import annotations

import json
import logging

from pydantic import ValidationError

from services.llm_service.engine import FALLBACK_ERRORS, TEMPLATE_MODEL, LlmEngine
from services.llm_service.persona_prompts import PERSONA_SCHEMA, build_persona_messages
from services.llm_service.persona_template import template_persona
from shared.errors import PolicyBlocked, UnusableModelOutput
from shared.models import GeneratedPersona, PersonaBrief, PersonaDraft
from shared.offload import off_loop_if
from shared.policy import INLINE_CHARS, evaluate_private_chat, mentions_minor
from shared.timings import StageTimer

log = logging.getLogger(__name__)

ROUTE = "persona"
ATTEMPTS = 2  # the first answer and one retry
# The answer's JSON: five fields and eleven bounded features, about 250 tokens from a 7B model; the cap
# leaves room for longer texts without letting junk run on.
PERSONA_MAX_TOKENS = 640
UNSAFE_DETAIL = "the generated persona did not pass the content safety check"


def read_persona(text: str) -> PersonaDraft | str:
    """The persona in the model's text, or why there is none (own words: it may reach a public detail).

    A code fence or words around the object are tolerated (unconstrained models add them); anything that
    is not one JSON object of exactly the schema is not."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return "no JSON object"
    try:
        data = json.loads(text[start : end + 1])
    except ValueError:
        return "not valid JSON"
    try:
        return PersonaDraft.model_validate(data)
    except ValidationError as exc:
        # Only the schema's own names: a key the model made up is its text, and never reaches a detail.
        fields = sorted({_field_name(err["loc"]) for err in exc.errors()})
        return f"not the persona schema ({', '.join(fields[:4])})"


def _field_name(loc: tuple[int | str, ...]) -> str:
    top = loc[0] if loc else None
    return top if isinstance(top, str) and top in PersonaDraft.model_fields else "unknown field"


def _rules_verdict(text: str) -> str | None:
    if evaluate_private_chat(text).blocked:
        return "the word rules"
    return "a minor" if mentions_minor(text) else None


async def unsafe_reason(draft: PersonaDraft) -> str | None:
    """None when the persona may be stored and used, else why not: the word rules' hard block, or a minor
    anywhere in it (a persona is drawn and role-played, so any minor is refused, not only sexual content)."""
    text = draft.policy_text()
    # Both checks in one thread hop when long: about a millisecond per 2,000 characters each.
    return await off_loop_if(len(text) > INLINE_CHARS, _rules_verdict, text)


async def write_persona(engine: LlmEngine, req: PersonaBrief) -> GeneratedPersona:
    clock = StageTimer()
    unsafe_seen = False
    attempts = 0
    try:
        engine.require_ready()
        messages = build_persona_messages(req.brief)
        last_reason = "no attempt"
        for attempt in range(ATTEMPTS):
            attempts = attempt + 1
            result = await engine.generate(
                ROUTE,
                messages,
                max_tokens=PERSONA_MAX_TOKENS,
                # Random weights and short answers: the JSON needs room, not a forced minimum of words.
                min_tokens=0,
                seed=engine._seed(attempt),
                json_schema=PERSONA_SCHEMA,
            )
            clock.lap(f"generate_{attempts}")
            draft = read_persona(result.text)
            if isinstance(draft, str):
                last_reason = draft if result.finish_reason == "stop" else f"{draft}, cut at the token cap"
                log.info("persona answer unusable", extra={"attempt": attempts, "reason": last_reason})
                continue
            reason = await unsafe_reason(draft)
            reason = reason or await engine._guard_output(ROUTE, draft.policy_text(), req.brief)
            clock.lap(f"check_{attempts}")
            if reason:
                unsafe_seen, last_reason = True, f"unsafe: {reason}"
                log.info("persona answer refused", extra={"attempt": attempts, "reason": reason})
                continue
            engine._outcomes.labels(ROUTE, "model").inc()
            return GeneratedPersona(
                persona=draft,
                source="model",
                model=engine.public_model,
                attempts=attempts,
                timings_ms=clock.done(),
            )
        if unsafe_seen:
            engine._outcomes.labels(ROUTE, "unsafe").inc()
            raise PolicyBlocked(UNSAFE_DETAIL, stage="persona_output")
        raise UnusableModelOutput(
            f"no usable persona after {attempts} attempt(s); last: {last_reason}", stage="llm"
        )
    except FALLBACK_ERRORS as exc:
        engine._fallback_or_raise(ROUTE, exc)
    draft = template_persona(req.brief)
    if await unsafe_reason(draft):
        raise PolicyBlocked(UNSAFE_DETAIL, stage="persona_output")
    clock.lap("template")
    return GeneratedPersona(
        persona=draft, source="template", model=TEMPLATE_MODEL, attempts=attempts, timings_ms=clock.done()
    )
