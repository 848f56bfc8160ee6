"""Device and dtype choice for every model the stack loads, resolved the same way everywhere.

torch is imported inside the functions: shared/ is also imported by the CPU-only interface, whose
environment has no torch.
"""

from __future__ import annotations

from typing import Any


def resolve_device(requested: str) -> str:
    """``auto``: the first CUDA device when there is one, else the CPU."""
    import torch

    if requested.strip().lower() in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_dtype(requested: str, device: str) -> Any:
    """``auto``: bf16 on GPUs (half the memory; what the checkpoints ship in), fp32 on CPUs, where bf16
    matmuls are much slower. Otherwise the named torch dtype (float32, bfloat16, float16)."""
    import torch

    if requested == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if requested not in dtypes:
        raise ValueError(f"unknown dtype {requested!r}; use auto, float32, bfloat16 or float16")
    return dtypes[requested]
