"""Both detector backends through the code the worker runs, on real photos and on a random YOLOv8n."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data

from services.selfie_feature_worker.detection import (
    HaarFaceDetector,
    YoloFaceDetector,
    build_detector,
    resolve_weights,
)
from services.selfie_feature_worker.settings import SelfieSettings
from tests.helpers.photos import ASTRONAUT_FACE, iou


@pytest.fixture(scope="module")
def yolo(tmp_path_factory: pytest.TempPathFactory) -> YoloFaceDetector:
    settings = SelfieSettings(yolo_config_dir=tmp_path_factory.mktemp("ultralytics"))
    detector = build_detector(settings)
    assert isinstance(detector, YoloFaceDetector)
    return detector


def test_nudenet_weights_resolve_to_bundled_onnx() -> None:
    assert resolve_weights("nudenet").name == "320n.onnx"
    assert resolve_weights("") == resolve_weights("nudenet")
    with pytest.raises(FileNotFoundError):
        resolve_weights("/no/such/face.pt")


def test_yolo_onnx_finds_astronaut_face(yolo: YoloFaceDetector) -> None:
    faces = yolo.detect(data.astronaut())
    assert len(faces) == 1
    face = faces[0]
    assert iou((face.x, face.y, face.w, face.h), ASTRONAUT_FACE) > 0.5
    assert face.confidence > 0.5


@pytest.mark.parametrize("photo", ["coffee", "chelsea", "rocket"])
def test_yolo_onnx_no_face_in_non_face_photos(yolo: YoloFaceDetector, photo: str) -> None:
    assert yolo.detect(getattr(data, photo)()) == []


def test_yolo_random_pt_finds_nothing(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    detector = build_detector(
        SelfieSettings(
            detector_weights=str(tiny_models["yolo_random"]), face_classes=[], yolo_config_dir=tmp_path
        )
    )
    assert detector.weights == "yolov8n-random.pt"
    assert detector.detect(data.astronaut()) == []


def test_yolo_refuses_face_classes_the_model_lacks(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="face classes"):
        build_detector(
            SelfieSettings(detector_weights=str(tiny_models["yolo_random"]), yolo_config_dir=tmp_path)
        )


def test_haar_finds_astronaut_face_and_skips_coffee() -> None:
    haar = build_detector(SelfieSettings(detector_backend="haar"))
    assert isinstance(haar, HaarFaceDetector)
    faces = haar.detect(data.astronaut())
    assert len(faces) == 1
    assert iou((faces[0].x, faces[0].y, faces[0].w, faces[0].h), ASTRONAUT_FACE) > 0.5
    assert haar.detect(data.coffee()) == []


def test_haar_on_grey_and_large_images() -> None:
    haar = HaarFaceDetector()
    big = np.kron(data.astronaut(), np.ones((4, 4, 1), np.uint8))  # 2048 px: scanned on a 1024 px copy
    faces = haar.detect(big)
    assert len(faces) == 1
    face = faces[0]
    assert iou((face.x // 4, face.y // 4, face.w // 4, face.h // 4), ASTRONAUT_FACE) > 0.5


def test_ultralytics_leaves_pil_open_alone(yolo: YoloFaceDetector) -> None:
    """ultralytics patches Image.open to pip-install pi-heif on unknown files; the worker undoes that."""
    import io

    from PIL import Image, UnidentifiedImageError

    from shared.errors import UnsupportedMedia
    from shared.images import decode_upload

    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(b"plain text, not an image"))
    with pytest.raises(UnsupportedMedia):
        decode_upload(b"plain text, not an image", max_bytes=1024, max_pixels=1024)
