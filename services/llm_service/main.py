"""``uvicorn --factory services.llm_service.main:create_app`` (or ``services.llm_service.main:app``)."""

from __future__ import annotations

from typing import Any

from services.llm_service.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Built on first access, so importing this module builds nothing.
    if name == "app":
        return create_app()
    raise AttributeError(name)
