from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.tiny_models.build import build_all

# Tests never reach a hub; make any accidental download fail at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny checkpoint, built once per test session (seconds) through the project's own builder."""
    cached = os.environ.get("IMG_POD_TINY_MODELS")
    root = Path(cached) if cached else tmp_path_factory.mktemp("tiny-models")
    return build_all(root)
