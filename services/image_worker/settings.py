"""Settings of the Z-Image engine shared by the profile, chat1to1, shorts and scenes workers (``IMAGE_``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.image_params import MAX_GUIDANCE, MAX_IMAGES, MAX_STEPS
from shared.roles import RoleName
from shared.settings import ServiceSettings

# A worker's role picks its own route (besides /v1/generate); the policy of each role is in shared/roles.py.
Role = RoleName


class ImageSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGE_", extra="ignore", validate_default=True)
    yaml_section: ClassVar[str] = "image"

    role: Role = "general"
    model_id: str = "Tongyi-MAI/Z-Image-Turbo"
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

    max_batch: int = Field(4, ge=1, le=64)
    batch_wait_ms: float = Field(5.0, ge=0.0, le=1000.0)
    # Requests one worker holds at once (waiting or running); past it the worker answers 429 + Retry-After.
    queue_limit: int = Field(64, ge=1)
    warmup: bool = True
    attention_backend: str | None = None
    compile: bool = False
    # A caller waiting longer than this gets a 504; the pipeline call itself cannot be interrupted.
    inference_timeout_s: float = Field(300.0, gt=0)
    # "auto": check generated images on the routes whose role asks for it (shared/roles.py: general, shorts,
    # scenes); "on": on every route; "off": never.
    output_safety: Literal["auto", "on", "off"] = "auto"
    output_safety_threshold: float = Field(0.45, ge=0.0, le=1.0)
    # Empty: the detector bundled with nudenet.
    output_safety_model: str = ""

    @model_validator(mode="after")
    def _defaults_within_bounds(self) -> ImageSettings:
        for side in (self.default_width, self.default_height):
            if side > self.max_side:
                raise ValueError(f"default size {side} is over max_side {self.max_side}")
        if self.default_steps > self.max_steps:
            raise ValueError("default_steps is over max_steps")
        if self.default_guidance > self.max_guidance:
            raise ValueError("default_guidance is over max_guidance")
        if self.drain_timeout_s < self.inference_timeout_s:
            raise ValueError("drain_timeout_s must be at least inference_timeout_s")
        return self

    @property
    def max_n(self) -> int:
        """Images per request: all of them go in one pipeline call, so never more than a batch holds."""
        return min(MAX_IMAGES, self.max_batch)
