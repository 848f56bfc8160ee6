"""Annotated dependencies: handlers get the engine and settings from app.state, never from globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.image_worker.engine import ImageEngine
from services.image_worker.settings import ImageSettings


async def get_engine(request: Request) -> ImageEngine:
    return request.app.state.engine


async def get_settings(request: Request) -> ImageSettings:
    return request.app.state.settings


EngineDep = Annotated[ImageEngine, Depends(get_engine)]
SettingsDep = Annotated[ImageSettings, Depends(get_settings)]
