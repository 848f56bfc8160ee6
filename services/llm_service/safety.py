"""Explicit-term checks for captions and moderated expansions.

The word lists are ``shared.policy_terms``'s; ``is_caption_safe`` also asks ``shared.policy`` (which sees
through leetspeak and look-alike letters). ``redact_explicit`` removes words rather than judging a text, which
the policy module does not do. Matching runs on NFKC + case-folded text and on word boundaries, so
"Scunthorpe" or "therapist" pass.
"""

from __future__ import annotations

import re
import unicodedata

from shared.policy import sanitize_general
from shared.policy_terms import EXPLICIT_TERMS, SEXUAL_ACT_TERMS, SEXUAL_VIOLENCE_TERMS, SEXUALIZING_TERMS

# One source of words: the project's policy lists. A caption is held to more than the soft block: words
# that only sexualise ("sexy", "lingerie") are not allowed in a caption either.
_EXPLICIT_TERMS = sorted(
    {*EXPLICIT_TERMS, *SEXUALIZING_TERMS, *SEXUAL_ACT_TERMS, *SEXUAL_VIOLENCE_TERMS}, key=len, reverse=True
)
_PATTERN = re.compile(r"(?<![a-z0-9])(?:" + "|".join(map(re.escape, _EXPLICIT_TERMS)) + r")(?![a-z0-9])")
# "no nudity" is our own safety clause, not a request for nudity.
_NEGATED = re.compile(r"(?<![a-z0-9])(?:no|without|never|non)[\s-]+(?=" + _PATTERN.pattern + ")")


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def explicit_terms(text: str) -> list[str]:
    """The explicit terms found in ``text`` (normalised), ignoring negated ones like "no nudity"."""
    norm = _normalise(text)
    negated_spans = {m.end() for m in _NEGATED.finditer(norm)}
    return [m.group(0) for m in _PATTERN.finditer(norm) if m.start() not in negated_spans]


def is_caption_safe(text: str) -> bool:
    """No explicit or sexualising word, and nothing the policy would block or soften (obfuscations too)."""
    if explicit_terms(text):
        return False
    decision = sanitize_general(text)
    return not decision.blocked and not decision.soft_blocked


def redact_explicit(text: str) -> str:
    """Drop explicit terms (not negated ones) from text bound for a moderated image prompt."""
    norm = unicodedata.normalize("NFKC", text)
    folded = norm.casefold()
    if len(folded) != len(norm):  # case folding changed lengths (rare scripts): match on the folded text
        norm = folded
    negated = {m.end() for m in _NEGATED.finditer(folded)}
    spans = [m.span() for m in _PATTERN.finditer(folded) if m.start() not in negated]
    for start, end in reversed(spans):
        norm = norm[:start] + norm[end:]
    return re.sub(r"\s+", " ", re.sub(r"\s+([,.;:])", r"\1", norm)).strip(" ,")
