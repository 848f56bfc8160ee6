"""The avatar prompt the profile worker builds from selfie features, so every client gets one house style."""

from __future__ import annotations

from shared.models import Features

DEFAULT_STYLE = "photorealistic portrait, soft studio lighting, sharp focus, neutral background, 85mm"


def describe_person(features: Features) -> str:
    """A compact appearance description; unknown traits are left out rather than guessed."""
    parts: list[str] = []
    who = features.gender_presentation or "person"
    parts.append(f"a {features.age_range} {who}" if features.age_range else f"a {who}")
    if features.hair_color or features.hair_style:
        hair = " ".join(p for p in (features.hair_color, features.hair_style) if p)
        parts.append(f"{hair} hair")
    if features.eye_color:
        parts.append(f"{features.eye_color} eyes")
    if features.skin_tone:
        parts.append(f"{features.skin_tone} skin")
    if features.facial_hair and features.facial_hair.lower() not in ("none", "no"):
        parts.append(features.facial_hair)
    if features.glasses:
        parts.append("wearing glasses")
    if features.expression:
        parts.append(f"{features.expression} expression")
    if features.accessories:
        parts.append("with " + ", ".join(features.accessories[:5]))
    return ", ".join(parts)


def build_profile_prompt(features: Features, style: str | None) -> str:
    return f"{style.strip() if style and style.strip() else DEFAULT_STYLE}, {describe_person(features)}"
