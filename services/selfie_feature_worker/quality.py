"""A selfie quality score in [0, 1] from measured signals: face size, sharpness, exposure, frontal-ness.

Each signal is reported on its own so that a client can tell the user *why* a selfie scored low.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.selfie_feature_worker.detection import DetectedFace

# A face whose side is a quarter of the image's short side (a typical selfie) gets the full size score.
FULL_SIZE_RATIO = 0.25
# Below this many pixels across, a face holds too little detail for the VLM to read traits from.
FULL_SIZE_PIXELS = 96
# Laplacian variance is measured on a crop resized to this side, so it does not depend on resolution.
SHARPNESS_SIDE = 128
# var(Laplacian) at which sharpness reads 0.5; a sharp astronaut face measures around 400-600.
SHARPNESS_HALF = 100.0
# A pixel at or beyond these grey levels carries no detail (crushed shadow or blown highlight).
CLIP_LOW, CLIP_HIGH = 8, 247
# Multiplier when no face is found: the image may be fine, but it is not a usable selfie.
NO_FACE_PENALTY = 0.35

WEIGHTS = {"size": 0.3, "sharpness": 0.3, "exposure": 0.25, "frontal": 0.15}


@dataclass(frozen=True)
class QualityReport:
    score: float
    face_size_ratio: float | None
    sharpness: float
    exposure_mean: float
    clipped_fraction: float
    frontalness: float | None


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian on a fixed-size copy, squashed to [0, 1) as v / (v + SHARPNESS_HALF)."""
    h, w = gray.shape[:2]
    scale = SHARPNESS_SIDE / max(1, min(h, w))
    resized = cv2.resize(
        gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    variance = float(cv2.Laplacian(resized, cv2.CV_64F).var())
    return variance / (variance + SHARPNESS_HALF)


def exposure(gray: np.ndarray) -> tuple[float, float, float]:
    """(mean luminance in [0,1], clipped fraction, exposure score): best when the mean is mid-grey."""
    mean = float(gray.mean()) / 255.0
    clipped = float(np.mean((gray <= CLIP_LOW) | (gray >= CLIP_HIGH)))
    # Full marks between 0.35 and 0.65 mean luminance, falling linearly to 0 at black or white.
    if mean < 0.35:
        level = mean / 0.35
    elif mean > 0.65:
        level = (1.0 - mean) / 0.35
    else:
        level = 1.0
    # A third of the face clipped costs everything; small specular highlights cost little.
    clip_score = max(0.0, 1.0 - 3.0 * clipped)
    return mean, clipped, level * clip_score


def frontalness(landmarks: list[tuple[float, float]] | None) -> float | None:
    """1 when the nose sits midway between the eyes; 0 when it is as far off as half the eye distance.

    Expects the usual five-point order: left eye, right eye, nose, mouth corners.
    """
    if not landmarks or len(landmarks) < 3:
        return None
    (lx, ly), (rx, ry), (nx, _) = landmarks[0], landmarks[1], landmarks[2]
    eye_dist = float(np.hypot(rx - lx, ry - ly))
    if eye_dist < 1.0:
        return None
    offset = abs(nx - (lx + rx) / 2.0) / (eye_dist / 2.0)
    return float(np.clip(1.0 - offset, 0.0, 1.0))


def size_score(face: DetectedFace, width: int, height: int) -> tuple[float, float]:
    """(face side / image short side, score): relative size and absolute pixels both matter."""
    side = float(np.sqrt(face.area))
    ratio = side / max(1, min(width, height))
    score = min(1.0, ratio / FULL_SIZE_RATIO) * min(1.0, side / FULL_SIZE_PIXELS)
    return ratio, score


def assess(rgb: np.ndarray, face: DetectedFace | None) -> QualityReport:
    """Score the face crop (or the whole image when no face was found)."""
    height, width = rgb.shape[:2]
    crop = rgb if face is None else rgb[face.y : face.y + face.h, face.x : face.x + face.w]
    if crop.size == 0:
        crop = rgb
    gray = _gray(crop)
    sharp = sharpness(gray)
    mean, clipped, exposure_score = exposure(gray)
    parts = {"sharpness": sharp, "exposure": exposure_score}
    ratio = None
    front = None
    if face is not None:
        ratio, parts["size"] = size_score(face, width, height)
        front = frontalness(face.landmarks)
        if front is not None:
            parts["frontal"] = front
    else:
        parts["size"] = 0.0
    total_weight = sum(WEIGHTS[k] for k in parts)
    score = sum(WEIGHTS[k] * v for k, v in parts.items()) / total_weight
    if face is None:
        score *= NO_FACE_PENALTY
    return QualityReport(
        score=round(float(np.clip(score, 0.0, 1.0)), 4),
        face_size_ratio=None if ratio is None else round(ratio, 4),
        sharpness=round(sharp, 4),
        exposure_mean=round(mean, 4),
        clipped_fraction=round(clipped, 4),
        frontalness=None if front is None else round(front, 4),
    )
