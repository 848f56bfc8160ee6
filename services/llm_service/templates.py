"""Labelled template answers, used only when ``LLM_TEMPLATE_FALLBACK`` is on and the model is down or junk.

Every response built here says ``source="template"``; the service never passes them off as model output.
"""

from __future__ import annotations

import hashlib

from services.llm_service.prompts import ExpandKind, applied_coverage
from services.llm_service.safety import redact_explicit
from services.llm_service.shortening import keyword_shorten
from shared.models import CoverageReason
from shared.styles import style_phrase

TEMPLATE_SCENE_TAIL = "natural light, detailed, high quality photo"

# Fixed, safe captions (11-13 words each): nothing from the prompt is echoed, so nothing unsafe can leak.
TEMPLATE_CAPTIONS = (
    "A fresh moment from our chat, captured just for you right now.",
    "Here is a little snapshot of what we were just talking about.",
    "Just a quick picture to go with our conversation today, hope you like it.",
    "A small scene from our chat, shared with a smile and good vibes.",
)


def template_scene(
    kind: ExpandKind,
    message: str,
    *,
    max_words: int,
    style: str | None = None,
    coverage: CoverageReason | None = None,
) -> str:
    """The user's own keywords plus a generic tail, or the style preset's phrase in its place: the generic
    tail says "photo", which would contradict an anime or watercolour preset. A covered expansion loses its
    explicit words, as the model's does; a neutral one keeps the message's words as written."""
    scene = keyword_shorten(message, max_words)
    if applied_coverage(kind, coverage):
        scene = redact_explicit(scene)
    tail = style_phrase(style) or TEMPLATE_SCENE_TAIL
    return f"{scene}, {tail}" if scene else tail


def template_caption(prompt: str) -> str:
    """Deterministic per prompt, so a retry of the same request gets the same caption."""
    index = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:4], "big")
    return TEMPLATE_CAPTIONS[index % len(TEMPLATE_CAPTIONS)]
