"""The output safety check: only exposed classes block, each from its own score."""

from __future__ import annotations

import json

import nudenet.nudenet
import pytest
from PIL import Image
from pydantic import ValidationError
from skimage import data

from devtools.photos import astronaut
from services.image_worker.output_safety import (
    BLOCKING_BY_DEFAULT,
    COVERED_CLASSES,
    DETECTOR_CLASSES,
    EXPOSED_CLASSES,
    OutputSafetyChecker,
    blocking_thresholds,
    judge,
)
from services.image_worker.settings import ImageSettings

DEFAULTS = blocking_thresholds(0.45, {})


@pytest.fixture(scope="module")
def checker() -> OutputSafetyChecker:
    return OutputSafetyChecker(DEFAULTS)


def colour_wheel() -> Image.Image:
    # A harmless picture that the detector scores as BUTTOCKS_EXPOSED (about 0.83): a real detection of an
    # exposed class without any explicit image in the repository.
    return Image.fromarray(data.colorwheel()).convert("RGB")


def test_the_class_list_is_the_installed_detectors() -> None:
    assert tuple(getattr(nudenet.nudenet, "__labels")) == DETECTOR_CLASSES
    assert len(EXPOSED_CLASSES) == 9 and len(COVERED_CLASSES) == 7
    assert BLOCKING_BY_DEFAULT <= EXPOSED_CLASSES


def test_a_clothed_portrait_is_safe(checker: OutputSafetyChecker) -> None:
    verdict = checker.check(astronaut())
    assert verdict.safe
    assert verdict.findings == ()


def test_noise_and_flat_images_are_safe(checker: OutputSafetyChecker) -> None:
    assert checker.check(Image.effect_noise((256, 256), 64).convert("RGB")).safe
    assert checker.check(Image.new("RGB", (64, 64), (255, 255, 255))).safe


def test_an_exposed_class_outside_the_defaults_passes_unless_listed(checker: OutputSafetyChecker) -> None:
    """The real blocking path: buttocks do not block by default; listed with a score, they do from it."""
    assert checker.check(colour_wheel()).safe
    strict = OutputSafetyChecker(blocking_thresholds(0.45, {"BUTTOCKS_EXPOSED": 0.7}))
    assert strict.check(colour_wheel()).findings == ("BUTTOCKS_EXPOSED",)
    lenient = OutputSafetyChecker(blocking_thresholds(0.45, {"BUTTOCKS_EXPOSED": 0.95}))
    assert lenient.check(colour_wheel()).safe


def test_the_defaults_block_nipples_genitals_and_anus_only() -> None:
    assert DEFAULTS == {
        "ANUS_EXPOSED": 0.45,
        "FEMALE_BREAST_EXPOSED": 0.45,
        "FEMALE_GENITALIA_EXPOSED": 0.45,
        "MALE_GENITALIA_EXPOSED": 0.45,
    }
    for cls in EXPOSED_CLASSES - BLOCKING_BY_DEFAULT:
        assert judge([{"class": cls, "score": 0.99}], DEFAULTS).safe, cls


@pytest.mark.parametrize("cls", sorted(COVERED_CLASSES))
@pytest.mark.parametrize("score", [0.25, 0.45, 0.9, 1.0])
def test_covered_classes_never_block(cls: str, score: float) -> None:
    assert judge([{"class": cls, "score": score}], DEFAULTS).safe
    # Not even a mapping that names them (the checker and settings refuse one; judge ignores it anyway).
    assert judge([{"class": cls, "score": score}], {cls: 0.0}).safe


@pytest.mark.parametrize(
    ("detections", "findings"),
    [
        ([], ()),
        ([{"class": "FACE_FEMALE", "score": 0.99}], ()),
        ([{"class": "FEMALE_BREAST_COVERED", "score": 0.9}], ()),
        ([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.44}], ()),
        ([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.45}], ("FEMALE_BREAST_EXPOSED",)),
        ([{"class": "ANUS_EXPOSED", "score": 0.3}], ()),
        ([{"class": "ANUS_EXPOSED", "score": 0.31}], ("ANUS_EXPOSED",)),
        ([{"class": "MALE_GENITALIA_EXPOSED", "score": 0.6}], ()),
        ([{"class": "MALE_GENITALIA_EXPOSED", "score": 0.61}], ("MALE_GENITALIA_EXPOSED",)),
        ([{"class": "BUTTOCKS_EXPOSED", "score": 0.69}], ()),
        ([{"class": "BUTTOCKS_EXPOSED", "score": 0.7}], ("BUTTOCKS_EXPOSED",)),
        ([{"class": "MALE_BREAST_EXPOSED", "score": 0.99}], ()),
        (
            [
                {"class": "FEMALE_GENITALIA_EXPOSED", "score": 0.5},
                {"class": "BUTTOCKS_EXPOSED", "score": 0.9},
                {"class": "BUTTOCKS_COVERED", "score": 0.9},
            ],
            ("BUTTOCKS_EXPOSED", "FEMALE_GENITALIA_EXPOSED"),
        ),
        ([{"class": "BUTTOCKS_EXPOSED"}], ()),
    ],
)
def test_per_class_thresholds(detections: list[dict[str, object]], findings: tuple[str, ...]) -> None:
    thresholds = blocking_thresholds(
        0.45, {"ANUS_EXPOSED": 0.31, "MALE_GENITALIA_EXPOSED": 0.61, "BUTTOCKS_EXPOSED": 0.7}
    )
    verdict = judge(detections, thresholds)
    assert verdict.findings == findings
    assert verdict.safe is (findings == ())


def test_settings_default_and_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGE_OUTPUT_SAFETY_THRESHOLDS", raising=False)
    assert ImageSettings().output_safety_blocking == DEFAULTS
    monkeypatch.setenv("IMAGE_OUTPUT_SAFETY_THRESHOLD", "0.5")
    monkeypatch.setenv(
        "IMAGE_OUTPUT_SAFETY_THRESHOLDS", json.dumps({"ANUS_EXPOSED": 0.3, "BUTTOCKS_EXPOSED": 0.8})
    )
    assert ImageSettings().output_safety_blocking == {
        "ANUS_EXPOSED": 0.3,
        "BUTTOCKS_EXPOSED": 0.8,
        "FEMALE_BREAST_EXPOSED": 0.5,
        "FEMALE_GENITALIA_EXPOSED": 0.5,
        "MALE_GENITALIA_EXPOSED": 0.5,
    }
    # deploy.env's empty "KEY=" is the default, not a JSON error.
    monkeypatch.setenv("IMAGE_OUTPUT_SAFETY_THRESHOLDS", "")
    assert ImageSettings().output_safety_thresholds == {}


@pytest.mark.parametrize(
    ("value", "named", "why"),
    [
        ({"FEMALE_BREAST_COVERED": 0.5}, "FEMALE_BREAST_COVERED", "covered class"),
        ({"BUTTOCKS_COVERED": 0.9, "ANUS_EXPOSED": 0.4}, "BUTTOCKS_COVERED", "covered class"),
        ({"FACE_FEMALE": 0.5}, "FACE_FEMALE", "not an exposed class"),
        ({"NIPPLE_EXPOSED": 0.5}, "NIPPLE_EXPOSED", "not a class of the detector"),
        ({"female_breast_exposed": 0.5}, "female_breast_exposed", "not a class of the detector"),
    ],
)
def test_settings_refuse_a_class_that_may_not_block(
    monkeypatch: pytest.MonkeyPatch, value: dict[str, float], named: str, why: str
) -> None:
    monkeypatch.setenv("IMAGE_OUTPUT_SAFETY_THRESHOLDS", json.dumps(value))
    with pytest.raises(ValidationError) as err:
        ImageSettings()
    message = str(err.value)
    assert "output_safety_thresholds" in message and named in message and why in message


@pytest.mark.parametrize(
    "raw", ['{"ANUS_EXPOSED": 1.5}', '{"ANUS_EXPOSED": -0.1}', '["ANUS_EXPOSED"]', "{oops"]
)
def test_settings_refuse_scores_out_of_range_and_bad_json(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("IMAGE_OUTPUT_SAFETY_THRESHOLDS", raw)
    with pytest.raises(ValidationError):
        ImageSettings()


def test_the_checker_refuses_covered_classes_too() -> None:
    with pytest.raises(ValueError, match="FEMALE_GENITALIA_COVERED is a covered class"):
        OutputSafetyChecker({"FEMALE_GENITALIA_COVERED": 0.5})
