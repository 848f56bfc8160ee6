"""Settings of the Z-Image engine shared by the profile, chat1to1, shorts and scenes workers (``IMAGE_``)."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.image_worker.batch_policy import DEFAULT_MAX_BATCH_BY_PIXELS
from services.image_worker.output_safety import blocking_thresholds, refuse_non_exposed
from shared.image_params import MAX_GUIDANCE, MAX_IMAGES, MAX_STEPS
from shared.roles import RoleName
from shared.settings import Revision, ServiceSettings

# A worker's role picks its own route (besides /v1/generate); the policy of each role is in shared/roles.py.
Role = RoleName
UnitScore = Annotated[float, Field(ge=0.0, le=1.0)]


def _json_object(value: Any) -> Any:
    # deploy.env's empty "KEY=" means the default, not a JSON error.
    if isinstance(value, str):
        return json.loads(value) if value.strip() else {}
    return value


class ImageSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGE_", extra="ignore", validate_default=True)
    yaml_section: ClassVar[str] = "image"

    role: Role = "general"
    model_id: str = "Tongyi-MAI/Z-Image-Turbo"
    # A hub commit (or tag) pinned for both ``scripts/fetch_models.py`` and loading; empty: the main branch.
    model_revision: Revision = None
    # The name responses and /healthz use; empty: the hub id, or a local path's last component.
    served_model_name: str | None = None
    # "auto": every CUDA device if any, else one CPU pipeline. "cuda:0,cuda:1" or "cpu,cpu" to choose.
    devices: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    default_width: int = Field(1024, ge=16, multiple_of=16)
    default_height: int = Field(1024, ge=16, multiple_of=16)
    max_side: int = Field(2048, ge=16, multiple_of=16)
    max_pixels: int = Field(2048 * 2048, ge=256)
    # Turbo is distilled for 8 evaluations without classifier-free guidance.
    default_steps: int = Field(8, ge=1, le=MAX_STEPS)
    max_steps: int = Field(MAX_STEPS, ge=1, le=MAX_STEPS)
    default_guidance: float = Field(0.0, ge=0.0, le=MAX_GUIDANCE)
    # Any guidance above 0 runs the transformer twice per step; 0 here refuses guided requests altogether.
    max_guidance: float = Field(MAX_GUIDANCE, ge=0.0, le=MAX_GUIDANCE)
    max_sequence_length: int = Field(512, ge=16, le=4096)

    # The most images one pipeline call holds, whatever the size; the table below lowers it by size.
    max_batch: int = Field(4, ge=1, le=64)
    # Largest batch per image size: {max pixels: images}; the first row whose bound covers width x height
    # applies, and larger images run one per call. JSON in the environment: '{"262144": 4, "1048576": 1}'.
    max_batch_by_pixels: dict[int, int] = Field(default_factory=lambda: dict(DEFAULT_MAX_BATCH_BY_PIXELS))
    batch_wait_ms: float = Field(5.0, ge=0.0, le=1000.0)
    # Requests one worker holds at once (waiting or running); past it the worker answers 429 + Retry-After.
    queue_limit: int = Field(64, ge=1)
    warmup: bool = True
    # Sizes ("1024x1024,768x1344") warmed up with one 1-step image each before /healthz says ok, so no
    # client's first request at a size pays for kernel selection (and compilation with ``compile``).
    # Empty: the default size only. Ignored when ``warmup`` is off.
    warmup_sizes: str = ""
    # A diffusers attention backend (diffusers' AttentionBackendName: "native", "flash", "_native_cudnn",
    # "sage", ...); empty: the library default (PyTorch scaled_dot_product_attention).
    attention_backend: str | None = None
    # torch.compile each repeated transformer block (regional compilation: the 34 blocks share a few block
    # graphs instead of one whole-model graph); the warm-up sizes pay the compile time at start.
    compile: bool = False
    # VAE decoding in tiles for images whose longer side is over this (px), bounding decoder memory at
    # large sizes; 0: never.
    vae_tiling_above: int = Field(1024, ge=0)
    # A caller waiting longer than this gets a 504; the pipeline call itself cannot be interrupted.
    inference_timeout_s: float = Field(300.0, gt=0)
    # "auto": check generated images on the routes whose role asks for it (shared/roles.py: general, shorts,
    # scenes); "on": on every route; "off": never.
    output_safety: Literal["auto", "on", "off"] = "auto"
    # The detector score from which an exposed class withholds an image; the classes that block by default
    # (output_safety.BLOCKING_BY_DEFAULT: nipples, genitals, anus) use it unless listed below. Covered
    # classes never block. Why 0.45: DEPLOYMENT.md, "The pixel check".
    output_safety_threshold: float = Field(0.45, ge=0.0, le=1.0)
    # Per exposed class, its own score; a class listed here blocks even if not blocking by default. JSON in
    # the environment: '{"ANUS_EXPOSED": 0.4, "BUTTOCKS_EXPOSED": 0.7}'. Empty: every default class at
    # output_safety_threshold. A covered or unknown class refuses to start.
    output_safety_thresholds: Annotated[dict[str, UnitScore], NoDecode, BeforeValidator(_json_object)] = (
        Field(default_factory=dict)
    )
    # Empty: the detector bundled with nudenet.
    output_safety_model: str = ""

    # Image-to-image (a request with ``init_image``, e.g. a persona's avatar): the strength used when the
    # request gives none. Per role, since a worker pod is one role: lower keeps more of the start image
    # (a face, an outfit), higher follows the prompt more. Suggested values: DEPLOYMENT.md, "Image to image".
    img2img_strength: float = Field(0.6, gt=0.0, le=1.0)
    # The strengths a request may ask for (422 naming ``strength`` outside); on /healthz ``limits``.
    img2img_min_strength: float = Field(0.1, gt=0.0, le=1.0)
    img2img_max_strength: float = Field(1.0, gt=0.0, le=1.0)
    # The start image's limits, on its decoded bytes (413 over) and header pixel count (413 over); a
    # process-wide budget of twice the pixel limit bounds concurrent decodes.
    init_image_max_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    init_image_max_pixels: int = Field(4096 * 4096, ge=256)
    # A request with a start image is JSON with the image in base64 (4/3 of its bytes): the body limits of
    # every service (2 MiB, 1 MiB for JSON) would refuse an avatar, so this worker takes up to 6 MiB.
    max_body_bytes: int = Field(6 * 1024 * 1024, ge=1024)
    max_json_bytes: int = Field(6 * 1024 * 1024, ge=1024)

    @field_validator("output_safety_thresholds")
    @classmethod
    def _exposed_classes_only(cls, value: dict[str, float]) -> dict[str, float]:
        refuse_non_exposed(value)
        return value

    @property
    def output_safety_blocking(self) -> dict[str, float]:
        """Exposed class -> the detector score from which it withholds an image."""
        return blocking_thresholds(self.output_safety_threshold, self.output_safety_thresholds)

    @field_validator("attention_backend")
    @classmethod
    def _known_attention_backend(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        # Imported only when a backend is set: diffusers takes seconds to import.
        from diffusers.models.attention_dispatch import AttentionBackendName

        name = value.strip().lower()
        known = sorted(b.value for b in AttentionBackendName)
        if name not in known:
            raise ValueError(f"unknown attention backend {value!r}; diffusers offers: {', '.join(known)}")
        return name

    @property
    def warmup_shapes(self) -> list[tuple[int, int]]:
        """(width, height) of each warm-up image: the default size, then ``warmup_sizes`` in order."""
        shapes = [(self.default_width, self.default_height)]
        for part in self.warmup_sizes.replace(" ", "").split(","):
            if part:
                width, _, height = part.lower().partition("x")
                shape = (int(width), int(height))
                if shape not in shapes:
                    shapes.append(shape)
        return shapes

    @model_validator(mode="after")
    def _defaults_within_bounds(self) -> ImageSettings:
        for side in (self.default_width, self.default_height):
            if side > self.max_side:
                raise ValueError(f"default size {side} is over max_side {self.max_side}")
        if self.default_steps > self.max_steps:
            raise ValueError("default_steps is over max_steps")
        if self.default_guidance > self.max_guidance:
            raise ValueError("default_guidance is over max_guidance")
        if not self.img2img_min_strength <= self.img2img_strength <= self.img2img_max_strength:
            raise ValueError("img2img_strength must lie within [img2img_min_strength, img2img_max_strength]")
        if self.drain_timeout_s < self.inference_timeout_s:
            raise ValueError("drain_timeout_s must be at least inference_timeout_s")
        self._warmup_sizes_valid()
        for pixels, batch in self.max_batch_by_pixels.items():
            if pixels < 256 or batch < 1:
                raise ValueError(f"max_batch_by_pixels row {pixels}: {batch} needs pixels >= 256, batch >= 1")
        return self

    def _warmup_sizes_valid(self) -> None:
        for part in self.warmup_sizes.replace(" ", "").split(","):
            if not part:
                continue
            width, sep, height = part.lower().partition("x")
            if not (sep and width.isdigit() and height.isdigit()):
                raise ValueError(f"warmup_sizes entry {part!r} is not WIDTHxHEIGHT")
            w, h = int(width), int(height)
            if w % 16 or h % 16 or max(w, h) > self.max_side or w * h > self.max_pixels or min(w, h) < 16:
                raise ValueError(
                    f"warmup size {part} is not a size this worker serves (multiples of 16, sides up to "
                    f"{self.max_side}, up to {self.max_pixels} pixels)"
                )

    @property
    def max_n(self) -> int:
        """Images per request: all of them go in one pipeline call, so never more than a batch holds."""
        return min(MAX_IMAGES, self.max_batch)
