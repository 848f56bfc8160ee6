"""A small, local explicit-terms check for captions and moderated expansions.

The project's policy module (``shared.policy``) is written in parallel; everything here goes through
``is_caption_safe`` and ``redact_explicit`` so they can later delegate to it without touching callers.
Matching runs on NFKC + case-folded text and on word boundaries, so "Scunthorpe" or "therapist" pass.
"""

from __future__ import annotations

import re
import unicodedata

# Deliberately short: a second line of defence after the system prompt, not the policy engine.
_EXPLICIT_TERMS = (
    "nude",
    "nudes",
    "nudity",
    "naked",
    "topless",
    "bottomless",
    "porn",
    "porno",
    "pornographic",
    "nsfw",
    "xxx",
    "sex",
    "sexual",
    "sexy",
    "orgasm",
    "erotic",
    "genitals",
    "genitalia",
    "penis",
    "vagina",
    "nipple",
    "nipples",
    "boobs",
    "tits",
    "cum",
    "fetish",
    "bdsm",
    "undressed",
    "lingerie",
    "stripper",
    "blowjob",
    "handjob",
    "masturbate",
    "masturbating",
    "rape",
    "horny",
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
    return not explicit_terms(text)


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
