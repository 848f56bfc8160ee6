"""A brief in, a validated adult persona out: the interface's half of ``POST /v1/personas/generate``.

The brief is checked before the LLM pool is asked, so a refused brief costs no model call: the hard-block
word rules of a chat message, and, since a persona is drawn and role-played, any minor at all ("a 16 year
old", "a schoolgirl"). The answer is checked again on arrival, whatever the LLM service checked: it must
parse as ``GeneratedPersona`` (age 18-100, an adult's age range, bounded texts, exactly the selfie
``Features``), else 502; and its words must pass the same rules, else 422 ``policy_blocked``.
"""

from __future__ import annotations

import logging

from services.interface.flows import Flows, enforce, parse_upstream
from shared.errors import PolicyBlocked
from shared.models import GeneratedPersona, PersonaBrief
from shared.offload import off_loop_if
from shared.policy import INLINE_CHARS, decide_off_loop, evaluate_private_chat, mentions_minor
from shared.timings import StageTimer

log = logging.getLogger(__name__)

STAGE = "persona"
MINOR_DETAIL = "personas are adults only; the brief describes a minor"
UNSAFE_ANSWER_DETAIL = "the generated persona did not pass the content safety check"


async def check_brief(brief: str) -> None:
    """422 ``policy_blocked`` for a brief the hard block refuses, or one that asks for a minor."""
    enforce(await decide_off_loop(evaluate_private_chat, brief), "policy")
    if await off_loop_if(len(brief) > INLINE_CHARS, mentions_minor, brief):
        raise PolicyBlocked(MINOR_DETAIL, stage="policy")


def _answer_refused(text: str) -> bool:
    return evaluate_private_chat(text).blocked or mentions_minor(text)


async def generate_persona(
    flows: Flows, brief: PersonaBrief, *, timeout_s: float | None = None
) -> GeneratedPersona:
    """The LLM pool's persona for ``brief``, checked on both sides of the call.

    ``timeout_s`` bounds the LLM call (two generations at most: the answer and one retry); the reply's
    timeout when not given. A ``source: "template"`` answer (the LLM service's labelled fallback) is passed
    on as labelled, after the same checks."""
    await check_brief(brief.brief)
    timer = StageTimer()
    with timer.stage("persona"):
        body = await flows.pools.llm.request(
            "POST",
            "/v1/personas/generate",
            stage=STAGE,
            timeout_s=flows.settings.reply_timeout_s if timeout_s is None else timeout_s,
            json=brief.model_dump(),
        )
    generated = parse_upstream(GeneratedPersona, body, STAGE)
    text = generated.persona.policy_text()
    if await off_loop_if(len(text) > INLINE_CHARS, _answer_refused, text):
        log.warning("generated persona refused by the word rules", extra={"source": generated.source})
        raise PolicyBlocked(UNSAFE_ANSWER_DETAIL, stage="persona_output")
    return generated.model_copy(update={"timings_ms": timer.done()})
