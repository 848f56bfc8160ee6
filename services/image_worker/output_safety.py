"""A look at the generated pixels, after the text policy, on routes whose role asks for it (shared/roles.py).

Text rules can be talked around and a diffusion model can still draw what the prompt avoided; nudenet's
detector (a YOLOv8 ONNX model with exposed/covered body-part classes, bundled in its wheel) checks the image
itself before it leaves the worker. Moderation covers rather than censors (docs/MODERATION.md):
lingerie, swimwear and implied nudity are allowed, so only exposed classes can block, each at its own score.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# nudenet 3.4's labels, in its model's output order (nudenet/nudenet.py); kept here so that settings can be
# validated without importing onnxruntime and OpenCV. A unit test holds this copy to the installed package.
DETECTOR_CLASSES: tuple[str, ...] = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
EXPOSED_CLASSES = frozenset(c for c in DETECTOR_CLASSES if c.endswith("_EXPOSED"))
COVERED_CLASSES = frozenset(c for c in DETECTOR_CLASSES if c.endswith("_COVERED"))

# What moderated routes never show: nipples and genitals (and the anus with them). Buttocks are left out
# because a thong bikini shows them and swimwear is allowed; a bare male chest is a beach, not nudity; belly,
# armpits and feet are ordinary skin. An operator can add any of those through the per-class setting.
BLOCKING_BY_DEFAULT = frozenset(
    {
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "ANUS_EXPOSED",
    }
)


def refuse_non_exposed(classes: Iterable[str]) -> None:
    """Raise ValueError naming each class that may not block: covered ones, and any the detector lacks."""
    problems = [_why_not_blocking(c) for c in sorted(set(classes) - EXPOSED_CLASSES)]
    if problems:
        raise ValueError(
            "; ".join(problems) + f" (the classes that may block: {', '.join(sorted(EXPOSED_CLASSES))})"
        )


def _why_not_blocking(cls: str) -> str:
    if cls in COVERED_CLASSES:
        return f"{cls} is a covered class and never blocks"
    if cls in DETECTOR_CLASSES:
        return f"{cls} is not an exposed class"
    return f"{cls} is not a class of the detector"


def blocking_thresholds(default: float, per_class: Mapping[str, float]) -> dict[str, float]:
    """Class -> the score from which it blocks: the default classes at ``default``, then ``per_class``."""
    refuse_non_exposed(per_class)
    return dict.fromkeys(sorted(BLOCKING_BY_DEFAULT), default) | dict(per_class)


@dataclass(frozen=True, slots=True)
class SafetyVerdict:
    safe: bool
    findings: tuple[str, ...]


def judge(detections: Iterable[Mapping[str, Any]], thresholds: Mapping[str, float]) -> SafetyVerdict:
    findings = sorted(
        {
            cls
            for d in detections
            if (cls := str(d.get("class"))) in EXPOSED_CLASSES
            and cls in thresholds
            and float(d.get("score", 0)) >= thresholds[cls]
        }
    )
    return SafetyVerdict(safe=not findings, findings=tuple(findings))


class OutputSafetyChecker:
    def __init__(self, thresholds: Mapping[str, float], model_path: str | None = None) -> None:
        refuse_non_exposed(thresholds)
        from nudenet import NudeDetector

        self.thresholds = dict(thresholds)
        self._detector = NudeDetector(model_path=model_path or None)

    def check(self, image: Image.Image) -> SafetyVerdict:
        # nudenet reads OpenCV's BGR channel order.
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        return judge(self._detector.detect(bgr), self.thresholds)
