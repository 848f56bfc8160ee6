"""Labelled in-character template replies, for when the LLM cannot answer a 1:1 chat message.

Why templates at all: a chat that answers "503" breaks the conversation, while a short in-character holding
line keeps it going until the model is back. Every reply built here is labelled ``source="template"`` by its
caller, exactly as the expansion and caption fallbacks are, so no client mistakes it for the model's words.

Why nothing of the user's message is echoed: no model checks the text on this path (the LLM and its guard are
what is down), so only fixed, safe sentences go out. The persona shows through a gesture made from its own
traits (hair, glasses, expression); those are client-sent text, so ``checked_template_reply`` passes the
reply through the word rules' hard block and drops the persona when it is blocked.
"""

from __future__ import annotations

import hashlib

from shared.models import Features
from shared.persona import clean_trait, hair_phrase
from shared.policy import decide_off_loop, evaluate_private_chat

# Fixed lines, safe for any audience; one is picked per message so a retry gets the same reply.
_LINES = (
    "Sorry, my mind wandered for a second. Tell me a little more?",
    "Hmm, let me think about that for a moment. What made you bring it up?",
    "I love hearing from you. Give me a second to find the right words.",
    "That is a good one. Can you say it another way while I catch up?",
    "I'm a little slow right now, but I'm listening. Go on?",
)
_PLAIN_GESTURE = "*smiles*"


def _gestures(persona: Features | None) -> list[str]:
    if persona is None:
        return [_PLAIN_GESTURE]
    gestures = []
    hair = hair_phrase(persona)
    if hair:
        gestures.append(f"*tucks a strand of {hair} behind my ear*")
    if persona.glasses:
        gestures.append("*pushes my glasses up*")
    expression = clean_trait(persona.expression)
    if expression and len(expression.split()) <= 3:
        gestures.append(f"*with a {expression.lower()} look*")
    return gestures or [_PLAIN_GESTURE]


def template_reply(message: str, persona: Features | None) -> str:
    """A short in-character reply; the same message and persona always give the same reply."""
    digest = hashlib.sha256(message.encode("utf-8")).digest()
    gestures = _gestures(persona)
    gesture = gestures[digest[0] % len(gestures)]
    line = _LINES[int.from_bytes(digest[1:5], "big") % len(_LINES)]
    return f"{gesture} {line}"


async def checked_template_reply(message: str, persona: Features | None) -> str:
    """``template_reply``, hard-blocked by the word rules (off the loop): no persona if blocked."""
    reply = template_reply(message, persona)
    if persona is not None and (await decide_off_loop(evaluate_private_chat, reply)).blocked:
        reply = template_reply(message, None)
    return reply
