"""How a worker's error answer becomes the interface's: the client's own faults keep their status."""

from __future__ import annotations

import httpx
import pytest

from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMedia, UpstreamFailed, ValidationFailed
from shared.http_client import map_status


def answer(status: int, detail: str = "the image is corrupt or truncated") -> httpx.Response:
    body = {"detail": detail, "code": "x", "request_id": "worker-side-id"}
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, BadRequest), (413, PayloadTooLarge), (415, UnsupportedMedia), (422, ValidationFailed)],
)
def test_a_workers_client_fault_keeps_its_status_and_detail(status: int, error: type[Exception]) -> None:
    mapped = map_status(answer(status), "analyze")
    assert type(mapped) is error and mapped.status_code == status
    # A clean body of the interface's own: the worker's detail under the stage, not its request id or code.
    assert mapped.body() == {
        "detail": "analyze: the image is corrupt or truncated",
        "code": mapped.code,
        "stage": "analyze",
    }


def test_other_worker_errors_stay_upstream_failures() -> None:
    mapped = map_status(answer(500, "boom"), "analyze")
    assert isinstance(mapped, UpstreamFailed) and mapped.status_code == 502
    assert map_status(httpx.Response(200, json={}), "analyze") is None
