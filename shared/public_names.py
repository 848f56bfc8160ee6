"""Public names for models: what bodies and unauthenticated health may say, never a server's file path.

A model configured as a hub id (``Tongyi-MAI/Z-Image-Turbo``) is already public. One configured as a local
path (``/srv/models/zimage``) would tell a stranger how the pod's disk is laid out; it is named by its last
path component instead, unless the operator chose a public name (the ``served_model_name`` setting, after
vLLM's ``--served-model-name``).
"""

from __future__ import annotations

from pathlib import Path, PurePath


def looks_like_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~", ".")) or "\\" in model_id or model_id.count("/") > 1


def is_local_model(model_id: str) -> bool:
    """Whether a model id names a folder on this machine rather than a hub repo: it is written as a path, or
    such a path exists. For loading and fetching; ``looks_like_path`` is the stricter test for naming."""
    return model_id.startswith(("/", "./", "../", "~")) or Path(model_id).expanduser().exists()


def public_model_id(model_id: str, served_name: str | None = None) -> str:
    if served_name:
        return served_name
    if not looks_like_path(model_id):
        return model_id
    return PurePath(model_id.rstrip("/\\")).name or "local-model"
