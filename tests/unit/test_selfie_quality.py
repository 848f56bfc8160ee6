"""Quality signals measured on real photos: blur, darkness, size, pose and a missing face all cost score."""

from __future__ import annotations

import numpy as np
from skimage import data

from devtools.photos import astronaut
from services.selfie_feature_worker.detection import DetectedFace
from services.selfie_feature_worker.quality import (
    NO_FACE_PENALTY,
    assess,
    exposure,
    frontalness,
    sharpness,
    size_score,
)
from tests.helpers.photos import blurred, darkened

FACE = DetectedFace(x=173, y=83, w=101, h=97, confidence=0.81)


def rgb(img: object) -> np.ndarray:
    return np.asarray(img)


def test_signals_in_range_on_astronaut() -> None:
    report = assess(rgb(astronaut()), FACE)
    assert 0.0 <= report.score <= 1.0
    assert 0.15 < report.face_size_ratio < 0.25
    assert 0.0 < report.sharpness < 1.0
    assert 0.3 < report.exposure_mean < 0.8
    assert 0.0 <= report.clipped_fraction < 0.1
    assert report.frontalness is None  # no landmarks from this detector


def test_blur_lowers_sharpness_and_score() -> None:
    sharp = assess(rgb(astronaut()), FACE)
    soft = assess(rgb(blurred(astronaut())), FACE)
    assert soft.sharpness < sharp.sharpness / 2
    assert soft.score < sharp.score


def test_darkness_lowers_exposure_and_score() -> None:
    normal = assess(rgb(astronaut()), FACE)
    dark = assess(rgb(darkened(astronaut())), FACE)
    assert dark.exposure_mean < normal.exposure_mean / 2
    assert dark.score < normal.score


def test_clipped_fraction_counts_blown_pixels() -> None:
    gray = np.full((100, 100), 128, np.uint8)
    gray[:30] = 255
    _, clipped, score = exposure(gray)
    assert abs(clipped - 0.3) < 1e-6
    assert score < exposure(np.full((100, 100), 128, np.uint8))[2]


def test_sharpness_does_not_depend_on_resolution() -> None:
    gray = np.asarray(astronaut().convert("L"))
    small = np.ascontiguousarray(gray[::2, ::2])
    assert abs(sharpness(gray) - sharpness(small)) < 0.25
    assert sharpness(np.full((64, 64), 100, np.uint8)) == 0.0


def test_frontalness_from_landmarks() -> None:
    eyes = [(40.0, 50.0), (80.0, 50.0)]
    assert frontalness([*eyes, (60.0, 70.0)]) == 1.0
    turned = frontalness([*eyes, (75.0, 70.0)])
    assert turned is not None and 0.0 < turned < 0.5
    assert frontalness(None) is None
    front = assess(rgb(astronaut()), DetectedFace(173, 83, 101, 97, 0.8, [*eyes, (60.0, 70.0)]))
    side = assess(rgb(astronaut()), DetectedFace(173, 83, 101, 97, 0.8, [*eyes, (80.0, 70.0)]))
    assert front.frontalness == 1.0 and side.score < front.score


def test_small_face_scores_lower() -> None:
    _, big = size_score(FACE, 512, 512)
    _, small = size_score(DetectedFace(0, 0, 30, 30, 0.9), 512, 512)
    assert small < big


def test_no_face_is_penalised() -> None:
    coffee = rgb(data.coffee())
    report = assess(coffee, None)
    assert report.face_size_ratio is None
    assert report.score <= NO_FACE_PENALTY
    assert report.score < assess(rgb(astronaut()), FACE).score
