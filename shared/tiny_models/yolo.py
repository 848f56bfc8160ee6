"""A YOLOv8n detector with random weights, built offline from ultralytics' own ``yolov8n.yaml``.

It has the production architecture and loads through ``YOLO(path)`` like a YOLOv8-face ``.pt``; with no
trained weights it finds nothing, which is what tests of the "no face" path on the ``.pt`` route want.
"""

from __future__ import annotations

from pathlib import Path

from shared.ultralytics_env import import_yolo


def build_yolo_random(out: Path, seed: int = 0) -> Path:
    import torch

    yolo = import_yolo()
    torch.manual_seed(seed)
    model = yolo("yolov8n.yaml", task="detect")
    out.parent.mkdir(parents=True, exist_ok=True)
    # YOLO.save writes the checkpoint dict ({"model": ..., "train_args": ...}) that YOLO(path) reads back.
    model.save(out)
    return out
