"""The registry of tiny-model builders and an idempotent "build what is missing" entry point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shared.tiny_models.qwen3_guard import build_qwen3_guard
from shared.tiny_models.qwen_lm import build_qwen_lm
from shared.tiny_models.qwen_vl import build_qwen_vl
from shared.tiny_models.yolo import build_yolo_random
from shared.tiny_models.zimage import build_zimage

# name -> (sub-folder, builder). The sub-folder names are what settings and scripts point at.
BUILDERS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "zimage": ("z-image-turbo-tiny", build_zimage),
    "qwen_lm": ("qwen2.5-tiny", build_qwen_lm),
    "qwen_vl": ("qwen2-vl-tiny", build_qwen_vl),
    "qwen3_guard": ("qwen3guard-gen-tiny", build_qwen3_guard),
    # A file, not a folder: the marker sits beside it like the folders' markers do.
    "yolo_random": ("yolov8n-random.pt", build_yolo_random),
}
_MARKER = ".complete"


def build_all(
    root: Path,
    *,
    only: list[str] | None = None,
    force: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Path]:
    """Build each model into ``root/<sub-folder>`` unless a completed build is already there."""
    paths: dict[str, Path] = {}
    for name, (sub, builder) in BUILDERS.items():
        if only and name not in only:
            continue
        target = root / sub
        marker = root / f"{sub}{_MARKER}"
        if marker.exists() and not force:
            paths[name] = target
            continue
        log(f"building {name} -> {target}")
        builder(target)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        paths[name] = target
    return paths
