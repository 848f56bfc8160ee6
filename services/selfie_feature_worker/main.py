"""``uvicorn --factory services.selfie_feature_worker.main:create_app`` (or ``...main:app``, built lazily)."""

from __future__ import annotations

from fastapi import FastAPI

from services.selfie_feature_worker.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> FastAPI:
    if name == "app":
        return create_app()
    raise AttributeError(name)
