"""``POST /v1/profile/analyze``: one selfie in (multipart ``file``), face, quality and features out."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile

from services.selfie_feature_worker.routes.deps import AnalyzerDep, SettingsDep
from shared.errors import PayloadTooLarge
from shared.models import AnalyzeResponse

router = APIRouter(prefix="/v1/profile", tags=["profile"])


@router.post("/analyze", response_model=AnalyzeResponse)
async def analyze(
    request: Request,
    file: Annotated[UploadFile, File(description="the selfie: JPEG, PNG or WebP")],
    analyzer: AnalyzerDep,
    settings: SettingsDep,
) -> AnalyzeResponse:
    # Read one byte past the limit: enough to tell "too large" without holding an unbounded upload.
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"image is larger than {settings.max_upload_bytes} bytes")
    # Decoding, detection and generation all block: run them in a worker thread, off the event loop.
    result = await asyncio.to_thread(analyzer.analyze, data)
    state = request.app.state
    for stage, ms in result.timings_ms.items():
        state.stage_seconds.labels(stage).observe(ms / 1000)
    state.analyses.labels("yes" if result.face.detected else "no").inc()
    if not result.features_parsed:
        state.vlm_unparsed.inc()
    return result
