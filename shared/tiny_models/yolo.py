"""A YOLOv8n detector with random weights, built offline from ultralytics' own ``yolov8n.yaml``.

It has the production architecture and loads through ``YOLO(path)`` like a YOLOv8-face ``.pt``; with no
trained weights it finds nothing, which is what tests of the "no face" path on the ``.pt`` route want.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def prepare_ultralytics_env(config_dir: Path | None = None) -> None:
    """Must run before ``import ultralytics``: it probes the network and pip-installs extras otherwise."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    if config_dir is not None:
        config_dir.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    else:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "imgpod-ultralytics"))


def build_yolo_random(out: Path, seed: int = 0) -> Path:
    prepare_ultralytics_env()
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)
    model = YOLO("yolov8n.yaml", task="detect")
    out.parent.mkdir(parents=True, exist_ok=True)
    # YOLO.save writes the checkpoint dict ({"model": ..., "train_args": ...}) that YOLO(path) reads back.
    model.save(out)
    return out
