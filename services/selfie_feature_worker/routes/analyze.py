"""``POST /v1/profile/analyze``: one selfie in (multipart ``file``), face, quality and features out."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile

from services.selfie_feature_worker.admission import Admission, run_in_thread
from services.selfie_feature_worker.routes.deps import AnalyzerDep, SettingsDep
from shared.errors import ImgPodError, InferenceFailed, PayloadTooLarge
from shared.models import AnalyzeResponse
from shared.test_hooks import Gate

router = APIRouter(prefix="/v1/profile", tags=["profile"])
log = logging.getLogger(__name__)


@router.post("/analyze", response_model=AnalyzeResponse)
async def analyze(
    request: Request,
    file: Annotated[UploadFile, File(description="the selfie: JPEG, PNG or WebP")],
    analyzer: AnalyzerDep,
    settings: SettingsDep,
) -> AnalyzeResponse:
    state = request.app.state
    # The multipart parser already knows the size: an oversized upload is a 413 whether or not we are busy.
    if file.size is not None and file.size > settings.max_upload_bytes:
        raise PayloadTooLarge(f"image is larger than {settings.max_upload_bytes} bytes")
    admission: Admission = state.admission
    async with admission.slot():
        gate: Gate | None = state.gate
        if gate is not None:
            await gate.passthrough()
        # Read one byte past the limit: enough to tell "too large" without holding an unbounded upload.
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge(f"image is larger than {settings.max_upload_bytes} bytes")
        try:
            # Decoding, detection and generation all block: a worker thread, off the event loop.
            result = await run_in_thread(analyzer.analyze, data)
        except ImgPodError:
            raise
        except Exception:
            # The traceback (with the request id) goes to the log; the client gets a short public message,
            # never the exception text, which can name files and internals.
            log.exception("selfie analysis failed", extra={"stage": "analyze"})
            raise InferenceFailed("the selfie analysis failed", stage="analyze") from None
    for stage, ms in result.timings_ms.items():
        state.stage_seconds.labels(stage).observe(ms / 1000)
    state.analyses.labels("yes" if result.face.detected else "no").inc()
    if not result.features_parsed:
        state.vlm_unparsed.inc()
    return result
