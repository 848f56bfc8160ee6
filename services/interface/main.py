"""The interface: ``uvicorn --factory services.interface.main:create_app`` (or ``...main:app``)."""

from __future__ import annotations

from typing import Any

from services.interface.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        return create_app()
    raise AttributeError(name)
