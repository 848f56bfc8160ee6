"""Both detector backends through the code the worker runs, on real photos and on a random YOLOv8n, and which
detector the worker picks: YOLOv8-face where its weights load, else nudenet's as a named, logged fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from skimage import data

from services.selfie_feature_worker.detection import (
    DetectorUnavailable,
    HaarFaceDetector,
    YoloFaceDetector,
    build_detector,
    resolve_weights,
)
from services.selfie_feature_worker.settings import (
    DEFAULT_DETECTOR_WEIGHTS,
    NUDENET_FACE_CLASSES,
    SelfieSettings,
)
from tests.helpers.photos import ASTRONAUT_FACE, iou

DETECTION_LOGGER = "services.selfie_feature_worker.detection"


@pytest.fixture(scope="module")
def yolo(tmp_path_factory: pytest.TempPathFactory) -> YoloFaceDetector:
    settings = SelfieSettings(
        detector_weights="nudenet", yolo_config_dir=tmp_path_factory.mktemp("ultralytics")
    )
    detector = build_detector(settings)
    assert isinstance(detector, YoloFaceDetector)
    assert detector.name == "nudenet"
    return detector


def face_class_names(detector: YoloFaceDetector) -> set[str] | None:
    if detector.class_ids is None:
        return None
    return {detector.model.names[i] for i in detector.class_ids}


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == DETECTION_LOGGER and r.levelno == logging.WARNING and "falling back" in r.getMessage()
    ]


def test_nudenet_weights_resolve_to_bundled_onnx() -> None:
    assert resolve_weights("nudenet").name == "320n.onnx"
    with pytest.raises(FileNotFoundError):
        resolve_weights("/no/such/face.pt")


def test_detector_settings_defaults_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFIE_DETECTOR_WEIGHTS", "")
    monkeypatch.delenv("SELFIE_FACE_CLASSES", raising=False)
    settings = SelfieSettings()
    assert settings.detector_weights == DEFAULT_DETECTOR_WEIGHTS  # empty means the default, not nudenet
    assert settings.face_classes is None  # unset: derived from the detector that loads
    assert settings.detector_fallback is True
    monkeypatch.setenv("SELFIE_FACE_CLASSES", "")
    assert SelfieSettings().face_classes == []  # set empty by the operator: keep every class
    with pytest.raises(ValidationError, match="64 hexadecimal"):
        SelfieSettings(detector_weights_sha256="abc")
    with pytest.raises(ValidationError, match="must start with"):
        SelfieSettings(detector_weights_url="ftp://example.invalid/w.pt")


def test_yolov8_face_weights_present_are_used_with_every_class(
    tiny_models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    detector = build_detector(
        SelfieSettings(detector_weights=str(tiny_models["yolo_random"]), yolo_config_dir=tmp_path)
    )
    assert isinstance(detector, YoloFaceDetector)
    assert (detector.name, detector.weights) == ("yolov8-face", "yolov8n-random.pt")
    assert detector.class_ids is None  # a face-only model: no class filter
    assert fallback_warnings(caplog) == []


def test_missing_weights_fall_back_to_nudenet_named_and_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    missing = tmp_path / "models" / "yolov8n-face-lindevs.pt"
    # Classes the operator set for the YOLOv8-face model must not reach nudenet: [] would keep body parts.
    settings = SelfieSettings(detector_weights=str(missing), face_classes=[], yolo_config_dir=tmp_path)
    detector = build_detector(settings)
    assert isinstance(detector, YoloFaceDetector)
    assert (detector.name, detector.weights) == ("nudenet-fallback", "320n.onnx")
    assert face_class_names(detector) == set(NUDENET_FACE_CLASSES)
    [warning] = fallback_warnings(caplog)
    assert warning.reason == "weights not found"  # type: ignore[attr-defined]
    assert warning.weights == str(missing)  # type: ignore[attr-defined]
    assert "nudenet-fallback" in warning.getMessage()
    # The fallback still finds faces.
    assert len(detector.detect(data.astronaut())) == 1


def test_unloadable_weights_fall_back_with_the_cause_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "yolov8n-face-lindevs.pt"
    broken.write_bytes(b"<html>not weights</html>")
    caplog.set_level(logging.INFO)
    detector = build_detector(SelfieSettings(detector_weights=str(broken), yolo_config_dir=tmp_path))
    assert detector.name == "nudenet-fallback"
    [warning] = fallback_warnings(caplog)
    assert warning.reason.startswith("weights failed to load (")  # type: ignore[attr-defined]
    assert warning.exc_info is not None  # the load's traceback goes to the log


def test_fallback_off_fails_with_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "yolov8n-face-lindevs.pt"
    settings = SelfieSettings(
        detector_weights=str(missing), detector_fallback=False, yolo_config_dir=tmp_path
    )
    with pytest.raises(DetectorUnavailable, match=r"weights not found .* SELFIE_DETECTOR_FALLBACK is off"):
        build_detector(settings)
    assert fallback_warnings(caplog) == []


def test_nudenet_chosen_explicitly_is_named_nudenet(tmp_path: Path) -> None:
    detector = build_detector(SelfieSettings(detector_weights="nudenet", yolo_config_dir=tmp_path))
    assert isinstance(detector, YoloFaceDetector)
    assert detector.name == "nudenet"
    assert face_class_names(detector) == set(NUDENET_FACE_CLASSES)


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
        SelfieSettings(detector_weights=str(tiny_models["yolo_random"]), yolo_config_dir=tmp_path)
    )
    assert (detector.name, detector.weights) == ("yolov8-face", "yolov8n-random.pt")
    assert detector.detect(data.astronaut()) == []


def test_yolo_refuses_face_classes_the_model_lacks(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    settings = SelfieSettings(
        detector_weights=str(tiny_models["yolo_random"]),
        face_classes=list(NUDENET_FACE_CLASSES),
        detector_fallback=False,
        yolo_config_dir=tmp_path,
    )
    with pytest.raises(DetectorUnavailable) as caught:
        build_detector(settings)
    assert isinstance(caught.value.__cause__, ValueError)
    assert "face classes" in str(caught.value.__cause__)


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
