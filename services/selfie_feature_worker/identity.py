"""Identity score: how alike the largest face of each candidate is to the largest face of a reference.

parse -> decode -> detect -> crop -> embed (one batched call) -> cosine, each stage timed. Everything here
blocks; the route runs ``compare_json`` in a worker thread, under the same admission slots as the analyses.
The detector and the VLM keep their own locks, so a compare and an analysis never share a model call.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image
from pydantic import ValidationError

from services.selfie_feature_worker.detection import DetectedFace, FaceDetector
from services.selfie_feature_worker.face_embedding import (
    FaceEmbedder,
    VlmFaceEmbedder,
    built_by_tiny_models,
    cosine,
)
from services.selfie_feature_worker.settings import SelfieSettings
from services.selfie_feature_worker.vlm import QwenVlDescriber
from shared.errors import (
    ImgPodError,
    InferenceFailed,
    Overloaded,
    ValidationFailed,
    validation_detail,
)
from shared.images import decode_base64_field, decode_upload
from shared.models import IdentityCompareRequest, IdentityCompareResponse, IdentityScore
from shared.pixel_budget import PixelBudget
from shared.timings import timed

log = logging.getLogger(__name__)


def face_crop(image: Image.Image, face: DetectedFace, margin: float) -> Image.Image:
    """A square around the face, ``margin`` x its long side wider on each side.

    Square so that resizing to the embedder's side never stretches a face; where it runs past the image
    edge Pillow fills black, which keeps the face centred instead of shifting it.
    """
    side = max(face.w, face.h) * (1.0 + 2.0 * margin)
    cx, cy = face.x + face.w / 2, face.y + face.h / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    return image.crop((left, top, left + round(side), top + round(side)))


def largest_face(faces: list[DetectedFace]) -> DetectedFace | None:
    # Several faces: the largest is the subject, as in the selfie analysis.
    return max(faces, key=lambda f: f.area) if faces else None


def _field_error(field: str, exc: ImgPodError) -> ImgPodError:
    """The same refusal (413, 415 or 422), naming the request field it is about."""
    if isinstance(exc, Overloaded):
        return exc  # busy, not the field's fault
    return type(exc)(f"{field}: {exc.detail}", param=field)


class IdentityComparer:
    def __init__(
        self,
        settings: SelfieSettings,
        detector: FaceDetector,
        embedder: FaceEmbedder,
        budget: PixelBudget,
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.embedder = embedder
        # The analyses' budget: a compare's decodes and an analysis's draw on the same pixels.
        self.budget = budget

    def parse(self, body: bytes) -> IdentityCompareRequest:
        try:
            return IdentityCompareRequest.model_validate_json(body)
        except ValidationError as exc:
            # Field and rule only, never the input: it is megabytes of base64.
            raise ValidationFailed(validation_detail(exc.errors(include_input=False))) from None

    def decode(self, text: str, field: str) -> Image.Image:
        s = self.settings
        data = decode_base64_field(text, field, s.identity_max_image_bytes)
        try:
            decoded = decode_upload(
                data,
                max_bytes=s.identity_max_image_bytes,
                max_pixels=s.identity_max_image_pixels,
                max_side=s.identity_decode_max_side,
                budget=self.budget,
            )
        except ImgPodError as exc:
            raise _field_error(field, exc) from None
        return decoded.image

    def detect(self, image: Image.Image) -> DetectedFace | None:
        try:
            return largest_face(self.detector.detect(np.asarray(image)))
        except Exception:
            log.exception("face detection failed", extra={"stage": "detect"})
            raise InferenceFailed("face detection failed", stage="detect") from None

    def compare_json(self, body: bytes) -> IdentityCompareResponse:
        """The route's whole work, off the event loop: a JSON body in, the scores out."""
        timings: dict[str, float] = {}
        with timed(timings, "parse"):
            request = self.parse(body)
        return self.compare(request, timings)

    def compare(
        self, request: IdentityCompareRequest, timings: dict[str, float] | None = None
    ) -> IdentityCompareResponse:
        timings = {} if timings is None else timings
        fields = ["reference", *(f"candidates[{i}]" for i in range(len(request.candidates)))]
        texts = [request.reference, *request.candidates]
        # Every image is decoded before any model runs: a bad last candidate is refused without GPU work.
        with timed(timings, "decode"):
            images = [self.decode(text, field) for text, field in zip(texts, fields, strict=True)]
        with timed(timings, "detect"):
            reference_face = self.detect(images[0])
            # No reference face: nothing to compare with, so the candidates are not even looked at.
            candidate_faces = (
                [None] * len(request.candidates)
                if reference_face is None
                else [self.detect(image) for image in images[1:]]
            )
        scores = self._scores(images, reference_face, candidate_faces, timings)
        return IdentityCompareResponse(
            scores=scores,
            embedder=self.embedder.name,
            meaningful=self.embedder.meaningful,
            timings_ms=timings,
        )

    def _scores(
        self,
        images: list[Image.Image],
        reference_face: DetectedFace | None,
        candidate_faces: list[DetectedFace | None],
        timings: dict[str, float],
    ) -> list[IdentityScore]:
        if reference_face is None:
            return [IdentityScore(reason="no_face_in_reference") for _ in candidate_faces]
        found = {i: face for i, face in enumerate(candidate_faces) if face is not None}
        # A reference whose candidates all lack a face is not embedded: there is nothing to compare it with.
        if not found:
            return [IdentityScore(reason="no_face_in_candidate") for _ in candidate_faces]
        margin = self.settings.identity_crop_margin
        crops = [face_crop(images[0], reference_face, margin)]
        crops += [face_crop(images[1 + i], face, margin) for i, face in found.items()]
        with timed(timings, "embed"):
            try:
                vectors = self.embedder.embed(crops)
            except Exception:
                log.exception("the face embedder failed", extra={"stage": "embed"})
                raise InferenceFailed("the face embedder failed", stage="embed") from None
        by_candidate = dict(zip(found, vectors[1:], strict=True))
        return [
            IdentityScore(similarity=round(cosine(vectors[0], by_candidate[i]), 6))
            if i in by_candidate
            else IdentityScore(reason="no_face_in_candidate")
            for i in range(len(candidate_faces))
        ]


def build_comparer(
    settings: SelfieSettings, detector: FaceDetector, vlm: QwenVlDescriber, budget: PixelBudget
) -> IdentityComparer | None:
    """The configured comparer, warmed up; None when ``identity_embedder`` is off."""
    if settings.identity_embedder == "off":
        return None
    meaningful = settings.identity_meaningful
    if meaningful is None:
        meaningful = not built_by_tiny_models(vlm.model_id)
    embedder = VlmFaceEmbedder(vlm, crop_side=settings.identity_crop_side, meaningful=meaningful)
    embedder.warm_up()
    return IdentityComparer(settings, detector, embedder, budget)
