"""Face detection behind one interface, with an ultralytics YOLO backend and an OpenCV Haar backend.

``yolo`` is the production path: the YOLOv8-face ``.pt`` fetched at deploy time. Where those weights are
missing or do not load, nudenet's bundled YOLOv8 ONNX export (classes include ``FACE_FEMALE``/``FACE_MALE``)
stands in, when ``detector_fallback`` allows it: with a start-up warning, and named in every response and on
/healthz, never silently. ``haar`` is OpenCV 4's frontal-face cascade.

The detector's ``name`` is what responses (``face.detector``) and /healthz (``detector``) show:

- ``yolov8-face``: the configured YOLOv8-face weights;
- ``nudenet``: nudenet's detector, chosen with ``detector_weights="nudenet"``;
- ``nudenet-fallback``: nudenet's detector, because the configured weights could not be used;
- ``haar``: OpenCV's cascade.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.selfie_feature_worker.settings import NUDENET_FACE_CLASSES, NUDENET_WEIGHTS, SelfieSettings
from shared.ultralytics_env import import_yolo

log = logging.getLogger(__name__)

YOLOV8_FACE = "yolov8-face"
NUDENET = "nudenet"
NUDENET_FALLBACK = "nudenet-fallback"
HAAR = "haar"


class DetectorUnavailable(RuntimeError):
    """The configured face detector cannot be used and the nudenet fallback is off."""


@dataclass(frozen=True)
class DetectedFace:
    """A face in pixel coordinates of the analysed image."""

    x: int
    y: int
    w: int
    h: int
    confidence: float
    # Five points (eyes, nose, mouth corners) when the model predicts them, else None.
    landmarks: list[tuple[float, float]] | None = None

    @property
    def area(self) -> int:
        return self.w * self.h


class FaceDetector(Protocol):
    name: str
    weights: str

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]: ...


def resolve_weights(setting: str) -> Path:
    """``"nudenet"`` -> the installed nudenet package's ``320n.onnx``; anything else is a path."""
    if setting.strip() == NUDENET_WEIGHTS:
        import importlib.util

        spec = importlib.util.find_spec("nudenet")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("detector weights 'nudenet' need the nudenet package installed")
        path = Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"
    else:
        path = Path(setting).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"detector weights not found: {path}")
    return path


def _clip_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> tuple[int, ...]:
    left, top = max(0, round(x1)), max(0, round(y1))
    right, bottom = min(width, round(x2)), min(height, round(y2))
    return left, top, max(0, right - left), max(0, bottom - top)


class YoloFaceDetector:
    """ultralytics ``YOLO(path, task="detect")``; keeps the face classes only."""

    def __init__(
        self,
        weights: Path,
        *,
        name: str,
        face_classes: list[str],
        confidence: float,
        imgsz: int,
        config_dir: Path,
    ) -> None:
        # Offline, no auto-install, and PIL's Image.open left alone (see shared.ultralytics_env).
        yolo = import_yolo(config_dir)
        self.name = name
        self.weights = weights.name
        self.model = yolo(str(weights), task="detect")
        self.confidence = confidence
        self.imgsz = imgsz
        names: dict[int, str] = dict(self.model.names)
        if face_classes:
            missing = set(face_classes) - set(names.values())
            if missing == set(face_classes):
                raise ValueError(f"none of the face classes {sorted(missing)} is in {self.weights}")
            self.class_ids: set[int] | None = {i for i, n in names.items() if n in face_classes}
        else:
            self.class_ids = None
        # One predictor object holds per-call state; concurrent predict() calls are not safe.
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        height, width = rgb.shape[:2]
        kwargs: dict[str, Any] = {"conf": self.confidence, "verbose": False}
        if self.imgsz:
            kwargs["imgsz"] = self.imgsz
        if self.class_ids is not None:
            kwargs["classes"] = sorted(self.class_ids)
        # ultralytics takes numpy arrays as BGR (OpenCV order).
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with self._lock:
            result = self.model.predict(bgr, **kwargs)[0]
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return []
        xyxy = boxes.xyxy.cpu().numpy()
        conf = boxes.conf.cpu().numpy()
        points = None
        if getattr(result, "keypoints", None) is not None and result.keypoints.xy is not None:
            points = result.keypoints.xy.cpu().numpy()
        faces = []
        for i, (x1, y1, x2, y2) in enumerate(xyxy):
            x, y, w, h = _clip_box(x1, y1, x2, y2, width, height)
            if w < 2 or h < 2:
                continue
            marks = None
            if points is not None and i < len(points) and len(points[i]) >= 3:
                marks = [(float(px), float(py)) for px, py in points[i]]
            faces.append(DetectedFace(x, y, w, h, float(conf[i]), marks))
        return faces


class HaarFaceDetector:
    """OpenCV 4's frontal-face Haar cascade: no confidence score, so a neighbour count stands in for it."""

    name = HAAR
    weights = "haarcascade_frontalface_default.xml"

    def __init__(self, *, min_neighbors: int = 5) -> None:
        import cv2

        if not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError("this OpenCV build has no CascadeClassifier (OpenCV 5 dropped it)")
        self._cv2 = cv2
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + self.weights)
        if self.cascade.empty():
            raise FileNotFoundError(f"OpenCV cascade {self.weights} not found")
        self.min_neighbors = min_neighbors
        self._lock = threading.Lock()

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        cv2 = self._cv2
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        # Cascades scan every scale: on big photos work on a copy of at most 1024 px on the long side.
        scale = min(1.0, 1024 / max(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        min_side = max(24, int(min(gray.shape) * 0.05))
        with self._lock:
            rects, _, weights = self.cascade.detectMultiScale3(
                gray,
                scaleFactor=1.1,
                minNeighbors=self.min_neighbors,
                minSize=(min_side, min_side),
                outputRejectLevels=True,
            )
        faces = []
        for (x, y, w, h), weight in zip(rects, np.ravel(weights), strict=False):
            # The stage-sum weight is unbounded; squash it into (0, 1) so it reads like a confidence.
            confidence = float(1.0 / (1.0 + np.exp(-float(weight))))
            faces.append(
                DetectedFace(
                    round(x / scale), round(y / scale), round(w / scale), round(h / scale), confidence
                )
            )
        return faces


# nudenet's export was trained at 320 px: at 320 it finds more small faces, 3-4x faster than at 640.
NUDENET_IMGSZ = 320


def _nudenet(settings: SelfieSettings, *, name: str, face_classes: list[str], imgsz: int) -> YoloFaceDetector:
    return YoloFaceDetector(
        resolve_weights(NUDENET_WEIGHTS),
        name=name,
        face_classes=face_classes,
        confidence=settings.detector_confidence,
        imgsz=imgsz,
        config_dir=settings.yolo_config_dir,
    )


def _yolov8_face(settings: SelfieSettings) -> YoloFaceDetector:
    # A face-only model has one class: keep every class unless the operator named some.
    classes = settings.face_classes if settings.face_classes is not None else []
    return YoloFaceDetector(
        resolve_weights(settings.detector_weights),
        name=YOLOV8_FACE,
        face_classes=list(classes),
        confidence=settings.detector_confidence,
        imgsz=settings.detector_imgsz,
        config_dir=settings.yolo_config_dir,
    )


def build_detector(settings: SelfieSettings) -> FaceDetector:
    """The configured detector, or nudenet's as a named, logged fallback (the module docstring)."""
    if settings.detector_backend == "haar":
        return HaarFaceDetector()
    if settings.detector_weights == NUDENET_WEIGHTS:
        # nudenet's other classes are body parts: an empty list would count them as faces.
        classes = settings.face_classes or NUDENET_FACE_CLASSES
        log.info("face detector: nudenet, as configured (the specified detector is YOLOv8-face)")
        return _nudenet(
            settings, name=NUDENET, face_classes=list(classes), imgsz=settings.detector_imgsz or NUDENET_IMGSZ
        )
    try:
        return _yolov8_face(settings)
    except Exception as exc:
        missing = isinstance(exc, FileNotFoundError)
        reason = "weights not found" if missing else f"weights failed to load ({type(exc).__name__})"
        if not settings.detector_fallback:
            raise DetectorUnavailable(
                f"YOLOv8-face detector unavailable: {reason} at {settings.detector_weights}, and "
                "SELFIE_DETECTOR_FALLBACK is off"
            ) from exc
        # Logged once, at start-up; the log is private, so it names the path. A load failure keeps its
        # traceback; a missing file needs none.
        log.warning(
            "YOLOv8-face detector unavailable (%s): falling back to nudenet's detector, named %r in every "
            'response; run the deploy fetch step (DEPLOYMENT.md, "Face detector weights")',
            reason,
            NUDENET_FALLBACK,
            extra={"detector": NUDENET_FALLBACK, "weights": settings.detector_weights, "reason": reason},
            exc_info=None if missing else exc,
        )
    # The operator's face_classes were meant for the YOLOv8-face model: nudenet needs its own.
    return _nudenet(
        settings,
        name=NUDENET_FALLBACK,
        face_classes=list(NUDENET_FACE_CLASSES),
        imgsz=settings.detector_imgsz or NUDENET_IMGSZ,
    )
