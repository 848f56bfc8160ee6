"""A persona's look in words: the one descriptor of selfie features that every prompt builder uses.

The profile worker paints the avatar from it and the LLM service fixes it into every chat image prompt and
reply, so the character in chat is described in exactly the words its avatar was made from. Each caller
keeps its own surrounding text (house style, instructions); only the features-to-words part lives here.
"""

from __future__ import annotations

import re

from shared.models import Features

__all__ = [
    "MAX_ACCESSORIES",
    "MAX_DESCRIPTOR_CHARS",
    "clean_trait",
    "describe_expression",
    "describe_persona",
    "hair_phrase",
    "persona_notes",
]

# More accessories add tokens, not likeness; the image model's text encoder has a token limit to share.
MAX_ACCESSORIES = 5
# Above what the Features field limits allow today, so it only bites if those limits grow; chat prompts
# put the descriptor first and must leave room for the scene within MAX_PROMPT_CHARS.
MAX_DESCRIPTOR_CHARS = 800

# The selfie model answers gender presentation with adjectives ("feminine", see its VQA prompt); a bare
# adjective reads as a dangling word in a prompt, so it gets a noun.
_ADJECTIVE_GENDERS = frozenset(
    {"feminine", "masculine", "androgynous", "non-binary", "nonbinary", "neutral", "female", "male"}
)
_NO_FACIAL_HAIR = frozenset({"none", "no", "no facial hair", "clean shaven", "clean-shaven"})
_NO_ACCESSORY = frozenset({"none", "no", "nothing"})
_GLASSES = frozenset({"glasses", "eyeglasses", "spectacles"})
_WS = re.compile(r"\s+")


def clean_trait(value: str | None) -> str | None:
    """A feature value as prompt text: printable, single-spaced, no stray punctuation; None if empty.

    Values come from a vision model's free text, so control characters or a trailing "." must not leak into
    the middle of a comma-separated prompt.
    """
    if value is None:
        return None
    text = _WS.sub(" ", "".join(c for c in value if c.isprintable())).strip(" ,.;")
    return text or None


def _strip_noun(value: str | None, noun: str) -> str | None:
    # The model sometimes answers "black hair" for a colour; the noun is added once, by the caller.
    if value is None:
        return None
    if value.lower() == noun:
        return None
    if value.lower().endswith(" " + noun):
        return value[: -len(noun) - 1].rstrip() or None
    return value


def _contains_words(haystack: str, needle: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", haystack, re.IGNORECASE) is not None


def _hair(features: Features) -> str | None:
    style = _strip_noun(clean_trait(features.hair_style), "hair")
    color = _strip_noun(clean_trait(features.hair_color), "hair")
    # A style such as "short brown" may already carry the colour; saying it twice reads as a typo.
    if style and color and _contains_words(style, color):
        color = None
    elif style and color and _contains_words(color, style):
        style = None
    words = " ".join(v for v in (style, color) if v)
    return f"{words} hair" if words else None


def hair_phrase(features: Features | None) -> str | None:
    """The persona's hair in words ("long wavy auburn hair"); None if unknown."""
    return _hair(features) if features is not None else None


def _gender(features: Features) -> str | None:
    gender = clean_trait(features.gender_presentation)
    if gender and gender.lower() in _ADJECTIVE_GENDERS:
        return f"{gender} person"
    return gender


def _age(features: Features) -> str | None:
    age = clean_trait(features.age_range)
    # "25-34" alone is an unexplained number in a prompt; a worded answer ("young adult") reads fine as is.
    if age and age[0].isdigit():
        return f"age {age}"
    return age


def _with_noun(value: str | None, noun: str) -> str | None:
    if value is None:
        return None
    stripped = _strip_noun(value, noun)
    return f"{stripped} {noun}" if stripped else None


def _facial_hair(features: Features) -> str | None:
    facial = clean_trait(features.facial_hair)
    if facial and facial.lower() in _NO_FACIAL_HAIR:
        return "clean-shaven"
    return facial


def _glasses(features: Features) -> str | None:
    # None means the model could not tell, so nothing is said; False is a real answer worth keeping.
    if features.glasses is True:
        return "wearing glasses"
    if features.glasses is False:
        return "no glasses"
    return None


def _accessories(features: Features) -> str | None:
    seen: set[str] = set()
    if features.glasses is True:
        seen |= _GLASSES
    items: list[str] = []
    for raw in features.accessories:
        item = clean_trait(raw)
        if not item or item.lower() in _NO_ACCESSORY or item.lower() in seen:
            continue
        seen.add(item.lower())
        items.append(item)
    items = items[:MAX_ACCESSORIES]
    return "wearing " + ", ".join(items) if items else None


def _phrases(features: Features | None) -> list[str]:
    """The persona's lasting traits as short phrases, in a fixed order; unknown traits are left out.

    The selfie's expression is not among them: it belongs to one photo, and a chat image that must "keep
    every trait" would otherwise smile at a funeral. See ``describe_expression``.
    """
    if features is None:
        return []
    candidates = (
        _gender(features),
        _age(features),
        _hair(features),
        _with_noun(clean_trait(features.eye_color), "eyes"),
        _with_noun(clean_trait(features.skin_tone), "skin"),
        _facial_hair(features),
        _glasses(features),
        _accessories(features),
    )
    phrases = [p for p in candidates if p]
    # Drop whole phrases from the end (least identifying first) rather than cut one mid-word.
    while phrases and len(", ".join(phrases)) > MAX_DESCRIPTOR_CHARS:
        phrases.pop()
    return phrases


def describe_persona(features: Features | None) -> str:
    """The appearance descriptor ("woman, age 25-34, long wavy auburn hair, ..."); "" if nothing is known."""
    return ", ".join(_phrases(features))


def describe_expression(features: Features | None) -> str:
    """The selfie's facial expression as a phrase ("smiling expression"); "" if unknown."""
    if features is None:
        return ""
    return _with_noun(clean_trait(features.expression), "expression") or ""


def persona_notes(features: Features | None) -> str | None:
    """The free-text description of the persona, cleaned; None if there is none."""
    return clean_trait(features.description) if features is not None else None
