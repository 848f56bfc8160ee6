"""Dependency aliases for the routes, read from ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.selfie_feature_worker.pipeline import SelfieAnalyzer
from services.selfie_feature_worker.settings import SelfieSettings
from shared.errors import ModelUnavailable


async def get_settings(request: Request) -> SelfieSettings:
    return request.app.state.settings


async def get_analyzer(request: Request) -> SelfieAnalyzer:
    state = request.app.state.models
    if state.analyzer is None:
        if state.loading:
            raise ModelUnavailable("models are still loading; retry shortly")
        raise ModelUnavailable(state.error or "models are not loaded")
    return state.analyzer


SettingsDep = Annotated[SelfieSettings, Depends(get_settings)]
AnalyzerDep = Annotated[SelfieAnalyzer, Depends(get_analyzer)]
