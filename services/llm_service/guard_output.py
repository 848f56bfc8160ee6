"""Reading a Qwen3Guard-Gen answer, and keeping chat markup out of the text it judges. Pure functions.

The model card's format: the first line ``Safety: Safe|Unsafe|Controversial``, the second
``Categories: <comma-separated list>`` (``None`` when safe), and for response moderation a third line
``Refusal: Yes|No``. Anything the parser cannot read with certainty is ``unparsed``, which every caller
treats as a failed check (fail closed): two different ``Safety`` lines, no ``Safety`` line, a "Safe" that
names unsafe categories.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from shared.models import GUARD_CATEGORIES, GuardVerdict

# The categories the model card lists (prompt moderation adds Jailbreak). Others are dropped, not invented.
KNOWN_CATEGORIES = GUARD_CATEGORIES
_BY_KEY = {name.casefold(): name for name in KNOWN_CATEGORIES}

# Anchored at a line start (after optional markdown emphasis), so "Safety: Safe" quoted inside a longer
# sentence does not count as the answer.
_SAFETY = re.compile(r"^[\s*_]*safety\s*:\s*[*_]*\s*(safe|unsafe|controversial)\b", re.I | re.M)
_CATEGORIES = re.compile(r"^[\s*_]*categories\s*:(.*)$", re.I | re.M)
_REFUSAL = re.compile(r"^[\s*_]*refusal\s*:\s*[*_]*\s*(yes|no)\b", re.I | re.M)
# ChatML control tokens (<|im_start|>, <|im_end|>, ...): in judged text they could close the guard's turn
# and forge its answer, since the tokenizer reads them as control tokens wherever they appear.
_CONTROL = re.compile(r"<\|[^<>|\s]{1,64}\|>")


@dataclass(frozen=True, slots=True)
class GuardAssessment:
    verdict: GuardVerdict
    categories: tuple[str, ...] = ()
    refusal: bool | None = None


UNPARSED = GuardAssessment("unparsed")


def parse_guard_output(text: str) -> GuardAssessment:
    labels = {m.group(1).casefold() for m in _SAFETY.finditer(text)}
    if len(labels) != 1:
        return UNPARSED
    verdict: GuardVerdict = labels.pop()  # type: ignore[assignment]
    categories = _categories(text)
    if categories is None or (verdict == "safe" and categories):
        return UNPARSED
    refusals = {m.group(1).casefold() for m in _REFUSAL.finditer(text)}
    refusal = None if len(refusals) != 1 else refusals.pop() == "yes"
    return GuardAssessment(verdict, categories, refusal)


def _categories(text: str) -> tuple[str, ...] | None:
    """The named known categories, in order; () for none or "None"; None when two lines disagree."""
    lines = {m.group(1).strip(" *_.") for m in _CATEGORIES.finditer(text)}
    if len(lines) > 1:
        return None
    if not lines:
        return ()
    found: list[str] = []
    for part in lines.pop().split(","):
        name = _BY_KEY.get(part.strip(" *_.").casefold())
        if name is not None and name not in found:
            found.append(name)
    return tuple(found)


@functools.cache
def guard_answer_regex(kind: str) -> str:
    """The model card's answer format as a regex, for servers that constrain decoding to it (vLLM's
    ``structured_outputs``): "Safe" with no categories, or a verdict with known categories, and a refusal
    line when a response is judged. Everything it admits, ``parse_guard_output`` reads.

    The names go in unescaped: they hold no regex metacharacter (a test checks), and identity escapes such
    as ``\\&`` are errors in the stricter regex dialects a server's grammar engine may use.
    """
    names = "|".join(KNOWN_CATEGORIES)
    listed = f"({names})(, ({names}))*"
    verdict = f"(Safety: Safe\\nCategories: None|Safety: (Unsafe|Controversial)\\nCategories: {listed})"
    return verdict + ("\\nRefusal: (Yes|No)" if kind == "response" else "")


def neutralise_markup(text: str) -> str:
    """``text`` with chat control tokens defused, so it can only ever be content in the guard's prompt."""
    return _CONTROL.sub(lambda m: m.group(0).replace("|", "¦"), text)
