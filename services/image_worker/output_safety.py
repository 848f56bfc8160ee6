"""A look at the generated pixels, after the text policy, on routes whose role asks for it (shared/roles.py).

Text rules can be talked around and a diffusion model can still draw what the prompt avoided; nudenet's
detector (a YOLOv8 ONNX model with exposed/covered body-part classes, bundled in its wheel) checks the image
itself before it leaves the worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

UNSAFE_CLASSES = frozenset(
    {
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)


@dataclass(frozen=True, slots=True)
class SafetyVerdict:
    safe: bool
    findings: tuple[str, ...]


def judge(detections: Iterable[Mapping[str, Any]], threshold: float, unsafe: frozenset[str]) -> SafetyVerdict:
    findings = sorted(
        {
            str(d.get("class"))
            for d in detections
            if d.get("class") in unsafe and float(d.get("score", 0)) >= threshold
        }
    )
    return SafetyVerdict(safe=not findings, findings=tuple(findings))


class OutputSafetyChecker:
    def __init__(
        self, threshold: float, model_path: str | None = None, unsafe_classes: frozenset[str] = UNSAFE_CLASSES
    ) -> None:
        from nudenet import NudeDetector

        self.threshold = threshold
        self.unsafe_classes = unsafe_classes
        self._detector = NudeDetector(model_path=model_path or None)

    def check(self, image: Image.Image) -> SafetyVerdict:
        # nudenet reads OpenCV's BGR channel order.
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        return judge(self._detector.detect(bgr), self.threshold, self.unsafe_classes)
