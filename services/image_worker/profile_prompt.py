"""The avatar prompt the profile worker builds from selfie features, so every client gets one house style."""

from __future__ import annotations

from shared.models import Features
from shared.persona import describe_expression, describe_persona

DEFAULT_STYLE = "photorealistic portrait, soft studio lighting, sharp focus, neutral background, 85mm"
# With no trait known the portrait still needs a subject, or the prompt describes only a studio.
UNKNOWN_SUBJECT = "a person"


def build_profile_prompt(features: Features, style: str | None) -> str:
    parts = [style.strip() if style and style.strip() else DEFAULT_STYLE]
    parts.append(describe_persona(features) or UNKNOWN_SUBJECT)
    # The expression belongs to the selfie this portrait is made from, so the avatar keeps it; chat images
    # get only the shared descriptor, which leaves it out.
    if expression := describe_expression(features):
        parts.append(expression)
    return ", ".join(parts)
