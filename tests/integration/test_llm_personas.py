"""``POST /v1/personas/generate`` over HTTP on the tiny Qwen2.5, and the interface's half over a real pool.

What really happens on random weights: the model never writes the schema's JSON. In process (transformers
has no constrained decoding) and through an OpenAI-compatible server that does not constrain (the in-process
``/v1/chat/completions``, llama.cpp's server, which ignores vLLM's ``structured_outputs`` field), each answer
is read, found unusable, generated once more, and the call is a 502 ``unusable_model_output``: never a
made-up persona. With ``LLM_TEMPLATE_FALLBACK`` on, the answer is a persona labelled ``source: "template"``.
A constraining server (vLLM) is the GPU pod's; the body it gets is pinned in tests/unit.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.service_process import ServiceProcess, all_running
from services.interface.flows import Flows
from services.interface.guard import Guard
from services.interface.persona_generation import generate_persona
from services.interface.pool_set import build_pools
from services.interface.settings import InterfaceSettings
from shared.errors import PolicyBlocked
from shared.http_client import make_async_client
from shared.metrics import ServiceMetrics
from shared.models import GeneratedPersona, PersonaBrief
from tests.integration.test_llm_openai_server import LlamaServer, _service_env, gguf, llama_venv_python
from tests.integration.test_llm_service import _env

pytestmark = pytest.mark.integration

TOKEN = "llm-personas-token-3c9a"
TIMEOUT = httpx.Timeout(120.0, connect=5.0)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BRIEF = {"brief": "a cheerful barista from Lisbon"}
__all__ = ["gguf"]  # llama.cpp's model, built by test_llm_openai_server's fixture (skipped where absent)


@pytest.fixture(scope="module")
def services(tiny_models: dict[str, Path]) -> Iterator[dict[str, ServiceProcess]]:
    """In process (fallback off), an OpenAI-server client of it, and one whose model is missing with the
    labelled fallback on."""
    inproc = ServiceProcess(
        "services.llm_service.main",
        env=_env(tiny_models, LLM_BACKEND="transformers", LLM_INTERNAL_TOKEN=TOKEN),
    )
    # Its health turns 200 once the in-process server lists its model: all three load side by side.
    client_env = {"LLM_BACKEND": "openai", "LLM_VLLM_BASE_URL": inproc.url, "LLM_VLLM_API_KEY": TOKEN}
    client = ServiceProcess(
        "services.llm_service.main", env=_env(tiny_models, **client_env, LLM_INTERNAL_TOKEN=TOKEN)
    )
    missing = {"LLM_MODEL_ID": "/nonexistent/llm-model", "LLM_TEMPLATE_FALLBACK": "true"}
    fallback = ServiceProcess(
        "services.llm_service.main",
        env=_env(tiny_models, LLM_BACKEND="transformers", LLM_INTERNAL_TOKEN=TOKEN, **missing),
    )
    with all_running([inproc, client, fallback]):
        yield {"inproc": inproc, "client": client, "fallback": fallback}


def post(svc: ServiceProcess, body: object) -> httpx.Response:
    return httpx.post(svc.url + "/v1/personas/generate", json=body, headers=AUTH, timeout=TIMEOUT)


def persona_generations(svc: ServiceProcess) -> int:
    """Model calls the persona route made, from the service's own metrics."""
    text = httpx.get(svc.url + "/metrics", headers=AUTH, timeout=TIMEOUT).text
    found = re.search(r'^imgpod_llm_generation_seconds_count\{route="persona"\} (\S+)$', text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def completions_answered(svc: ServiceProcess) -> int:
    text = httpx.get(svc.url + "/metrics", headers=AUTH, timeout=TIMEOUT).text
    found = re.search(r'^imgpod_llm_generation_seconds_count\{route="openai"\} (\S+)$', text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def assert_unusable_after_retry(resp: httpx.Response) -> None:
    assert resp.status_code == 502, resp.text
    body = resp.json()
    assert body["code"] == "unusable_model_output" and body["request_id"]
    assert body["detail"].startswith("no usable persona after 2 attempt(s)")
    assert "/tmp" not in resp.text and "Traceback" not in resp.text


def test_in_process_junk_is_read_retried_once_then_502(services: dict[str, ServiceProcess]) -> None:
    inproc = services["inproc"]
    before = persona_generations(inproc)
    assert_unusable_after_retry(post(inproc, BRIEF))
    assert persona_generations(inproc) == before + 2


def test_through_an_openai_server_the_schema_is_accepted_and_the_answer_still_read(
    services: dict[str, ServiceProcess],
) -> None:
    """The client sends ``structured_outputs: {"json": schema}``; the in-process server's strict request
    model takes it (a refused body would be a 502 ``upstream_failed``) and answers twice, unconstrained."""
    client, inproc = services["client"], services["inproc"]
    before = completions_answered(inproc)
    assert_unusable_after_retry(post(client, BRIEF))
    assert completions_answered(inproc) == before + 2


def test_a_bad_brief_is_the_clients_422(services: dict[str, ServiceProcess]) -> None:
    for body in ({"brief": ""}, {"brief": "x" * 501}, {"brief": "a barista", "age": 30}):
        resp = post(services["fallback"], body)
        assert resp.status_code == 422 and resp.json()["code"] == "validation_error", resp.text


def test_the_model_down_with_the_fallback_on_is_a_labelled_template(
    services: dict[str, ServiceProcess],
) -> None:
    resp = post(services["fallback"], {"brief": "a 52 year old jazz pianist from New Orleans"})
    assert resp.status_code == 200, resp.text
    generated = GeneratedPersona.model_validate(resp.json())
    assert generated.source == "template" and generated.model == "template" and generated.attempts == 0
    assert generated.persona.age == 52
    assert generated.persona.features.description == "a 52 year old jazz pianist from New Orleans"


def _flows(llm: ServiceProcess, metrics: ServiceMetrics) -> tuple[Flows, httpx.AsyncClient]:
    settings = InterfaceSettings(llm_urls=[llm.url])  # type: ignore[call-arg]
    client = make_async_client()
    pools = build_pools(settings, client, TOKEN, metrics)
    return Flows(pools, settings, Guard(pools.llm, settings, metrics), metrics), client


def test_the_interface_gets_a_checked_persona_over_the_pool(services: dict[str, ServiceProcess]) -> None:
    fallback = services["fallback"]

    async def run() -> GeneratedPersona:
        flows, client = _flows(fallback, ServiceMetrics("personas"))
        try:
            await flows.pools.llm.probe_all()  # what the interface does at startup: a worker is probed first
            return await generate_persona(flows, PersonaBrief(brief="  a cheerful barista from Lisbon "))
        finally:
            await client.aclose()

    generated = asyncio.run(run())
    assert generated.source == "template" and generated.persona.age >= 18
    assert generated.persona.features.description == "a cheerful barista from Lisbon"
    assert generated.timings_ms["persona"] > 0


@pytest.mark.parametrize("brief", ["a 16 year old skater", "a shy schoolgirl", "a woman who likes rape play"])
def test_the_interface_refuses_a_brief_before_any_call(
    services: dict[str, ServiceProcess], brief: str
) -> None:
    """Against the in-process model: a call that reached it would cost two generations and show in them."""
    inproc = services["inproc"]
    before = persona_generations(inproc)

    async def run() -> None:
        flows, client = _flows(inproc, ServiceMetrics("personas"))
        try:
            await generate_persona(flows, PersonaBrief(brief=brief))
        finally:
            await client.aclose()

    with pytest.raises(PolicyBlocked) as err:
        asyncio.run(run())
    assert err.value.status_code == 422 and err.value.stage == "policy"
    assert persona_generations(inproc) == before


# --- llama.cpp's server (skipped where scripts/install_llama_cpp.sh was not run) -------------------------


@pytest.fixture(scope="module")
def llama(
    gguf: Path, tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, LlamaServer]]:
    log = tmp_path_factory.mktemp("llama-personas") / "server.log"
    server = LlamaServer(llama_venv_python(), gguf, log, n_ctx=2048)
    try:
        server.start()
        env = {**_service_env(tiny_models, server.url), "LLM_INTERNAL_TOKEN": TOKEN}
        llm = ServiceProcess("services.llm_service.main", env=env)
        with all_running([llm]):
            yield llm, server
    finally:
        server.stop()


def test_through_llama_cpp_the_answer_is_read_and_retried(llama: tuple[ServiceProcess, LlamaServer]) -> None:
    """llama.cpp's server takes the body (it ignores vLLM's field) and answers twice; random weights write
    no persona, so the call is the same 502 as in process."""
    llm, server = llama
    before = server.completions_served()
    assert_unusable_after_retry(post(llm, BRIEF))
    assert server.completions_served() == before + 2
