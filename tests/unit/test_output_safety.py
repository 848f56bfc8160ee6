"""The output safety check on real pixels, with nudenet's real detector."""

from __future__ import annotations

import pytest
from PIL import Image

from devtools.photos import astronaut
from services.image_worker.output_safety import UNSAFE_CLASSES, OutputSafetyChecker, judge


@pytest.fixture(scope="module")
def checker() -> OutputSafetyChecker:
    return OutputSafetyChecker(threshold=0.45)


def test_a_clothed_portrait_is_safe(checker: OutputSafetyChecker) -> None:
    verdict = checker.check(astronaut())
    assert verdict.safe
    assert verdict.findings == ()


def test_noise_and_flat_images_are_safe(checker: OutputSafetyChecker) -> None:
    assert checker.check(Image.effect_noise((256, 256), 64).convert("RGB")).safe
    assert checker.check(Image.new("RGB", (64, 64), (255, 255, 255))).safe


def test_a_detected_unsafe_class_blocks() -> None:
    """The blocking path on a real detection: treat the face class as unsafe for this one checker."""
    strict = OutputSafetyChecker(threshold=0.45, unsafe_classes=frozenset({"FACE_FEMALE"}))
    verdict = strict.check(astronaut())
    assert not verdict.safe
    assert verdict.findings == ("FACE_FEMALE",)


@pytest.mark.parametrize(
    ("detections", "safe"),
    [
        ([], True),
        ([{"class": "FACE_FEMALE", "score": 0.99}], True),
        ([{"class": "FEMALE_BREAST_COVERED", "score": 0.9}], True),
        ([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.44}], True),
        ([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.45}], False),
        ([{"class": "MALE_GENITALIA_EXPOSED", "score": 0.9}, {"class": "FACE_MALE", "score": 0.9}], False),
        ([{"class": "BUTTOCKS_EXPOSED"}], True),
    ],
)
def test_judge(detections: list[dict[str, object]], safe: bool) -> None:
    assert judge(detections, 0.45, UNSAFE_CLASSES).safe is safe
