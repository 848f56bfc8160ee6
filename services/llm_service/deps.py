"""Annotated dependencies: handlers get the engine and settings from app.state, never from globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.llm_service.engine import LlmEngine
from services.llm_service.settings import LlmSettings


async def get_engine(request: Request) -> LlmEngine:
    return request.app.state.engine


async def get_settings(request: Request) -> LlmSettings:
    return request.app.state.settings


EngineDep = Annotated[LlmEngine, Depends(get_engine)]
SettingsDep = Annotated[LlmSettings, Depends(get_settings)]
