"""Decisions: the policy's entry points, built on the rules in ``shared.policy.rules``.

Every check ends in one of three decisions (``PolicyDecision.moderation``):

* **blocked**: a hard-block category, refused on every route (private chat included).
* **covered**: suggestive (``sexualizing`` words: lingerie, seductive) or explicit (nudity, sexual acts)
  on a moderated route: the prompt is kept and gets ``COVERAGE_SUFFIX``, so the image shows it covered by
  clothing, fabric or framing instead of refusing it.
* **neutral**: everything else, passed on unchanged (only stripped of surrounding whitespace).

Three entry points share one classifier:

* ``evaluate_private_chat``: unmoderated 1:1 chat, blocked or neutral: explicit adult content between
  consenting adults passes unchanged.
* ``sanitize_general``: moderated routes (shorts, scenes, the general imagegen route), all three.
* ``check_expanded_prompt``: the interface runs this on every LLM-expanded prompt before it reaches an
  image worker, because the LLM can introduce terms the user never typed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from shared.models import CoverageReason, ModerationDecision
from shared.policy import rules
from shared.policy.lexicon import (
    CATEGORY_BESTIALITY,
    CATEGORY_EXPLICIT,
    CATEGORY_MINORS,
    CATEGORY_SEXUAL_VIOLENCE,
)
from shared.policy.match import Views, build_views

__all__ = [
    "CATEGORY_SUGGESTIVE",
    "COVERAGE_PHRASE",
    "COVERAGE_SUFFIX",
    "HARD_BLOCK_CATEGORIES",
    "INLINE_CHARS",
    "SOFT_BLOCK_CATEGORIES",
    "PolicyDecision",
    "check_expanded_prompt",
    "decide_off_loop",
    "evaluate_private_chat",
    "sanitize_general",
    "with_coverage",
]

CATEGORY_SUGGESTIVE = "suggestive"
# Order matters: when a prompt hits several hard categories the first one is reported.
HARD_BLOCK_CATEGORIES: tuple[str, ...] = (CATEGORY_MINORS, CATEGORY_SEXUAL_VIOLENCE, CATEGORY_BESTIALITY)
# The categories of a covered decision; each is also its ``coverage`` reason.
SOFT_BLOCK_CATEGORIES: tuple[str, ...] = (CATEGORY_EXPLICIT, CATEGORY_SUGGESTIVE)

# What a covered prompt gets (docs/MODERATION.md): coverage and no nudity, never "modest" or "fully clothed":
# lingerie, swimwear and silk sheets are allowed, exposure is not. The LLM service ends a covered expansion
# with the same words as a sentence; the word rules append them to prompts no LLM wrote.
COVERAGE_PHRASE = "intimate areas covered by clothing, fabric or framing, no nudity"
COVERAGE_SUFFIX = ", " + COVERAGE_PHRASE

# Reasons name the category in plain words and never quote the user's text, so they are safe to show
# and to log.
_REASONS: dict[str, str] = {
    CATEGORY_MINORS: "content involving minors is not allowed",
    CATEGORY_SEXUAL_VIOLENCE: "content depicting abuse or lack of consent is not allowed",
    CATEGORY_BESTIALITY: "content depicting intimacy with animals is not allowed",
    CATEGORY_EXPLICIT: "nudity and sexual acts are shown covered here; coverage was added to the prompt",
    CATEGORY_SUGGESTIVE: "suggestive content is shown covered here; coverage was added to the prompt",
}
_COVERAGE: dict[str, CoverageReason] = {CATEGORY_EXPLICIT: "explicit", CATEGORY_SUGGESTIVE: "suggestive"}


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """Outcome of a policy check.

    ``prompt`` is what may be sent downstream: empty when blocked (so a caller that forgets to check
    ``blocked`` still cannot forward the text), the stripped original otherwise, plus ``COVERAGE_SUFFIX``
    when covered. ``soft_blocked`` is the older name of "covered", kept because the flows and the workers'
    wire format use it; ``coverage`` says why, and is set exactly when covered.
    """

    blocked: bool
    category: str | None
    prompt: str
    soft_blocked: bool
    reason: str | None
    coverage: CoverageReason | None = None

    def __post_init__(self) -> None:
        # One decision per prompt: a state that is two at once, or covered for no reason, is a bug.
        if self.blocked and self.soft_blocked:
            raise ValueError("a decision is blocked or covered, not both")
        if self.soft_blocked != (self.coverage is not None):
            raise ValueError("coverage is set exactly when the decision is covered")

    @property
    def moderation(self) -> ModerationDecision:
        if self.blocked:
            return "blocked"
        return "covered" if self.soft_blocked else "neutral"

    @property
    def covered(self) -> bool:
        return self.soft_blocked


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


def _neutral(prompt: str) -> PolicyDecision:
    return PolicyDecision(blocked=False, category=None, prompt=prompt, soft_blocked=False, reason=None)


def _covered(prompt: str, category: str) -> PolicyDecision:
    return PolicyDecision(blocked=False, category=category, prompt=with_coverage(prompt), soft_blocked=True,
                          reason=_REASONS[category], coverage=_COVERAGE[category])  # fmt: skip


def with_coverage(prompt: str) -> str:
    """``prompt`` covered: ``COVERAGE_SUFFIX`` appended, unless it already carries the coverage phrase
    (our suffix, or the clause the LLM service ends a covered expansion with), so covering is idempotent."""
    return prompt if COVERAGE_PHRASE in prompt else prompt + COVERAGE_SUFFIX


def _without_coverage(text: str) -> str:
    """The text with our coverage phrase taken out, so re-checking our own output judges only what the user
    (or the LLM) wrote: the phrase names intimate areas and nudity, and must never count against a prompt.
    Removed without a gap, so a phrase planted inside a word cannot split that word away from the rules."""
    return text.replace(COVERAGE_PHRASE, "") if COVERAGE_PHRASE in text else text


def _decide(text: str, *, moderated: bool) -> PolicyDecision:
    prompt = text.strip()
    views = build_views(_without_coverage(prompt))
    category = _hard_category(views)
    if category is not None:
        return _blocked(category)
    if not moderated:
        return _neutral(prompt)
    if rules.EXPLICIT.search(views):
        return _covered(prompt, CATEGORY_EXPLICIT)
    if rules.SEXUALIZING.search(views):
        return _covered(prompt, CATEGORY_SUGGESTIVE)
    return _neutral(prompt)


def evaluate_private_chat(text: str) -> PolicyDecision:
    """Judge a message in an unmoderated 1:1 private chat.

    Adults may ask for explicit content here, so only the hard-block categories are refused; everything
    else passes unchanged (stripped of surrounding whitespace).
    """
    return _decide(text, moderated=False)


def sanitize_general(text: str) -> PolicyDecision:
    """Judge a prompt for a general (moderated) endpoint.

    Hard-block categories are refused. Suggestive and explicit prompts are not refused: the original text
    is kept and ``COVERAGE_SUFFIX`` has the image show it covered. Anything else passes unchanged.
    """
    return _decide(text, moderated=True)


def check_expanded_prompt(prompt: str, *, moderated: bool) -> PolicyDecision:
    """Re-check a prompt after LLM expansion, right before it is sent to an image worker.

    The LLM may add terms the user never typed, so the user-input check alone is not enough. Hard blocks
    always apply; ``moderated`` selects the coverage of ``sanitize_general`` versus the pass-through of
    ``evaluate_private_chat``. A prompt that already carries the coverage phrase keeps it once.
    """
    return _decide(prompt, moderated=moderated)


def mentions_minor(text: str) -> bool:
    """A minor term or an age under 18, in any listed language: what turns adult content into a hard block.

    For a second opinion that knows sexual content but not age (the guard model's categories have no
    "minors"), on routes where adult content is allowed.
    """
    return rules.mentions_minor(build_views(_without_coverage(text.strip())))


# A check costs about a millisecond per 2,000 characters: past this length it runs in a thread, so a long
# prompt never holds an event loop; below it the thread hop would cost more than the check.
INLINE_CHARS = 200


async def decide_off_loop(check: Callable[[str], PolicyDecision], text: str) -> PolicyDecision:
    """Run one of the checks above from async code, off the event loop when the text is long."""
    if len(text) <= INLINE_CHARS:
        return check(text)
    return await asyncio.to_thread(check, text)
