"""Which devices the engine runs on (several pipelines per worker), resolved once from settings."""

from __future__ import annotations

import torch


def resolve_devices(spec: str) -> list[str]:
    spec = spec.strip().lower()
    if spec in ("", "auto"):
        if torch.cuda.is_available():
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu"]
    devices = [part.strip() for part in spec.split(",") if part.strip()]
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device} asked for, but CUDA is not available")
    return devices
