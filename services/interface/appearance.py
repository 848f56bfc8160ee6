"""The appearance lock: a persona's chat images start from its approved avatar, and say how close they stayed.

Start image: the avatar (stored as PNG) goes to the image worker as a JPEG, encoded in a thread: a 1024x1024
PNG is megabytes of base64 that the worker would parse on its event loop, the JPEG a few hundred KB. The
worker runs Z-Image image to image from it (services/image_worker/pipeline.py) at the request's strength or
its role's default, within the bounds it advertises.

Identity: the selfie worker compares the face of the image with the avatar's (``/v1/identity/compare``). The
number is a report, never a gate: a check that cannot be made leaves the image as it is and says why.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from dataclasses import dataclass
from typing import Any

from PIL import Image

from services.interface.pools import WorkerPool
from shared.errors import ImgPodError, ValidationFailed
from shared.metrics import ServiceMetrics
from shared.models import IdentityReport

log = logging.getLogger(__name__)
# Quality of the avatar as a start image: the worker decodes it back to pixels, so near-lossless is enough.
START_IMAGE_QUALITY = 92
# The schema's largest side: no job is bigger, so a larger start image would only be shrunk by the worker.
START_IMAGE_MAX_SIDE = 2048
IDENTITY_STAGE = "identity"
# The side the image is sent at for the face comparison: the face crop is 224 pixels anyway.
IDENTITY_MAX_SIDE = 1024


@dataclass(frozen=True, slots=True)
class StartImage:
    persona_id: str
    avatar_index: int
    # Base64 JPEG, as the image worker's ``init_image`` takes it.
    image_base64: str


@dataclass(frozen=True, slots=True)
class StartFrom:
    """An image to start from that is not a persona's avatar (an OpenAI edit's upload)."""

    # Base64 JPEG (``start_image_base64``).
    image_base64: str
    strength: float | None = None


def start_image_base64(data: bytes, max_side: int = START_IMAGE_MAX_SIDE) -> str:
    """An image (an avatar's PNG, an edit's upload that ``probe_upload`` passed) as the worker's start image:
    base64 JPEG, at most ``max_side`` on its long side (the worker fits it to the job's size anyway). CPU
    work: call it in a thread."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (max_side, max_side))  # JPEG: decode at a fraction of the size when it can
        rgb = image.convert("RGB")
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=START_IMAGE_QUALITY)
    return base64.b64encode(out.getvalue()).decode("ascii")


async def start_image(persona_id: str, avatar_index: int, png: bytes) -> StartImage:
    return StartImage(persona_id, avatar_index, await asyncio.to_thread(start_image_base64, png))


def check_strength(pool: WorkerPool, strength: float | None, *, starts_from_avatar: bool) -> None:
    """Refuse before the queue what the workers would refuse: a strength with no start image to apply it
    to, one outside the workers' advertised bounds, or a start image for workers that cannot take one."""
    if strength is not None and not starts_from_avatar:
        raise ValidationFailed(
            "strength: only for an image that starts from another one (a persona's approved avatar with "
            "appearance_lock true, or the image of an edit)",
            param="strength",
        )
    limits = pool.limits
    if not starts_from_avatar or limits is None:
        return
    if limits.min_strength > limits.max_strength:
        raise ValidationFailed(
            "appearance_lock: this deployment's image workers cannot start from an image; "
            "send appearance_lock false",
            param="appearance_lock",
        )
    if strength is not None and not limits.min_strength <= strength <= limits.max_strength:
        raise ValidationFailed(
            f"strength: {limits.min_strength:g} to {limits.max_strength:g} on this deployment",
            param="strength",
        )


class IdentityCheck:
    """The selfie worker's face comparison, with its outcome counted and its similarity observed."""

    def __init__(self, pool: WorkerPool, timeout_s: float, metrics: ServiceMetrics | None) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self._similarity: Any = None
        self._outcomes: Any = None
        if metrics is not None:
            self._similarity = metrics.histogram(
                "imgpod_identity_similarity",
                "Face similarity of a persona's chat image to its avatar (cosine)",
                ("role",),
                buckets=(-0.5, 0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            )
            self._outcomes = metrics.counter(
                "imgpod_identity_checks_total", "Identity checks by outcome", ("role", "outcome")
            )

    @property
    def available(self) -> bool:
        return self.pool.deployed

    async def report(self, role: str, reference_base64: str, image_base64: str) -> IdentityReport:
        if not self.available:
            return self._count(role, IdentityReport(reason="no_identity_worker"), "skipped")
        try:
            # The worker bounds each image (a 1024x1024 PNG can pass it); a face needs no more than a JPEG.
            candidate = await asyncio.to_thread(
                lambda: start_image_base64(base64.b64decode(image_base64), IDENTITY_MAX_SIDE)
            )
            body = await self.pool.request(
                "POST",
                "/v1/identity/compare",
                stage=IDENTITY_STAGE,
                timeout_s=self.timeout_s,
                json={"reference": reference_base64, "candidates": [candidate]},
            )
            score = body["scores"][0]
            report = IdentityReport(
                similarity=score.get("similarity"),
                reason=score.get("reason"),
                meaningful=bool(body.get("meaningful", False)),
                embedder=body.get("embedder"),
            )
        except (ImgPodError, KeyError, IndexError, TypeError, ValueError, OSError) as exc:
            # The image is good without the number: say it is missing rather than fail the request.
            log.warning("identity check failed", extra={"role": role}, exc_info=exc)
            return self._count(role, IdentityReport(reason="unavailable"), "failed")
        if report.similarity is not None and self._similarity is not None:
            self._similarity.labels(role).observe(report.similarity)
        return self._count(role, report, "scored" if report.similarity is not None else "no_face")

    def _count(self, role: str, report: IdentityReport, outcome: str) -> IdentityReport:
        if self._outcomes is not None:
            self._outcomes.labels(role, outcome).inc()
        return report
