"""Word checks for captions and covered expansions.

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


def _word_pattern(terms: set[str]) -> re.Pattern[str]:
    words = sorted(terms, key=len, reverse=True)  # longest first: "in the nude" before "nude"
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(map(re.escape, words)) + r")(?![a-z0-9])")


def _negation(pattern: re.Pattern[str]) -> re.Pattern[str]:
    # "no nudity" is the coverage clause's own wording, not a request for nudity.
    return re.compile(r"(?<![a-z0-9])(?:no|without|never|non)[\s-]+(?=" + pattern.pattern + ")")


# A caption is held to more than a covered picture: words that only sexualise ("sexy", "lingerie") are not
# allowed in a caption either.
_CAPTION = _word_pattern({*EXPLICIT_TERMS, *SEXUALIZING_TERMS, *SEXUAL_ACT_TERMS, *SEXUAL_VIOLENCE_TERMS})
_CAPTION_NEGATED = _negation(_CAPTION)
# A covered picture may be sensual (lingerie, silk sheets): only exposure and sexual acts are removed.
_EXPOSURE = _word_pattern({*EXPLICIT_TERMS, *SEXUAL_ACT_TERMS})
_EXPOSURE_NEGATED = _negation(_EXPOSURE)


_EMPTY_PHRASE = re.compile(r"[,;:]\s*(?=[,.;:])")


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def explicit_terms(text: str) -> list[str]:
    """The terms a caption may not hold, found in ``text`` (normalised); negated ones ("no nudity") pass."""
    norm = _normalise(text)
    negated_spans = {m.end() for m in _CAPTION_NEGATED.finditer(norm)}
    return [m.group(0) for m in _CAPTION.finditer(norm) if m.start() not in negated_spans]


def is_caption_safe(text: str) -> bool:
    """No explicit or sexualising word, and nothing the policy would block or soften (obfuscations too)."""
    if explicit_terms(text):
        return False
    decision = sanitize_general(text)
    return not decision.blocked and not decision.soft_blocked


def redact_explicit(text: str) -> str:
    """Drop explicit and sexual-act terms (not negated ones) from text bound for a covered image prompt;
    sexualising words ("lingerie", "sensual") stay: coverage allows them."""
    norm = unicodedata.normalize("NFKC", text)
    folded = norm.casefold()
    if len(folded) != len(norm):  # case folding changed lengths (rare scripts): match on the folded text
        norm = folded
    negated = {m.end() for m in _EXPOSURE_NEGATED.finditer(folded)}
    spans = [m.span() for m in _EXPOSURE.finditer(folded) if m.start() not in negated]
    for start, end in reversed(spans):
        norm = norm[:start] + norm[end:]
    norm = re.sub(r"\s+([,.;:])", r"\1", norm)
    if spans:  # a phrase that was all explicit words leaves its separators behind: "silk sheets, , soft"
        norm = _EMPTY_PHRASE.sub("", norm)
    return re.sub(r"\s+", " ", norm).strip(" ,")
