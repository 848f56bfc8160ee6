"""Generated personas: the schema the model is held to, how an answer is read, the retry / 502 / template /
422 decisions over a scripted backend, the request body a vLLM server gets, and the interface's brief check.

The model path itself (tiny Qwen2.5, in process and through an OpenAI-compatible server) is
tests/integration/test_llm_personas.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from services.interface.flows import Flows
from services.interface.guard import Guard
from services.interface.persona_generation import check_brief, generate_persona
from services.interface.pool_set import build_pools
from services.interface.settings import InterfaceSettings
from services.llm_service.backends.vllm_backend import OpenAIServerBackend
from services.llm_service.persona_prompts import PERSONA_SCHEMA, build_persona_messages
from services.llm_service.persona_template import template_persona
from services.llm_service.persona_writer import ATTEMPTS, read_persona, write_persona
from services.llm_service.routes.openai import StructuredOutputs
from services.llm_service.settings import LlmSettings
from shared.errors import PolicyBlocked, UnusableModelOutput, UpstreamFailed
from shared.metrics import ServiceMetrics
from shared.models import Features, GeneratedPersona, PersonaBrief, PersonaDraft
from tests.unit.test_llm_engine import make_engine

FEATURES = {
    "hair_color": "dark brown",
    "hair_style": "short curly",
    "eye_color": "brown",
    "skin_tone": "olive",
    "age_range": "25-34",
    "gender_presentation": "woman",
    "facial_hair": None,
    "glasses": False,
    "expression": "warm smile",
    "accessories": ["apron"],
    "description": "a barista with flour on her apron, smiling behind the counter",
}
ANSWER = {
    "name": "Inês Duarte",
    "age": 29,
    "features": FEATURES,
    "personality": "Cheerful, curious and quick with a joke; knows every regular by name.",
    "speaking_style": "Short warm sentences, the odd Portuguese word, lots of questions.",
}
BRIEF = PersonaBrief(brief="a cheerful barista from Lisbon")


def answer(**changes: Any) -> str:
    return json.dumps({**ANSWER, **changes})


# --- the schema -------------------------------------------------------------------------------------------


def test_schema_is_the_draft_with_the_selfie_features_and_everything_required() -> None:
    props = PERSONA_SCHEMA["properties"]
    assert set(props) == set(PersonaDraft.model_fields) == set(PERSONA_SCHEMA["required"])
    assert props["age"] == {"maximum": 100, "minimum": 18, "type": "integer"}
    features = PERSONA_SCHEMA["$defs"]["Features"]
    assert set(features["properties"]) == set(Features.model_fields) == set(features["required"])
    assert features["additionalProperties"] is False and PERSONA_SCHEMA["additionalProperties"] is False
    # Same bounds as the selfie analysis's own schema: a generated look is a Features, nothing looser.
    own = Features.model_json_schema()["properties"]
    assert features["properties"]["description"]["anyOf"] == own["description"]["anyOf"]
    assert props["features"] == {"$ref": "#/$defs/Features"}
    assert "title" not in json.dumps(PERSONA_SCHEMA)


def test_the_prompt_asks_for_an_adult_and_shows_every_field() -> None:
    system, user = build_persona_messages("a cheerful barista from Lisbon")
    assert "adult" in system["content"] and "never a child" in system["content"]
    assert all(
        f'"{name}"' in system["content"] for name in [*PersonaDraft.model_fields, *Features.model_fields]
    )
    assert user == {"role": "user", "content": "Brief: a cheerful barista from Lisbon"}


@pytest.mark.parametrize("age", [17, 0, 101])
def test_an_age_outside_18_to_100_is_not_a_persona(age: int) -> None:
    with pytest.raises(ValidationError):
        PersonaDraft.model_validate_json(answer(age=age))


@pytest.mark.parametrize("age_range", ["15-17", "16", "17-25", "teen 13-19"])
def test_a_minors_age_range_in_the_look_is_not_a_persona(age_range: str) -> None:
    with pytest.raises(ValidationError, match="adult"):
        PersonaDraft.model_validate_json(answer(features={**FEATURES, "age_range": age_range}))


def test_policy_text_holds_every_word_that_reaches_prompts() -> None:
    text = PersonaDraft.model_validate_json(answer()).policy_text()
    assert all(part in text for part in ("Inês Duarte", "Cheerful", "Portuguese", "olive", "apron", "25-34"))


# --- reading an answer ------------------------------------------------------------------------------------


def test_a_fenced_answer_is_read() -> None:
    draft = read_persona(f"```json\n{answer()}\n```")
    assert isinstance(draft, PersonaDraft) and draft.name == "Inês Duarte" and draft.age == 29


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ahoy ahoy ahoy", "no JSON object"),
        ('{"name": "x", ', "no JSON object"),
        ('{"name": "x",}', "not valid JSON"),
        (json.dumps({**ANSWER, "age": 12}), "not the persona schema (age)"),
        (json.dumps({**ANSWER, "<b>mood</b>": "x"}), "not the persona schema (unknown field)"),
        (json.dumps({**ANSWER, "features": {**FEATURES, "hair": "x"}}), "not the persona schema (features)"),
        (
            json.dumps({k: v for k, v in ANSWER.items() if k != "features"}),
            "not the persona schema (features)",
        ),
    ],
)
def test_anything_else_is_refused_in_own_words(text: str, reason: str) -> None:
    assert read_persona(text) == reason


# --- the decisions, over a scripted backend ---------------------------------------------------------------


def test_a_valid_answer_is_the_persona_and_the_schema_is_sent() -> None:
    engine, backend = make_engine([answer()])
    out = asyncio.run(write_persona(engine, BRIEF))
    assert out.source == "model" and out.attempts == 1 and out.persona.name == "Inês Duarte"
    assert backend.kwargs[0]["json_schema"] == PERSONA_SCHEMA
    assert "Brief: a cheerful barista from Lisbon" in backend.calls[0][-1]["content"]


def test_junk_is_retried_once_with_the_next_seed_then_502() -> None:
    engine, backend = make_engine(["{not json", answer(age=15)], seed=7)
    with pytest.raises(UnusableModelOutput) as err:
        asyncio.run(write_persona(engine, BRIEF))
    assert len(backend.calls) == ATTEMPTS == 2
    assert [k["seed"] for k in backend.kwargs] == [7, 8]
    assert err.value.status_code == 502 and "not the persona schema (age)" in err.value.detail


def test_the_retry_can_succeed() -> None:
    engine, _ = make_engine(["nothing useful", answer()])
    out = asyncio.run(write_persona(engine, BRIEF))
    assert out.source == "model" and out.attempts == 2


def test_junk_twice_is_a_labelled_template_only_with_the_fallback_on() -> None:
    engine, _ = make_engine(["junk", "junk"], template_fallback=True)
    out = asyncio.run(write_persona(engine, PersonaBrief(brief="a 45 year old lighthouse keeper")))
    assert out.source == "template" and out.model == "template" and out.attempts == 2
    assert out.persona.age == 45 and out.persona.features.description == "a 45 year old lighthouse keeper"


@pytest.mark.parametrize(
    "unsafe",
    [
        {"personality": "A shy schoolgirl who loves her teddy bear."},  # a minor, in words
        {"features": {**FEATURES, "description": "looks like a 15 year old"}},  # a minor, by age
    ],
)
def test_an_unsafe_answer_twice_is_422_never_a_template(unsafe: dict[str, Any]) -> None:
    engine, backend = make_engine([answer(**unsafe), answer(**unsafe)], template_fallback=True)
    with pytest.raises(PolicyBlocked) as err:
        asyncio.run(write_persona(engine, BRIEF))
    assert len(backend.calls) == 2 and err.value.stage == "persona_output"


def test_template_is_bounded_deterministic_and_adult() -> None:
    long_brief = "a retired sea captain who tells stories " * 12  # near the 500-character limit
    first, again = template_persona(long_brief[:500]), template_persona(long_brief[:500])
    assert first == again and first.age == 30
    assert len(first.personality) <= 500 and len(first.features.description or "") <= 400
    assert template_persona("aged 17, a student").age == 30  # a minor's age is never copied
    assert template_persona("a 35-year-old chef").age == 35


def test_a_model_that_is_down_is_a_template_with_no_attempt() -> None:
    engine, _ = make_engine([], template_fallback=True)
    engine.state = "error"
    out = asyncio.run(write_persona(engine, BRIEF))
    assert out.source == "template" and out.attempts == 0
    assert GeneratedPersona.model_validate(out.model_dump()) == out


# --- what an OpenAI-compatible server gets ----------------------------------------------------------------


def _recording(settings: LlmSettings, bodies: list[dict[str, Any]]) -> OpenAIServerBackend:
    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        message = {"content": answer()}
        return httpx.Response(200, json={"choices": [{"message": message, "finish_reason": "stop"}]})

    backend = OpenAIServerBackend(settings)
    backend._client = httpx.AsyncClient(base_url="http://server", transport=httpx.MockTransport(handler))
    return backend


@pytest.mark.parametrize("on", [True, False])
def test_the_schema_goes_as_vllm_structured_outputs_json(on: bool) -> None:
    bodies: list[dict[str, Any]] = []
    backend = _recording(LlmSettings(backend="openai", structured_outputs=on), bodies)
    messages = build_persona_messages(BRIEF.brief)
    asyncio.run(backend.chat(messages, max_tokens=64, temperature=0.0, json_schema=PERSONA_SCHEMA))
    if on:
        assert bodies[0]["structured_outputs"] == {"json": PERSONA_SCHEMA}
    else:
        assert "structured_outputs" not in bodies[0]


def test_the_in_process_openai_route_takes_either_kind_but_one() -> None:
    assert StructuredOutputs.model_validate({"json": PERSONA_SCHEMA}).json_schema == PERSONA_SCHEMA
    assert StructuredOutputs.model_validate({"regex": "a|b"}).regex == "a|b"
    for both_or_none in ({}, {"regex": "a", "json": {}}):
        with pytest.raises(ValidationError):
            StructuredOutputs.model_validate(both_or_none)


# --- the interface's check of the brief -------------------------------------------------------------------


@pytest.mark.parametrize(
    "brief",
    [
        "a 16 year old cheerleader",
        "a shy schoolgirl from Osaka",
        "a girl, 12, who loves horses",
        "a teenage boy who skates",
    ],
)
def test_a_brief_for_a_minor_is_policy_blocked(brief: str) -> None:
    with pytest.raises(PolicyBlocked) as err:
        asyncio.run(check_brief(brief))
    assert err.value.status_code == 422 and err.value.code == "policy_blocked"


def test_a_hard_blocked_brief_is_policy_blocked() -> None:
    with pytest.raises(PolicyBlocked, match="abuse or lack of consent"):
        asyncio.run(check_brief("a woman who enjoys rape fantasies"))


@pytest.mark.parametrize(
    "brief", ["a cheerful barista from Lisbon", "a 45 year old lighthouse keeper", "a sultry jazz singer"]
)
def test_an_adult_brief_passes(brief: str) -> None:
    asyncio.run(check_brief(brief))


# --- the interface's check of the answer, whatever the LLM service let through ----------------------------


def _interface_call(answer_body: dict[str, Any], brief: str = BRIEF.brief) -> GeneratedPersona:
    """``generate_persona`` over a real pool whose one worker is a recorded stand-in of the LLM service (a
    version that checks less, or a wrong one): what the interface does with the answer is under test."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok", "service": "llm_service", "concurrency": 1})
        return httpx.Response(200, json=answer_body)

    async def run() -> GeneratedPersona:
        settings = InterfaceSettings(llm_urls=["http://llm.test"])  # type: ignore[call-arg]
        metrics = ServiceMetrics("personas-unit")
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        pools = build_pools(settings, client, "token", metrics)
        await pools.llm.probe_all()
        try:
            return await generate_persona(
                Flows(pools, settings, Guard(pools.llm, settings, metrics)), PersonaBrief(brief=brief)
            )
        finally:
            await client.aclose()
            assert calls.count("/v1/personas/generate") == 1

    return asyncio.run(run())


def _llm_body(**persona_changes: Any) -> dict[str, Any]:
    return {"persona": {**ANSWER, **persona_changes}, "source": "model", "model": "qwen", "attempts": 1}


def test_the_interface_passes_a_checked_answer_on_with_its_own_timings() -> None:
    out = _interface_call(_llm_body())
    assert (
        out.persona.name == "Inês Duarte"
        and out.source == "model"
        and set(out.timings_ms) == {"persona", "total"}
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"personality": "Acts like a little schoolgirl."},
        {"features": {**FEATURES, "description": "a woman who is into rape play"}},
    ],
)
def test_the_interface_refuses_an_unsafe_answer(changes: dict[str, Any]) -> None:
    with pytest.raises(PolicyBlocked) as err:
        _interface_call(_llm_body(**changes))
    assert err.value.stage == "persona_output" and err.value.code == "policy_blocked"


@pytest.mark.parametrize(
    "changes", [{"age": 16}, {"features": {**FEATURES, "age_range": "14-17"}}, {"name": ""}]
)
def test_the_interface_refuses_an_answer_off_the_schema_as_502(changes: dict[str, Any]) -> None:
    with pytest.raises(UpstreamFailed) as err:
        _interface_call(_llm_body(**changes))
    assert err.value.status_code == 502 and err.value.stage == "persona"
