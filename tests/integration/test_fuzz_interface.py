"""Property-based fuzzing of the interface's public API from its own OpenAPI document (schemathesis).

The interface runs as a real process with tiny Z-Image workers behind the text2img and chat1to1 pools; the
LLM, selfie and profile pools are empty, so flows that need them may answer 503 ``no_healthy_worker`` and
nothing else in the 5xx range. No request, valid or not, may ever produce a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from devtools.service_process import ServiceProcess
from services.interface.app import create_app
from services.interface.settings import InterfaceSettings
from tests.integration.test_image_workers import TOKEN, image_env

pytestmark = pytest.mark.integration

# Flows that call at least one pool with no worker in this setup, and the pool(s) their 503 may name.
EMPTY_POOL_FLOWS = {
    "/v1/profile/create": ("profile", "selfie_feature"),
    "/v1/chat/1to1/imagegen": ("llm",),
    "/v1/chat/shorts/generate": ("llm", "shorts"),
    "/v1/chat/scenes/generate": ("llm", "scenes"),
    "/v1/chat/1to1/reply": ("llm",),
    # A persona from a selfie runs the profile job; a generated one asks the LLM, then the profile workers.
    "/v1/personas": ("profile", "selfie_feature"),
    "/v1/personas/generate": ("llm", "persona", "profile"),
    # An edit is the text model's image to image: its workers.
    "/v1/images/edits": ("chat1to1", "text2img", "generate"),
    # img-pod-shorts and img-pod-scenes need the LLM and their own workers.
    "/v1/images/generations": ("llm", "shorts", "scenes"),
}
# The OpenAI-compatible routes answer errors in OpenAI's shape, with the native code in ``code``.
OPENAI_PREFIXES = ("/v1/images/", "/v1/models")


def error_code(path: str, body: dict[str, Any]) -> tuple[str, str | None]:
    """(message, code) of an error body in whichever shape its route answers."""
    if path.startswith(OPENAI_PREFIXES):
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, body
        return error["message"], error["code"]
    return body.get("detail"), body.get("code")


@pytest.fixture(scope="module")
def interface(tiny_models: dict[str, Path]) -> Iterator[ServiceProcess]:
    # Small limits keep every generated image cheap: larger sizes or more steps are refused by the worker
    # (a 422 the interface must pass on as a 422, not a 5xx).
    env = image_env(
        tiny_models["zimage"],
        IMAGE_MAX_SIDE="128",
        IMAGE_DEFAULT_STEPS="1",
        IMAGE_MAX_STEPS="2",
    )
    # A chat1to1 worker also serves the role-free /v1/generate, so one process backs both pools.
    worker = ServiceProcess("services.chat1to1_worker.main", env=env)
    worker.start()
    try:
        api_env = {
            "INTERFACE_INTERNAL_TOKEN": TOKEN,
            "INTERFACE_TEXT2IMG_WORKER_URLS": worker.url,
            "INTERFACE_CHAT1TO1_WORKER_URLS": worker.url,
            # No LLM behind this interface: the guard (tests/integration/test_guard.py) is not asked here.
            "INTERFACE_GUARD": "off",
        }
        with ServiceProcess("services.interface.main", env=api_env) as api:
            yield api
    finally:
        worker.stop()


def openapi_document() -> dict[str, Any]:
    """The interface's OpenAPI document, from the app factory (no lifespan, no worker calls).

    Built at collection time because schemathesis' fixture-based loader does not work with this pytest
    (it writes ``Function._nodeid``, which pytest 9 no longer has); the test below checks that the running
    process serves the same document.
    """
    return create_app(InterfaceSettings()).openapi()


OPENAPI = openapi_document()
schema = schemathesis.openapi.from_dict(OPENAPI)


def test_served_schema_is_the_fuzzed_one(interface: ServiceProcess) -> None:
    assert httpx.get(interface.url + "/openapi.json").json() == OPENAPI


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_no_server_errors(case: schemathesis.Case, interface: ServiceProcess) -> None:
    response = case.call(base_url=interface.url, timeout=60)
    status = response.status_code
    path = case.operation.path
    assert status != 500, f"{case.method} {path} -> 500: {response.text[:300]}"
    if status >= 500:
        body = response.json()
        assert status == 503, f"{case.method} {path} -> {status}: {response.text[:300]}"
        assert error_code(path, body)[1] == "no_healthy_worker", body
        assert path in EMPTY_POOL_FLOWS, f"{path} has workers but answered 503: {body}"
        message = error_code(path, body)[0]
        assert body.get("stage") in EMPTY_POOL_FLOWS[path] or any(
            p in message for p in EMPTY_POOL_FLOWS[path]
        )
    if status >= 400:
        # Every error, whichever layer produced it, has the documented shape.
        message, code = error_code(path, response.json())
        assert isinstance(message, str) and message, response.text
        assert isinstance(code, str), response.text
