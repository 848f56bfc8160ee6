"""``POST /v1/identity/compare``: a reference image and 1-4 candidates in (JSON, base64), one score each out.

Each score is the cosine similarity of the largest face's embedding in a candidate to the largest face's in
the reference, or null with the reason when either has no face (``IdentityCompareResponse``). It takes the
same admission slots as ``/v1/profile/analyze``: both hold the same GPU and the same VLM.

The body is read raw and parsed in the worker thread with everything else: up to five images in base64 are
megabytes of JSON, too much to parse on the event loop. The schema is still the route's documented body.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from services.selfie_feature_worker.admission import Admission, run_in_thread
from services.selfie_feature_worker.identity import IdentityComparer
from services.selfie_feature_worker.routes.deps import AnalyzerDep
from shared.errors import ImgPodError, InferenceFailed, ModelUnavailable
from shared.models import IdentityCompareRequest, IdentityCompareResponse
from shared.test_hooks import Gate

router = APIRouter(prefix="/v1/identity", tags=["identity"])
log = logging.getLogger(__name__)


async def get_comparer(request: Request, _loaded: AnalyzerDep) -> IdentityComparer:
    # AnalyzerDep first: while loading, or after a failed load, the same 503 as the analyses.
    models = request.app.state.models
    comparer: IdentityComparer | None = models.identity
    if comparer is None:
        raise ModelUnavailable(
            models.identity_error or "identity scoring is off on this worker (SELFIE_IDENTITY_EMBEDDER=off)"
        )
    return comparer


ComparerDep = Annotated[IdentityComparer, Depends(get_comparer)]

_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": IdentityCompareRequest.model_json_schema()}},
    }
}


@router.post("/compare", response_model=IdentityCompareResponse, openapi_extra=_BODY)
async def compare(request: Request, comparer: ComparerDep) -> IdentityCompareResponse:
    state = request.app.state
    admission: Admission = state.admission
    async with admission.slot():
        gate: Gate | None = state.gate
        if gate is not None:
            await gate.passthrough()
        # The edge middleware has bounded the body (max_json_bytes) before it gets here.
        body = await request.body()
        try:
            result = await run_in_thread(comparer.compare_json, body)
        except ImgPodError:
            raise
        except Exception:
            # The traceback (with the request id) goes to the log; the client gets a short public message.
            log.exception("identity compare failed", extra={"stage": "identity"})
            raise InferenceFailed("the identity compare failed", stage="identity") from None
    outcomes = state.identity_scores
    for score in result.scores:
        outcomes.labels(score.reason or "scored").inc()
    return result
