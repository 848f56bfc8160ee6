"""decode -> detect -> quality -> crop -> VLM -> parse, each stage timed.

Everything here is blocking; the route runs ``analyze`` in a worker thread. The detector and the VLM each
hold their own lock, so two requests can overlap decode and quality but never share a model call.

The upload is analysed at most ``decode_max_side`` on its long side, decoded inside a pixel budget shared by
every analysis of the process: the detector works at 320-640 px and the VLM sees a few hundred, so a
40-megapixel original would only cost memory. The face box and landmarks are mapped back to the upload's own
pixels, where the client draws them.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from PIL import Image

from services.selfie_feature_worker.detection import DetectedFace, FaceDetector
from services.selfie_feature_worker.features import parse_features
from services.selfie_feature_worker.quality import assess
from services.selfie_feature_worker.settings import SelfieSettings
from services.selfie_feature_worker.vlm import QwenVlDescriber
from shared.errors import InferenceFailed
from shared.images import DecodedImage, decode_upload
from shared.models import AnalyzeResponse, FaceBox, FaceMeta, QualitySignals
from shared.pixel_budget import DEFAULT_TRIM_AFTER_PX, PixelBudget
from shared.public_names import public_model_id
from shared.timings import timed

log = logging.getLogger(__name__)


def crop_with_margin(image: Image.Image, face: DetectedFace | None, margin: float) -> Image.Image:
    """The face plus ``margin`` x its size on each side (hair and ears matter), or the whole image."""
    if face is None:
        return image
    dx, dy = round(face.w * margin), round(face.h * margin)
    box = (
        max(0, face.x - dx),
        max(0, face.y - dy),
        min(image.width, face.x + face.w + dx),
        min(image.height, face.y + face.h + dy),
    )
    return image.crop(box)


def to_original(face: DetectedFace, decoded: DecodedImage) -> DetectedFace:
    """The face in the upload's pixels (upright) instead of the analysed copy's."""
    sx, sy = decoded.scale
    if (sx, sy) == (1.0, 1.0):
        return face
    width, height = decoded.original_size
    # Edges, not sizes, are scaled: the box stays inside the image and adjacent boxes stay adjacent.
    left, top = round(face.x * sx), round(face.y * sy)
    right, bottom = min(width, round((face.x + face.w) * sx)), min(height, round((face.y + face.h) * sy))
    marks = None if face.landmarks is None else [(x * sx, y * sy) for x, y in face.landmarks]
    return replace(face, x=left, y=top, w=right - left, h=bottom - top, landmarks=marks)


class SelfieAnalyzer:
    def __init__(
        self,
        settings: SelfieSettings,
        detector: FaceDetector,
        vlm: QwenVlDescriber,
        budget: PixelBudget | None = None,
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.vlm = vlm
        if budget is None:
            trim_after_px = DEFAULT_TRIM_AFTER_PX if settings.decode_trim_heap else None
            budget = PixelBudget(
                settings.decode_pixel_budget,
                timeout_s=settings.decode_wait_timeout_s,
                trim_after_px=trim_after_px,
            )
        # One per process: every analysis's decode draws on it, whatever admission lets run at once.
        self.budget = budget
        # Goes into every response body: a VLM configured as a local path is named, not located.
        self.model_info = {
            "detector": f"{detector.name}:{detector.weights}",
            "vlm": public_model_id(vlm.model_id),
        }

    def warm_up(self) -> None:
        """One tiny pass through each model, so the first request does not pay for lazy initialisation."""
        gray = Image.new("RGB", (128, 128), (128, 128, 128))
        self.detector.detect(np.asarray(gray))
        self.vlm.describe(gray, max_new_tokens=1)

    def decode(self, data: bytes) -> DecodedImage:
        return decode_upload(
            data,
            max_bytes=self.settings.max_upload_bytes,
            max_pixels=self.settings.max_pixels,
            max_side=self.settings.decode_max_side,
            budget=self.budget,
        )

    def analyze(self, data: bytes) -> AnalyzeResponse:
        timings: dict[str, float] = {}
        with timed(timings, "decode"):
            decoded = self.decode(data)
            image = decoded.image
            rgb = np.asarray(image)
        with timed(timings, "detect"):
            try:
                faces = self.detector.detect(rgb)
            except Exception:
                # The traceback is logged here, once, with the request id; the client gets the short message.
                # ``from None``: the cause is in the log already and must not be logged again as context.
                log.exception("face detection failed", extra={"stage": "detect"})
                raise InferenceFailed("face detection failed", stage="detect") from None
        # Several faces: the largest is the selfie's subject; the rest are background people.
        face = max(faces, key=lambda f: f.area) if faces else None
        with timed(timings, "quality"):
            report = assess(rgb, face)
        with timed(timings, "vlm"):
            crop = crop_with_margin(image, face, self.settings.crop_margin)
            try:
                answer = self.vlm.describe(crop)
            except Exception:
                log.exception("the vision-language model failed", extra={"stage": "vlm"})
                raise InferenceFailed("the vision-language model failed", stage="vlm") from None
            features, parsed = parse_features(answer.text)
        if not parsed:
            # The raw answer goes to the log (truncated), never into the response.
            log.info(
                "vlm answer not usable", extra={"answer": answer.text[:200], "tokens": answer.new_tokens}
            )
        # Quality and crop used the analysed copy; the client gets the upload's coordinates.
        shown = None if face is None else to_original(face, decoded)
        meta = FaceMeta(
            detected=shown is not None,
            box=None if shown is None else FaceBox(x=shown.x, y=shown.y, w=shown.w, h=shown.h),
            confidence=None if shown is None else round(shown.confidence, 4),
            landmarks=None if shown is None else shown.landmarks,
            face_count=len(faces),
            quality_score=report.score,
            signals=QualitySignals(
                face_size_ratio=report.face_size_ratio,
                sharpness=report.sharpness,
                exposure_mean=report.exposure_mean,
                clipped_fraction=report.clipped_fraction,
                frontalness=report.frontalness,
            ),
            detector=self.detector.name,
        )
        return AnalyzeResponse(
            face=meta,
            features=features,
            features_parsed=parsed,
            model=dict(self.model_info),
            timings_ms=timings,
        )
