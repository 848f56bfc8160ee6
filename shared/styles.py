"""The style presets a client may name on an image route (``style``), and the phrase each one adds.

One list for every route: the LLM expansion is told to render the preset's phrase (1:1, shorts, scenes),
and the routes without an LLM (private, general, profile) append it to the prompt. A closed list rather
than free text: a style is a prompt fragment, so free text would be a second, unmoderated prompt field.
"""

from __future__ import annotations

from typing import Literal, get_args

StyleName = Literal["photo", "cinematic", "portrait", "anime", "illustration", "watercolor", "3d", "film"]

STYLE_PHRASES: dict[str, str] = {
    "photo": "natural candid photograph, realistic lighting, sharp focus",
    "cinematic": "cinematic film still, dramatic lighting, shallow depth of field, wide aspect composition",
    "portrait": "studio portrait photograph, soft key light, 85mm lens, detailed skin texture",
    "anime": "anime illustration, clean line art, cel shading, vibrant colours",
    "illustration": "digital illustration, painterly brushwork, rich colours",
    "watercolor": "watercolour painting, soft washes, paper texture, gentle colours",
    "3d": "3D render, soft global illumination, stylised character, smooth materials",
    "film": "35mm film photograph, natural grain, muted colours, warm tones",
}

STYLE_NAMES: tuple[str, ...] = get_args(StyleName)
assert set(STYLE_NAMES) == set(STYLE_PHRASES), "every preset has exactly one phrase"


def style_phrase(style: str | None) -> str | None:
    """The phrase of a preset, or None when no style was asked for."""
    return STYLE_PHRASES[style] if style else None
