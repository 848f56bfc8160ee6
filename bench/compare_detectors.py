"""Compare the ``yolo`` (nudenet 320n.onnx) and ``haar`` face detectors on the photos scikit-image ships.

Faces: astronaut (face box known), camera (a small face), the 100 face crops (25 px, grey) of ``lfw_subset``
upscaled to 160 px, and the same crops at 128 px pasted on a 384 px grey canvas (a face in a larger frame).
Non-faces: coffee, chelsea (a cat), rocket, and the 100 non-face crops of ``lfw_subset`` (both ways).
Run: ``python -m bench.compare_detectors``.
"""

from __future__ import annotations

import statistics
import time

import cv2
import numpy as np
from skimage import data

from services.selfie_feature_worker.detection import FaceDetector, HaarFaceDetector, build_detector
from services.selfie_feature_worker.settings import SelfieSettings

ASTRONAUT_FACE = (170, 75, 110, 115)  # x, y, w, h


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def gray_to_rgb(img: np.ndarray) -> np.ndarray:
    img = (img * 255).astype(np.uint8) if img.dtype != np.uint8 else img
    return np.stack([img] * 3, axis=-1) if img.ndim == 2 else img


def padded(img: np.ndarray, side: int = 128, canvas: int = 384) -> np.ndarray:
    out = np.full((canvas, canvas, 3), 128, np.uint8)
    offset = (canvas - side) // 2
    out[offset : offset + side, offset : offset + side] = cv2.resize(
        gray_to_rgb(img), (side, side), interpolation=cv2.INTER_CUBIC
    )
    return out


def run(detector: FaceDetector) -> dict[str, object]:
    lfw = data.lfw_subset()
    lfw_faces = [cv2.resize(gray_to_rgb(x), (160, 160), interpolation=cv2.INTER_CUBIC) for x in lfw[:100]]
    lfw_other = [cv2.resize(gray_to_rgb(x), (160, 160), interpolation=cv2.INTER_CUBIC) for x in lfw[100:]]
    detector.detect(data.astronaut())  # warm-up
    times = []

    def timed(img: np.ndarray) -> list:
        started = time.perf_counter()
        out = detector.detect(img)
        times.append((time.perf_counter() - started) * 1000)
        return out

    astro = timed(data.astronaut())
    best = max((iou((f.x, f.y, f.w, f.h), ASTRONAUT_FACE) for f in astro), default=0.0)
    camera = timed(gray_to_rgb(data.camera()))
    lfw_hits = sum(bool(timed(x)) for x in lfw_faces)
    lfw_fp = sum(bool(timed(x)) for x in lfw_other)
    padded_hits = sum(bool(timed(padded(x))) for x in lfw[:100])
    padded_fp = sum(bool(timed(padded(x))) for x in lfw[100:])
    photos_fp = {n: len(timed(getattr(data, n)())) for n in ("coffee", "chelsea", "rocket")}
    return {
        "astronaut_iou": round(best, 2),
        "camera_found": bool(camera),
        "lfw_faces_found": f"{lfw_hits}/100",
        "lfw_nonfaces_flagged": f"{lfw_fp}/100",
        "lfw_padded_faces_found": f"{padded_hits}/100",
        "lfw_padded_nonfaces_flagged": f"{padded_fp}/100",
        "photo_false_positives": photos_fp,
        "median_ms": round(statistics.median(times), 1),
    }


def main() -> None:
    detectors: dict[str, FaceDetector] = {
        f"yolo 320n.onnx imgsz={size}": build_detector(
            SelfieSettings(detector_backend="yolo", detector_weights="nudenet", detector_imgsz=size)
        )
        for size in (640, 320)
    }
    detectors |= {
        "haar (frontalface_default)": HaarFaceDetector(),
    }
    for name, detector in detectors.items():
        print(f"{name:28s}", flush=True)
        for key, value in run(detector).items():
            print(f"    {key:28s} {value}")


if __name__ == "__main__":
    main()
