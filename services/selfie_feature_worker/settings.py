"""Settings of the selfie feature worker (env prefix ``SELFIE_``, YAML section ``selfie``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from shared.models import MAX_IDENTITY_CANDIDATES
from shared.settings import Revision, ServiceSettings, StrList
from shared.ultralytics_env import DEFAULT_CONFIG_DIR

DetectorBackend = Literal["yolo", "haar"]
Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
IdentityEmbedder = Literal["vlm", "off"]

# A compare request: one reference and the candidates, plus the JSON around their base64.
IDENTITY_MAX_IMAGES = 1 + MAX_IDENTITY_CANDIDATES
IDENTITY_JSON_OVERHEAD = 4096

# The specified detector: lindevs' YOLOv8n-Face, release 1.0.1 (the 2024-11-01 re-save). The URL names the
# release, not "latest", so the pinned sha256 (published in that repository's README) keeps matching.
# DEPLOYMENT.md, "Face detector weights", has the source, the licence and how to pin other weights.
YOLOV8_FACE_URL = "https://github.com/lindevs/yolov8-face/releases/download/1.0.1/yolov8n-face-lindevs.pt"
YOLOV8_FACE_SHA256 = "b038ca653b503453a94f6e12d76feca6840b2a97d7a1322b4498c5e922f29832"
# /workspace is a RunPod pod's persistent volume: the weights survive a pod restart.
DEFAULT_DETECTOR_WEIGHTS = "/workspace/models/yolov8n-face-lindevs.pt"

# nudenet's bundled detector: a YOLOv8 ONNX export whose classes include faces. Chosen with
# ``detector_weights="nudenet"``, or the fallback when the YOLOv8-face weights are missing or do not load.
NUDENET_WEIGHTS = "nudenet"
NUDENET_FACE_CLASSES = ["FACE_FEMALE", "FACE_MALE"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_URL_SCHEMES = ("https://", "http://", "file://")


class SelfieSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SELFIE_", extra="ignore", validate_default=True)
    yaml_section: ClassVar[str] = "selfie"

    # An upload is one image plus multipart framing; the image limit below is the one that matters.
    max_body_bytes: int = Field(11 * 1024 * 1024, ge=1024)

    # --- face detection ---
    detector_backend: DetectorBackend = "yolo"
    # The YOLOv8-face .pt the worker loads, fetched there at deploy time (scripts/fetch_models.py); "nudenet"
    # picks nudenet's bundled 320n.onnx instead. Empty means the default.
    detector_weights: str = DEFAULT_DETECTOR_WEIGHTS
    # Where the deploy step downloads detector_weights from when the file is missing (https, http or file).
    detector_weights_url: str = YOLOV8_FACE_URL
    # The sha256 the weights must have: checked at deploy time before they are installed (a .pt is a pickle,
    # so unverified weights are code). Empty: nothing is installed; the fetch prints the hash to pin.
    detector_weights_sha256: str = YOLOV8_FACE_SHA256
    # When the weights are missing or fail to load, run nudenet's detector (named "nudenet-fallback" in every
    # response and /healthz, with a start-up warning) instead of failing to start.
    detector_fallback: bool = True
    # Classes kept as faces; empty keeps every class. Unset: every class for the YOLOv8-face model (it has
    # one), nudenet's two face classes for nudenet. The fallback always uses nudenet's face classes.
    face_classes: StrList | None = None
    detector_confidence: float = Field(0.35, ge=0.0, le=1.0)
    # Inference size; 0 lets the model decide (an ONNX export has a fixed one: nudenet's is 320).
    detector_imgsz: int = Field(0, ge=0, le=4096)
    yolo_config_dir: Path = DEFAULT_CONFIG_DIR

    # --- vision-language model ---
    vlm_model: str = "Qwen/Qwen2-VL-7B-Instruct"
    # The hub revision of vlm_model, for the fetch and loading alike.
    vlm_revision: Revision = None
    device: Device = "auto"
    dtype: DType = "auto"
    # Caps the visual tokens per image (pixels / 28^2): the 7B model's default runs out of memory.
    vlm_min_pixels: int = Field(56 * 56, ge=28 * 28)
    vlm_max_pixels: int = Field(448 * 448, ge=56 * 56)
    max_new_tokens: int = Field(200, ge=8, le=1024)
    # Extra context around the detected face, as a fraction of the box size on each side.
    crop_margin: float = Field(0.4, ge=0.0, le=2.0)

    # --- back-pressure ---
    # Analyses at once; each holds its upload decoded at most decode_max_side (~17 MB as Pillow RGB at 2048),
    # and their full-size decodes share decode_pixel_budget.
    # Also advertised as ``concurrency`` on /healthz, so the interface sizes its per-worker budget to it.
    max_concurrent: int = Field(2, ge=1, le=64)
    # Requests that may wait for a free analysis; beyond it the worker answers 429 with Retry-After at once.
    queue_limit: int = Field(4, ge=0, le=1024)

    # --- uploads ---
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=64 * 64)
    # Uploads are analysed at most this many pixels on the long side (JPEG decodes at a reduced DCT scale,
    # other formats shrink right after decoding); boxes and landmarks are answered in the upload's pixels.
    # Detection runs at 320-640 px and the VLM sees at most vlm_max_pixels, so more only costs memory.
    decode_max_side: int = Field(2048, ge=256, le=16384)
    # Pixels the worker's concurrent decodes may hold at once, whatever the number of analyses: enough for
    # one upload at max_pixels plus small ones. A decode larger than all of it runs alone.
    decode_pixel_budget: int = Field(48_000_000, ge=1_000_000)
    # How long a decode waits for room in that budget before the request gets 429 with Retry-After.
    decode_wait_timeout_s: float = Field(30.0, gt=0)
    # After a large decode, once none is running, hand freed memory back to the OS (glibc's malloc_trim; a
    # no-op elsewhere). Without it RSS stays near the burst's peak, which is what an OOM killer reads.
    decode_trim_heap: bool = True

    # --- identity score (POST /v1/identity/compare) ---
    # What embeds a face crop: "vlm" is the loaded Qwen2-VL's vision tower (no extra weights); "off" makes
    # the route answer 503. A dedicated face-recognition model would be one more value here.
    identity_embedder: IdentityEmbedder = "vlm"
    # Whether the scores mean anything, as every response says. Unset: false when the VLM folder was built
    # by shared/tiny_models (random weights by construction), true otherwise. Set it to override either way.
    identity_meaningful: bool | None = None
    # Face crops are squared, widened by this fraction of the face box on each side and resized to
    # identity_crop_side before embedding: one fixed patch grid, so every face is embedded alike.
    identity_crop_margin: float = Field(0.15, ge=0.0, le=1.0)
    identity_crop_side: int = Field(224, ge=56, le=896, multiple_of=28)
    # Per image (the reference and each candidate), on the decoded bytes and the header's pixel count.
    # Five maximal images in base64 must fit in max_json_bytes (checked below).
    identity_max_image_bytes: int = Field(1536 * 1024, ge=1024)
    identity_max_image_pixels: int = Field(4096 * 4096, ge=64 * 64)
    # The detector works at 320-640 px and the crop is embedded at identity_crop_side: more is memory only.
    identity_decode_max_side: int = Field(1024, ge=256, le=16384)
    # A compare request is JSON with up to five images in base64 (4/3 of their bytes); the 1 MiB JSON limit of
    # every service would refuse one avatar.
    max_json_bytes: int = Field(11 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _compare_request_fits_the_body_limits(self) -> SelfieSettings:
        # A request within the per-image limits must never be refused by the body limit instead, which
        # could not say which image is too large. Off, the route takes no images: nothing to fit.
        if self.identity_embedder == "off":
            return self
        largest = IDENTITY_MAX_IMAGES * (-(-self.identity_max_image_bytes // 3) * 4) + IDENTITY_JSON_OVERHEAD
        if largest > min(self.max_body_bytes, self.max_json_bytes):
            raise ValueError(
                f"{IDENTITY_MAX_IMAGES} images of identity_max_image_bytes in base64 ({largest} bytes) "
                "do not fit in max_json_bytes and max_body_bytes"
            )
        return self

    @field_validator("detector_weights", mode="before")
    @classmethod
    def _default_weights_when_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return DEFAULT_DETECTOR_WEIGHTS
        return value.strip() if isinstance(value, str) else value

    @field_validator("detector_weights_url")
    @classmethod
    def _known_url_scheme(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(_URL_SCHEMES):
            raise ValueError(f"detector_weights_url must start with one of {', '.join(_URL_SCHEMES)}")
        return value

    @field_validator("detector_weights_sha256")
    @classmethod
    def _hex_sha256(cls, value: str) -> str:
        value = value.strip().lower()
        if value and not _SHA256.fullmatch(value):
            raise ValueError("detector_weights_sha256 must be 64 hexadecimal digits, or empty")
        return value
