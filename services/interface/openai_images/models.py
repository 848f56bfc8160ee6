"""The OpenAI Images API's request and response bodies, as far as img_pod speaks them.

The request model is explicit about every field an OpenAI SDK can send: each is either used, accepted and
ignored (it changes nothing here, and refusing it would break clients that always send it), or refused
with a 400 naming it (it asks for something this deployment cannot do). Anything else is an unknown
parameter, refused the same way. README.md, "OpenAI-compatible images", has the table.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from shared.image_params import GuidanceScale, PartialImages, Steps
from shared.models import NonEmptyPrompt, PersonaId, Seed, StrictModel

DEFAULT_MODEL = "img-pod-general"
_SIZE = re.compile(r"(\d{2,4})x(\d{2,4})")
# The sides the native routes accept (shared/models.py ``Side``); the deployment's own limits come after.
MIN_SIDE, MAX_SIDE, SIDE_STEP = 16, 2048, 16
Text = Annotated[str, Field(max_length=256)]


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``WIDTHxHEIGHT`` as two sides, or None for the workers' default (``auto`` or no size)."""
    if size is None or size == "auto":
        return None
    match = _SIZE.fullmatch(size)
    if match is None:
        raise ValueError("must be WIDTHxHEIGHT (for example 512x512) or auto")
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE or side % SIDE_STEP:
            raise ValueError(f"sides must be {MIN_SIDE} to {MAX_SIDE} in multiples of {SIDE_STEP}")
    return width, height


class _ImageRequest(StrictModel):
    """The fields generations and edits share."""

    prompt: NonEmptyPrompt
    model: Annotated[str, Field(max_length=64)] = DEFAULT_MODEL
    # The upper bound is a setting (INTERFACE_OPENAI_MAX_N), checked by the route.
    n: Annotated[int, Field(ge=1)] | None = None
    size: Annotated[str, Field(max_length=16)] | None = None
    response_format: Literal["b64_json", "url"] | None = None
    # With ``stream``: partial images of the first image, decoded from the denoising as it goes (fewer when
    # the model runs fewer steps than that; the API allows it). Without ``stream``: accepted, unused.
    partial_images: PartialImages | None = None
    # Accepted and ignored: who the end user is (img_pod's logs carry the request id instead).
    user: Text | None = None
    safety_identifier: Text | None = None
    # Accepted and ignored: the model's own steps decide quality.
    quality: Literal["auto", "standard", "hd", "low", "medium", "high", "xhigh", "max"] | None = None
    # The workers paint opaque PNGs: anything else is refused by these literals.
    background: Literal["auto", "opaque"] | None = None
    output_format: Literal["png"] | None = None
    output_compression: Annotated[int, Field(ge=0, le=100)] | None = None
    # img_pod's own knobs, sent by the SDK through ``extra_body``; bounds as on the native routes, then the
    # deployed workers' limits. ``guidance`` is the native ``guidance_scale``; ``strength`` how far an image
    # may move from the one it starts from, (0, 1]: the workers' default when absent.
    seed: Seed | None = None
    steps: Steps | None = None
    guidance: GuidanceScale | None = None
    strength: Annotated[float, Field(gt=0.0, le=1.0)] | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        parse_size(value)
        return value

    @property
    def dimensions(self) -> tuple[int, int] | None:
        return parse_size(self.size)


class ImageGenerationRequest(_ImageRequest):
    stream: bool | None = None
    # Accepted and ignored: the prompt decides style.
    style: Literal["vivid", "natural"] | None = None
    # The model id decides moderation (img-pod-private is the unmoderated one), never the client.
    moderation: Literal["auto", "low"] | None = None
    # A stored persona (POST /v1/personas) of the same key, for the chat models: its features, and its
    # approved avatar as the start image (the appearance lock).
    persona_id: PersonaId | None = None


class ImageEditRequest(_ImageRequest):
    """The form fields of ``POST /v1/images/edits`` besides the image."""

    # Streamed edits are not served here: refused by this literal (false is accepted).
    stream: Literal[False] | None = None
    # How closely the edit follows the input: ``strength`` says it here.
    input_fidelity: Literal["low", "high"] | None = None


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    # The prompt the image was made from, when the LLM wrote it (img-pod-shorts, img-pod-scenes).
    revised_prompt: str | None = None


class InputTokensDetails(BaseModel):
    text_tokens: int = 0
    image_tokens: int = 0


class ImageUsage(BaseModel):
    # Tokens of the prompt(s) as the image model's text encoder saw them; images cost no tokens here.
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of_prompt_tokens(cls, tokens: int) -> ImageUsage:
        return cls(
            input_tokens=tokens,
            input_tokens_details=InputTokensDetails(text_tokens=tokens),
            total_tokens=tokens,
        )


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    size: str | None = None
    output_format: Literal["png"] = "png"
    usage: ImageUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "img-pod"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
