"""A labelled stand-in persona built from the brief, used only when ``LLM_TEMPLATE_FALLBACK`` is on and the
model is down or wrote no usable persona. The caller labels it ``source="template"`` and checks it with the
same word rules as a model answer: the brief's words are in it.
"""

from __future__ import annotations

import hashlib
import re

from shared.models import (
    MAX_PERSONA_TEXT_CHARS,
    PERSONA_MAX_AGE,
    PERSONA_MIN_AGE,
    Features,
    PersonaDraft,
)

# Plain first names, picked by the brief's hash so the same brief gets the same stand-in.
TEMPLATE_NAMES = ("Alex", "Sam", "Robin", "Jordan", "Maya", "Leo", "Noa", "Iris")
TEMPLATE_AGE = 30
TEMPLATE_SPEAKING_STYLE = "Warm and natural, in short, friendly sentences."
# "a 35 year old", "35-year-old", "35 yo", "aged 35": an age the brief states; used only when adult.
_STATED_AGE = re.compile(r"\b(\d{2,3})\s*-?\s*(?:years?|yrs?|yo)\b|\baged?\s+(\d{2,3})\b", re.IGNORECASE)
_PERSONALITY = "A character written from this brief: "
_DESCRIPTION_CHARS = 400  # Features.description's bound


def stated_adult_age(brief: str) -> int | None:
    """The first age the brief states, when it is an adult's; None otherwise."""
    match = _STATED_AGE.search(brief)
    if match is None:
        return None
    age = int(match.group(1) or match.group(2))
    return age if PERSONA_MIN_AGE <= age <= PERSONA_MAX_AGE else None


def template_persona(brief: str) -> PersonaDraft:
    index = int.from_bytes(hashlib.sha256(brief.encode("utf-8")).digest()[:4], "big")
    age = stated_adult_age(brief) or TEMPLATE_AGE
    room = MAX_PERSONA_TEXT_CHARS - len(_PERSONALITY)
    return PersonaDraft(
        name=TEMPLATE_NAMES[index % len(TEMPLATE_NAMES)],
        age=age,
        # The brief is the look's only source here; the profile worker draws from the description.
        features=Features(age_range=f"around {age}", description=brief[:_DESCRIPTION_CHARS]),
        personality=_PERSONALITY + brief[:room],
        speaking_style=TEMPLATE_SPEAKING_STYLE,
    )
