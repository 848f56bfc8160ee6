"""Checks that a downloaded diffusers pipeline folder is whole before the worker loads it.

A download cut short (disk full, a killed ``fetch_models``) leaves a truncated or missing shard; diffusers
then fails deep inside loading with a library message, or worse loads some weights and not others. These
checks read only file sizes and safetensors headers (a few KB), so they cost nothing next to the load.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin")
_INDEX_SUFFIX = ".index.json"
# A safetensors file starts with an 8-byte little-endian header length, then that much JSON.
_HEADER_LEN = struct.Struct("<Q")
_MAX_HEADER = 100 * 1024 * 1024


class ModelFilesInvalid(RuntimeError):
    """A file the pipeline needs is missing, empty or shorter than its own header (or the hub) says."""


def safetensors_expected_size(path: Path) -> int:
    """The size a whole safetensors file has: header length field + header + the last tensor's end."""
    with path.open("rb") as f:
        raw = f.read(_HEADER_LEN.size)
        if len(raw) < _HEADER_LEN.size:
            raise ModelFilesInvalid(f"{path} is shorter than a safetensors header")
        (header_len,) = _HEADER_LEN.unpack(raw)
        if header_len > _MAX_HEADER:
            raise ModelFilesInvalid(f"{path} has an implausible safetensors header length {header_len}")
        header_raw = f.read(header_len)
    if len(header_raw) < header_len:
        raise ModelFilesInvalid(f"{path} is cut inside its safetensors header")
    try:
        header = json.loads(header_raw)
    except ValueError as exc:
        raise ModelFilesInvalid(f"{path} has an unreadable safetensors header") from exc
    end = max(
        (t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
        default=0,
    )
    return _HEADER_LEN.size + header_len + end


def _component_dirs(root: Path) -> list[Path]:
    index = json.loads((root / "model_index.json").read_text())
    # Entries like "vae": ["diffusers", "AutoencoderKL"] name a component folder; "_class_name" and
    # friends are metadata, and a [null, null] entry is a component the pipeline does without.
    return [
        root / name
        for name, spec in index.items()
        if not name.startswith("_") and isinstance(spec, list) and spec and spec[0] is not None
    ]


def verify_pipeline_dir(root: Path, expected_sizes: dict[str, int] | None = None) -> list[str]:
    """Raise ``ModelFilesInvalid`` unless every component and weight file is present and whole.

    ``expected_sizes`` (relative path -> bytes, from the hub's file listing) is checked when given. Returns
    the weight files checked (relative paths), for the caller's log.
    """
    if not (root / "model_index.json").is_file():
        raise ModelFilesInvalid(f"{root} has no model_index.json")
    checked: list[str] = []
    for component in _component_dirs(root):
        if not component.is_dir():
            raise ModelFilesInvalid(f"component folder {component.name} is missing")
        weights = [p for p in sorted(component.iterdir()) if p.name.endswith(WEIGHT_SUFFIXES)]
        # Models (transformer, VAE, text encoder) have a config.json; schedulers and tokenizers do not and
        # hold no weights.
        if (component / "config.json").is_file() and not weights:
            raise ModelFilesInvalid(f"component {component.name} has no weight files")
        for index in (p for p in sorted(component.iterdir()) if p.name.endswith(_INDEX_SUFFIX)):
            for shard in sorted(set(json.loads(index.read_text()).get("weight_map", {}).values())):
                if not (component / shard).is_file():
                    raise ModelFilesInvalid(f"shard {component.name}/{shard} is missing")
        for path in weights:
            rel = path.relative_to(root).as_posix()
            size = path.stat().st_size
            if size == 0:
                raise ModelFilesInvalid(f"{rel} is empty")
            if path.suffix == ".safetensors" and size < (want := safetensors_expected_size(path)):
                raise ModelFilesInvalid(f"{rel} is truncated: {size} bytes of {want}")
            checked.append(rel)
    for rel, want in (expected_sizes or {}).items():
        path = root / rel
        if not path.is_file():
            raise ModelFilesInvalid(f"{rel} is missing")
        if (size := path.stat().st_size) != want:
            raise ModelFilesInvalid(f"{rel} is {size} bytes, the hub lists {want}")
    return checked
