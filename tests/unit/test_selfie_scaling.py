"""The analyzer works on a copy at most ``decode_max_side`` and answers in the upload's own pixels.

A stand-in detector reports a fixed face in the pixels it was given (and records their size); the decode,
the scaling and the mapping back are the worker's real code on real encoded images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from devtools.photos import encode
from services.selfie_feature_worker.detection import DetectedFace
from services.selfie_feature_worker.pipeline import SelfieAnalyzer, to_original
from services.selfie_feature_worker.settings import SelfieSettings
from shared.images import DecodedImage
from tests.helpers.photos import exif_rotated_jpeg
from tests.unit.test_selfie_failures import StandInVlm

MARKS = [(20.0, 24.0), (36.0, 24.0), (28.0, 32.0), (22.0, 40.0), (34.0, 40.0)]


@dataclass
class RecordingDetector:
    name: str = "yolo"
    weights: str = "face.onnx"
    shapes: list[tuple[int, ...]] = field(default_factory=list)

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        self.shapes.append(rgb.shape)
        return [DetectedFace(8, 8, 40, 40, 0.9, MARKS)]


def analyzer(detector: RecordingDetector, **settings: object) -> SelfieAnalyzer:
    return SelfieAnalyzer(SelfieSettings(**settings), detector, StandInVlm())  # type: ignore[arg-type]


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    return Image.fromarray(np.stack([x, x[::-1, ::-1], np.full_like(x, 128)], -1).astype(np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_large_upload_is_analysed_small_and_answered_in_its_own_pixels(fmt: str) -> None:
    detector = RecordingDetector()
    body = analyzer(detector, decode_max_side=1024).analyze(encode(gradient(4096, 2048), fmt))
    # JPEG: libjpeg's 1/4 scale is exactly 1024; PNG: decoded whole, then shrunk. Either way 1024x512.
    assert detector.shapes == [(512, 1024, 3)]
    box = body.face.box
    assert box is not None and (box.x, box.y, box.w, box.h) == (32, 32, 160, 160)
    assert body.face.landmarks == [pytest.approx((x * 4, y * 4)) for x, y in MARKS]
    # Ratios do not depend on the analysed size.
    assert body.face.signals.face_size_ratio == pytest.approx(40 / 512, abs=1e-3)


def test_small_upload_is_analysed_as_is() -> None:
    detector = RecordingDetector()
    body = analyzer(detector).analyze(encode(gradient(640, 480)))
    assert detector.shapes == [(480, 640, 3)]
    assert body.face.box is not None and (body.face.box.x, body.face.box.w) == (8, 40)
    assert body.face.landmarks == MARKS


def test_rotated_phone_photo_maps_to_the_upright_upload() -> None:
    detector = RecordingDetector()
    body = analyzer(detector, decode_max_side=1000).analyze(exif_rotated_jpeg(gradient(3000, 2000)))
    assert detector.shapes == [(667, 1000, 3)]  # upright, long side 1000
    box = body.face.box
    assert box is not None and (box.x, box.y, box.w, box.h) == (24, 24, 120, 120)


def test_mapped_box_stays_inside_the_upload() -> None:
    decoded = DecodedImage(Image.new("RGB", (100, 50)), (301, 151))
    face = to_original(DetectedFace(90, 40, 10, 10, 0.5), decoded)
    assert face.x + face.w <= 301 and face.y + face.h <= 151
    assert (face.x, face.y) == (271, 121)
