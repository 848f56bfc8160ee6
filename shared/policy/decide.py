"""Decisions: the policy's entry points, built on the rules in ``shared.policy.rules``.

Three entry points share one classifier:

* ``evaluate_private_chat``: unmoderated 1:1 chat. Only hard-block categories are refused; explicit
  adult content between consenting adults passes unchanged.
* ``sanitize_general``: moderated endpoints. Hard blocks are refused; explicit prompts are kept but get
  ``SAFETY_SUFFIX`` appended so the image model is steered to a safe-for-work result.
* ``check_expanded_prompt``: the interface runs this on every LLM-expanded prompt before it reaches an
  image worker, because the LLM can introduce terms the user never typed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from shared.policy import rules
from shared.policy.lexicon import (
    CATEGORY_BESTIALITY,
    CATEGORY_EXPLICIT,
    CATEGORY_MINORS,
    CATEGORY_SEXUAL_VIOLENCE,
)
from shared.policy.match import Views, build_views

__all__ = [
    "COVERAGE_PHRASE",
    "HARD_BLOCK_CATEGORIES",
    "INLINE_CHARS",
    "SAFETY_SUFFIX",
    "SOFT_BLOCK_CATEGORIES",
    "PolicyDecision",
    "check_expanded_prompt",
    "decide_off_loop",
    "evaluate_private_chat",
    "sanitize_general",
]

# Order matters: when a prompt hits several hard categories the first one is reported.
HARD_BLOCK_CATEGORIES: tuple[str, ...] = (CATEGORY_MINORS, CATEGORY_SEXUAL_VIOLENCE, CATEGORY_BESTIALITY)
SOFT_BLOCK_CATEGORIES: tuple[str, ...] = (CATEGORY_EXPLICIT,)

# What a covered prompt gets (docs/MODERATION.md): coverage and no nudity, never "modest" or "fully clothed":
# lingerie, swimwear and silk sheets are allowed, exposure is not. The LLM service ends a covered expansion
# with the same words as a sentence; the word rules append them to prompts no LLM wrote.
COVERAGE_PHRASE = "intimate areas covered by clothing, fabric or framing, no nudity"
SAFETY_SUFFIX = ", fully clothed, modest clothing, no nudity, safe for work"

# Reasons name the category in plain words and never quote the user's text, so they are safe to show
# and to log.
_REASONS: dict[str, str] = {
    CATEGORY_MINORS: "content involving minors is not allowed",
    CATEGORY_SEXUAL_VIOLENCE: "content depicting abuse or lack of consent is not allowed",
    CATEGORY_BESTIALITY: "content depicting intimacy with animals is not allowed",
    CATEGORY_EXPLICIT: "adult content is not allowed here; safety constraints were added to the prompt",
}


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """Outcome of a policy check.

    ``prompt`` is what may be sent downstream: empty when blocked (so a caller that forgets to check
    ``blocked`` still cannot forward the text), the stripped original otherwise, plus ``SAFETY_SUFFIX``
    when ``soft_blocked``.
    """

    blocked: bool
    category: str | None
    prompt: str
    soft_blocked: bool
    reason: str | None


def _hard_category(views: Views) -> str | None:
    """Return the first hard-block category the text falls into, or None."""
    if (
        rules.INTRINSIC.search(views)
        or (rules.SEXUAL_ANY.search(views) and rules.mentions_minor(views))
        or rules.has_local_pair(views)
    ):
        return CATEGORY_MINORS
    if (
        rules.SEXUAL_VIOLENCE.search(views)
        or (rules.COERCION.search(views) and rules.EXPLICIT.search(views))
        or rules.NEAR_ACT.search(views)
    ):
        return CATEGORY_SEXUAL_VIOLENCE
    if rules.BESTIALITY.search(views) or rules.BESTIALITY_PHRASE.search(views):
        return CATEGORY_BESTIALITY
    return None


def _blocked(category: str) -> PolicyDecision:
    return PolicyDecision(blocked=True, category=category, prompt="", soft_blocked=False,
                          reason=_REASONS[category])  # fmt: skip


def _strip_suffix(text: str) -> str:
    """Drop a SAFETY_SUFFIX we appended earlier, so re-checking our own output is stable."""
    return text[: -len(SAFETY_SUFFIX)] if text.endswith(SAFETY_SUFFIX) else text


def _decide(text: str, *, moderated: bool) -> PolicyDecision:
    prompt = text.strip()
    views = build_views(_strip_suffix(prompt))
    category = _hard_category(views)
    if category is not None:
        return _blocked(category)
    if moderated and rules.EXPLICIT.search(views):
        safe = prompt if prompt.endswith(SAFETY_SUFFIX) else prompt + SAFETY_SUFFIX
        return PolicyDecision(blocked=False, category=CATEGORY_EXPLICIT, prompt=safe, soft_blocked=True,
                              reason=_REASONS[CATEGORY_EXPLICIT])  # fmt: skip
    return PolicyDecision(blocked=False, category=None, prompt=prompt, soft_blocked=False, reason=None)


def evaluate_private_chat(text: str) -> PolicyDecision:
    """Judge a message in an unmoderated 1:1 private chat.

    Adults may ask for explicit content here, so only the hard-block categories are refused; everything
    else passes unchanged (stripped of surrounding whitespace).
    """
    return _decide(text, moderated=False)


def sanitize_general(text: str) -> PolicyDecision:
    """Judge a prompt for a general (moderated) endpoint.

    Hard-block categories are refused. Explicit prompts are not refused, since the user's intent is
    usually recoverable: the original text is kept and ``SAFETY_SUFFIX`` steers the image model to a
    safe-for-work rendering.
    """
    return _decide(text, moderated=True)


def check_expanded_prompt(prompt: str, *, moderated: bool) -> PolicyDecision:
    """Re-check a prompt after LLM expansion, right before it is sent to an image worker.

    The LLM may add terms the user never typed, so the user-input check alone is not enough. Hard blocks
    always apply; ``moderated`` selects the soft-block behaviour of ``sanitize_general`` versus the
    pass-through of ``evaluate_private_chat``.
    """
    return _decide(prompt, moderated=moderated)


def mentions_minor(text: str) -> bool:
    """A minor term or an age under 18, in any listed language: what turns adult content into a hard block.

    For a second opinion that knows sexual content but not age (the guard model's categories have no
    "minors"), on routes where adult content is allowed.
    """
    return rules.mentions_minor(build_views(_strip_suffix(text.strip())))


# A check costs about a millisecond per 2,000 characters: past this length it runs in a thread, so a long
# prompt never holds an event loop; below it the thread hop would cost more than the check.
INLINE_CHARS = 200


async def decide_off_loop(check: Callable[[str], PolicyDecision], text: str) -> PolicyDecision:
    """Run one of the checks above from async code, off the event loop when the text is long."""
    if len(text) <= INLINE_CHARS:
        return check(text)
    return await asyncio.to_thread(check, text)
