"""Turn the VLM's answer into ``Features``: find the first JSON object, keep only clean values.

A model (or a random tiny one) can wrap JSON in code fences, add prose, repeat itself or emit bytes of
junk. Nothing here invents a value: a field the answer does not give cleanly stays ``None``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from shared.models import Features

_STRING_LIMITS: dict[str, int] = {
    name: next((m.max_length for m in field.metadata if hasattr(m, "max_length")), 64)
    for name, field in Features.model_fields.items()
    if field.annotation == (str | None)
}
_MAX_ACCESSORIES = 10
_ACCESSORY_CHARS = 64
# Answers that mean "no answer"; facial_hair "none" and accessories [] are real answers and kept.
_PLACEHOLDERS = frozenset(
    {
        "",
        "null",
        "none",
        "n/a",
        "na",
        "unknown",
        "unsure",
        "not visible",
        "not sure",
        "?",
        "-",
        "...",
        "string",
    }
)
_KEEP_NONE = frozenset({"facial_hair"})
_TRUE = frozenset({"true", "yes", "y", "1", "wearing glasses", "glasses"})
_FALSE = frozenset({"false", "no", "n", "0", "none", "no glasses"})
# Letters (any script), digits, spaces and the punctuation a description uses.
_ALLOWED = re.compile(r"[\w\s\-'/,.;:()&+%]", re.UNICODE)
_KEY_ALIASES = {
    "hair_colour": "hair_color",
    "eye_colour": "eye_color",
    "hair": "hair_color",
    "age": "age_range",
    "gender": "gender_presentation",
    "skin": "skin_tone",
    "skin_color": "skin_tone",
    "skin_colour": "skin_tone",
    "beard": "facial_hair",
    "eyeglasses": "glasses",
    "wears_glasses": "glasses",
}


def find_json_object(text: str) -> dict[str, Any] | None:
    """The first ``{...}`` in the text that decodes to a JSON object; fences and prose around it pass."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = _lenient(text, start, decoder)
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def _lenient(text: str, start: int, decoder: json.JSONDecoder) -> Any:
    """Second chance for the two slips models make most: trailing commas and a missing closing brace."""
    end = text.find("}", start)
    candidate = text[start : end + 1] if end != -1 else text[start:].rstrip().rstrip("`").rstrip() + "}"
    candidate = re.sub(r",\s*([}\]])", r"\1", candidate)
    try:
        return decoder.decode(candidate)
    except json.JSONDecodeError:
        return None


def clean_text(value: Any, limit: int) -> str | None:
    """A short human-readable string, or ``None`` when the value is junk or a placeholder."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = unicodedata.normalize("NFKC", str(value))
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs", "Cn") and ch not in "\t\n" for ch in text):
        return None
    text = " ".join(text.split()).strip(" ,;:")
    if text.lower() in _PLACEHOLDERS:
        return None
    if not any(ch.isalpha() for ch in text) and not re.fullmatch(r"\d{1,3}(\s*[-–]\s*\d{1,3})?\+?", text):
        return None
    allowed = sum(1 for ch in text if _ALLOWED.match(ch))
    if allowed < 0.95 * len(text):
        return None
    if _is_repetitive(text):
        return None
    if len(text) > limit:
        cut = text[:limit].rsplit(" ", 1)[0]
        text = cut if len(cut) >= limit // 2 else text[:limit]
    return text


def _is_repetitive(text: str) -> bool:
    """Degenerate generation: the same word over and over ("brown brown brown brown")."""
    words = text.lower().split()
    return len(words) >= 4 and len(set(words)) <= len(words) // 3


def clean_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def clean_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        if value.strip().lower() in _PLACEHOLDERS:
            return []
        value = re.split(r"[,;]", value)
    if not isinstance(value, list):
        return None
    items: list[str] = []
    for item in value:
        text = clean_text(item, _ACCESSORY_CHARS)
        if text and text.lower() not in {i.lower() for i in items}:
            items.append(text)
    return items[:_MAX_ACCESSORIES]


def normalise(raw: dict[str, Any]) -> tuple[Features, int]:
    """(features, number of fields that held a usable value)."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _KEY_ALIASES.get(str(key).strip().lower().replace(" ", "_"), str(key).strip().lower())
        if name in values or name not in Features.model_fields:
            continue
        if name == "glasses":
            cleaned: Any = clean_bool(value)
        elif name == "accessories":
            cleaned = clean_list(value)
        else:
            cleaned = clean_text(value, _STRING_LIMITS[name])
            said_none = isinstance(value, str) and value.strip().lower() == "none"
            if cleaned is None and name in _KEEP_NONE and said_none:
                cleaned = "none"
        if cleaned is not None:
            values[name] = cleaned
    # An empty accessories list is an answer, but alone it does not make the whole answer usable.
    usable = sum(1 for v in values.values() if v not in (None, []))
    return Features(**values), usable


def parse_features(text: str) -> tuple[Features, bool]:
    """(features, parsed). ``parsed`` is False when no JSON object with one usable field was found."""
    raw = find_json_object(text or "")
    if raw is None:
        return Features(), False
    features, usable = normalise(raw)
    if usable == 0:
        return Features(), False
    return features, True
