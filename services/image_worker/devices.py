"""Which devices and dtype the engine runs on, resolved once from settings."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def resolve_dtype(spec: str, device: str) -> torch.dtype:
    if spec == "auto":
        # bf16 halves memory and is what Z-Image ships in; CPUs run fp32 much faster than bf16.
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return _DTYPES[spec]
