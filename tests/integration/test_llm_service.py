"""The LLM service over HTTP on the tiny Qwen2 model, in-process (transformers) and through its vLLM client.

Instance A runs the transformers backend. Instance B runs the ``vllm`` backend against A's OpenAI-compatible
``/v1/chat/completions``: a real HTTP server, so the production client is exercised end to end. The same
contract tests run against both. Random weights emit junk text, so tests assert the contract (shape, persona
traits, coverage clause, word counts or 502), not the content.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from devtools.service_process import ServiceProcess, all_running, free_port
from services.llm_service.cleaning import phrase_cuts, word_count
from services.llm_service.prompts import COVERAGE_CLAUSE
from services.llm_service.token_budget import ENCODER_CLOSE, ENCODER_OPEN
from shared.models import Features
from shared.policy import COVERAGE_PHRASE, COVERAGE_SUFFIX
from shared.reply_templates import template_reply
from shared.styles import STYLE_PHRASES

pytestmark = pytest.mark.integration

TOKEN_A = "llm-test-token-a-7f3e"
TOKEN_B = "llm-test-token-b-91c2"
TIMEOUT = httpx.Timeout(60.0, connect=5.0)
# B's public name for its model; its calls to A (its "vLLM") must still use the real id, a local path.
SERVED_NAME = "imgpod-chat-tiny"
PERSONA = {
    "hair_color": "auburn",
    "hair_style": "long wavy",
    "eye_color": "green",
    "skin_tone": "fair",
    "age_range": "25-34",
    "gender_presentation": "woman",
    "facial_hair": "none",
    "glasses": True,
    "accessories": ["silver necklace"],
}
TRAITS = ["auburn", "long wavy", "green eyes", "fair skin", "25-34", "woman", "clean-shaven", "glasses",
          "silver necklace"]  # fmt: skip
SIXTY_WORDS = (
    "Hey so I was thinking it would be really lovely if you could make a picture of us walking together "
    "along the quiet beach at sunset with the little dog running ahead of us and the waves rolling in "
    "softly while seagulls fly overhead and the sky turns orange and pink above the calm water tonight, "
    "ok my dear friend"
)


def _env(models: dict[str, Path], **extra: str) -> dict[str, str]:
    return {
        "LLM_MODEL_ID": str(models["qwen_lm"]),
        "LLM_MIN_NEW_TOKENS": "16",  # random weights often stop at once; make them say something
        "LLM_SEED": "1234",
        "LLM_EXPAND_MAX_NEW_TOKENS": "48",
        "LLM_SHORTEN_MAX_NEW_TOKENS": "32",
        "LLM_CAPTION_MAX_NEW_TOKENS": "40",
        "LLM_REPLY_MAX_NEW_TOKENS": "32",
        "LLM_REQUEST_TIMEOUT_S": "30",
        "LLM_TEMPLATE_FALLBACK": "false",
        # The chat contract on the tiny chat model; the guard is tests/integration/test_guard.py.
        "LLM_GUARD_BACKEND": "off",
        **extra,
    }


class Cluster:
    def __init__(self, models: dict[str, Path]) -> None:
        self.a = ServiceProcess(
            "services.llm_service.main",
            env=_env(models, LLM_BACKEND="transformers", LLM_INTERNAL_TOKEN=TOKEN_A),
            wait_healthy=False,
        )
        missing = {"LLM_BACKEND": "transformers", "LLM_MODEL_ID": "/nonexistent/llm-model"}
        self.missing = ServiceProcess(
            "services.llm_service.main",
            env=_env(models, **missing, LLM_INTERNAL_TOKEN=TOKEN_A),
            wait_healthy=False,
        )
        self.missing_fallback = ServiceProcess(
            "services.llm_service.main",
            env=_env(models, **missing, LLM_INTERNAL_TOKEN=TOKEN_A, LLM_TEMPLATE_FALLBACK="true"),
            wait_healthy=False,
        )
        self.unreachable = ServiceProcess(
            "services.llm_service.main",
            env=_env(
                models,
                LLM_BACKEND="vllm",
                LLM_VLLM_BASE_URL=f"http://127.0.0.1:{free_port()}",
                LLM_INTERNAL_TOKEN=TOKEN_B,
            ),
            wait_healthy=False,
        )
        vllm_env = {
            "LLM_BACKEND": "vllm",
            "LLM_VLLM_BASE_URL": self.a.url,
            "LLM_VLLM_API_KEY": TOKEN_A,  # B authenticates to A like it would to a keyed vLLM server
            "LLM_INTERNAL_TOKEN": TOKEN_B,
        }
        self.b = ServiceProcess(
            "services.llm_service.main",
            env=_env(models, **vllm_env, LLM_SERVED_MODEL_NAME=SERVED_NAME),
            wait_healthy=False,
        )
        # Captions of 14+ words cannot come out of 8 tokens: every attempt is too short, so a 502.
        strict = {"LLM_CAPTION_MIN_WORDS": "14", "LLM_CAPTION_MAX_NEW_TOKENS": "8", "LLM_MIN_NEW_TOKENS": "8"}
        self.strict = ServiceProcess(
            "services.llm_service.main", env=_env(models, **vllm_env, **strict), wait_healthy=False
        )
        self.all = [self.a, self.missing, self.missing_fallback, self.unreachable, self.b, self.strict]

    def start(self) -> None:
        # Start every process first and wait afterwards: imports and loads overlap instead of adding up.
        for svc in self.all[:4]:
            svc.start()
        self.a.wait_for_health(200)
        for svc in self.all[4:]:
            svc.start()
        self.b.wait_for_health(200)
        self.strict.wait_for_health(200)
        for svc in (self.missing, self.unreachable):
            svc.wait_for_health(503)
        self.missing_fallback.wait_for_health(200)

    def stop(self) -> None:
        for svc in self.all:
            svc.stop()


@pytest.fixture(scope="module")
def cluster(tiny_models: dict[str, Path]) -> Iterator[Cluster]:
    c = Cluster(tiny_models)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module", params=["transformers", "vllm"])
def llm(request: pytest.FixtureRequest, cluster: Cluster) -> tuple[str, dict[str, str]]:
    """(base url, auth headers) of instance A (transformers) or B (vllm client of A)."""
    if request.param == "transformers":
        return cluster.a.url, {"Authorization": f"Bearer {TOKEN_A}"}
    return cluster.b.url, {"Authorization": f"Bearer {TOKEN_B}"}


def post(llm: tuple[str, dict[str, str]], path: str, body: object) -> httpx.Response:
    url, headers = llm
    return httpx.post(url + path, json=body, headers=headers, timeout=TIMEOUT)


def public_name(llm: tuple[str, dict[str, str]], models: dict[str, Path]) -> str:
    """A has no served name, so its model (a local path) is named by its last component; B has one."""
    return SERVED_NAME if llm[1]["Authorization"].endswith(TOKEN_B) else models["qwen_lm"].name


def assert_no_paths(text: str, models: dict[str, Path]) -> None:
    assert str(models["qwen_lm"]) not in text and str(models["qwen_lm"].parent) not in text
    assert "/tmp" not in text


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code and isinstance(body["detail"], str) and body["detail"]
    return body


# --- contract tests, on both backends -----------------------------------------------------------------------


def test_healthz(llm: tuple[str, dict[str, str]], tiny_models: dict[str, Path]) -> None:
    resp = httpx.get(llm[0] + "/healthz", timeout=TIMEOUT)
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and body["service"] == "llm_service"
    assert body["model"] == public_name(llm, tiny_models)
    assert body["backend"] in ("transformers", "vllm")
    assert_no_paths(resp.text, tiny_models)


@pytest.mark.parametrize("coverage", [None, "explicit"])
@pytest.mark.parametrize("kind", ["1to1", "shorts", "scenes"])
def test_expand_carries_persona_and_the_clause_only_when_covered(
    llm: tuple[str, dict[str, str]], kind: str, coverage: str | None, tiny_models: dict[str, Path]
) -> None:
    history = [{"role": "user", "content": "hi!"}, {"role": "assistant", "content": "hello there"}]
    resp = post(llm, f"/v1/chat/{kind}/expand", {"message": "a walk on the beach", "history": history,
                                                  "persona": PERSONA, "coverage": coverage})  # fmt: skip
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["source"] == "model" and body["model"] == public_name(llm, tiny_models)
    assert_no_paths(resp.text, tiny_models)
    assert body["shortened_message"] is None and body["shortened_by"] is None
    assert body["timings_ms"]["total"] > 0
    prompt = body["prompt"]
    for trait in TRAITS:
        assert trait in prompt
    # 1:1 ignores the coverage field; a neutral shorts or scenes message (None) gets no clause either.
    if kind == "1to1" or coverage is None:
        assert COVERAGE_PHRASE not in prompt and "Coverage:" not in prompt
    else:
        assert prompt.endswith(f". {COVERAGE_CLAUSE}") and prompt.count(COVERAGE_PHRASE) == 1
    assert "modest" not in prompt.lower() and "fully clothed" not in prompt.lower()
    assert "<|im_end|>" not in prompt and "\n" not in prompt
    # Counted with the model's own tokenizer, inside the image encoder's chat wrapper, as the worker counts.
    assert body["prompt_tokens"] == encoder_tokens(tiny_models, prompt) and isinstance(body["trimmed"], bool)


def encoder_tokens(models: dict[str, Path], prompt: str) -> int:
    tokenizer = AutoTokenizer.from_pretrained(models["qwen_lm"])
    return len(tokenizer.encode(ENCODER_OPEN + prompt + ENCODER_CLOSE, add_special_tokens=False))


@pytest.mark.parametrize("style", ["anime", "film"])
def test_expand_style_ends_the_prompt(llm: tuple[str, dict[str, str]], style: str) -> None:
    body = {"message": "a walk on the beach", "style": style, "coverage": "suggestive"}
    resp = post(llm, "/v1/chat/scenes/expand", body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["prompt"].endswith(f"{STYLE_PHRASES[style]}. {COVERAGE_CLAUSE}")


def test_expand_unknown_style_is_422(llm: tuple[str, dict[str, str]]) -> None:
    body = {"message": "a walk on the beach", "style": "oil-painting"}
    detail = assert_error(post(llm, "/v1/chat/1to1/expand", body), 422, "validation_error")["detail"]
    assert "style" in detail and len(detail) < 500


def test_long_message_is_shortened_before_expansion(llm: tuple[str, dict[str, str]]) -> None:
    assert word_count(SIXTY_WORDS) == 60
    resp = post(llm, "/v1/chat/shorts/expand", {"message": SIXTY_WORDS, "persona": PERSONA})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    short = body["shortened_message"]
    assert short and word_count(short) <= 25 < word_count(SIXTY_WORDS)
    assert body["shortened_by"] in ("model", "truncation")
    assert body["timings_ms"]["shorten"] > 0
    assert COVERAGE_PHRASE not in body["prompt"]  # a neutral message: nothing appended


@pytest.mark.parametrize("prompt", ["a woman walking on a beach at sunset", "a nude figure, explicit scene"])
def test_caption_is_10_to_15_safe_words_or_502(
    llm: tuple[str, dict[str, str]], prompt: str, tiny_models: dict[str, Path]
) -> None:
    resp = post(llm, "/v1/chat/1to1/caption", {"prompt": prompt, "message": "show me"})
    assert_no_paths(resp.text, tiny_models)
    if resp.status_code == 502:
        assert_error(resp, 502, "unusable_model_output")
        return
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == public_name(llm, tiny_models)
    assert 10 <= word_count(body["caption"]) <= 15 and body["word_count"] == word_count(body["caption"])
    assert body["source"] == "model" and isinstance(body["adjusted"], bool)
    from services.llm_service.safety import is_caption_safe

    assert is_caption_safe(body["caption"])


def test_reply_in_character(llm: tuple[str, dict[str, str]], tiny_models: dict[str, Path]) -> None:
    # 50 long turns exceed the token budget: the service keeps the newest ones that fit.
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "tell me more " * 100} for i in range(50)
    ]
    resp = post(
        llm, "/v1/chat/1to1/reply", {"message": "how was your day?", "persona": PERSONA, "history": history}
    )
    assert_no_paths(resp.text, tiny_models)
    if resp.status_code == 502:
        assert_error(resp, 502, "unusable_model_output")
        return
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["reply"] and body["source"] == "model" and "<|im_end|>" not in body["reply"]
    assert body["model"] == public_name(llm, tiny_models)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"message": ""}, "message"),
        ({"message": "   "}, "message"),
        ({"message": "x" * 10_000}, "message"),
        ({"message": "a fox", "sed": 1}, "sed"),
        ({"message": "a fox", "persona": {"hair_colour": "red"}}, "hair_colour"),
        ({}, "message"),
    ],
)
def test_bad_input_is_422_with_detail(llm: tuple[str, dict[str, str]], body: object, fragment: str) -> None:
    detail = assert_error(post(llm, "/v1/chat/1to1/expand", body), 422, "validation_error")["detail"]
    assert fragment in detail and len(detail) < 500


def test_bad_caption_and_reply_input(llm: tuple[str, dict[str, str]]) -> None:
    assert_error(post(llm, "/v1/chat/1to1/caption", {"prompt": ""}), 422, "validation_error")
    assert_error(
        post(llm, "/v1/chat/1to1/reply", {"message": "hi"}), 422, "validation_error"
    )  # persona needed


@pytest.mark.parametrize("path", ["/v1/chat/1to1/expand", "/v1/chat/completions", "/metrics"])
def test_auth_required(llm: tuple[str, dict[str, str]], path: str) -> None:
    url = llm[0] + path
    assert_error(httpx.post(url, json={"message": "a fox"}, timeout=TIMEOUT), 401, "unauthorized")
    wrong = {"Authorization": "Bearer nope-nope-nope"}
    assert_error(
        httpx.post(url, json={"message": "a fox"}, headers=wrong, timeout=TIMEOUT), 401, "unauthorized"
    )


def test_openai_compatible_route(llm: tuple[str, dict[str, str]], tiny_models: dict[str, Path]) -> None:
    model = str(tiny_models["qwen_lm"])
    req = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "min_tokens": 8,
           "temperature": 0.0, "seed": 7, "stop": ["\n\n"]}  # fmt: skip
    resp = post(llm, "/v1/chat/completions", req)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["model"] == model and body["id"]
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] <= 8 and body["usage"]["prompt_tokens"] > 0
    again = post(llm, "/v1/chat/completions", req).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]  # greedy + seed
    assert_error(post(llm, "/v1/chat/completions", {**req, "model": "other"}), 404, "model_not_found")
    assert_error(post(llm, "/v1/chat/completions", {**req, "logprobs": True}), 422, "validation_error")
    models = httpx.get(llm[0] + "/v1/models", headers=llm[1], timeout=TIMEOUT).json()
    assert models["data"][0]["id"] == model


def test_metrics(llm: tuple[str, dict[str, str]]) -> None:
    resp = httpx.get(llm[0] + "/metrics", headers=llm[1], timeout=TIMEOUT)
    assert resp.status_code == 200
    assert "imgpod_llm_generation_seconds" in resp.text and "imgpod_llm_outcomes_total" in resp.text


# --- failure modes ------------------------------------------------------------------------------------------


def test_caption_502_when_the_model_cannot_reach_the_length(cluster: Cluster) -> None:
    resp = post((cluster.strict.url, {"Authorization": f"Bearer {TOKEN_B}"}), "/v1/chat/1to1/caption",
                {"prompt": "a woman walking on a beach"})  # fmt: skip
    body = assert_error(resp, 502, "unusable_model_output")
    assert "caption" in body["detail"] and "attempt" in body["detail"]


def test_missing_model_is_503_everywhere(cluster: Cluster) -> None:
    resp = cluster.missing.wait_for_health(503)
    health = resp.json()
    assert health["status"] == "error" and "failed to load" in health["detail"]
    # The unauthenticated health names the model by its last path component only.
    assert health["model"] == "llm-model" and "/nonexistent" not in resp.text
    auth = (cluster.missing.url, {"Authorization": f"Bearer {TOKEN_A}"})
    for path, body in [
        ("/v1/chat/1to1/expand", {"message": "a fox"}),
        ("/v1/chat/1to1/caption", {"prompt": "a fox"}),
        ("/v1/chat/1to1/reply", {"message": "hi", "persona": PERSONA}),
    ]:
        detail = assert_error(post(auth, path, body), 503, "model_unavailable")["detail"]
        assert "failed to load" in detail and "/nonexistent" not in detail


def test_missing_model_with_template_fallback_answers_labelled_templates(cluster: Cluster) -> None:
    svc = cluster.missing_fallback
    health_resp = svc.wait_for_health(200)
    health = health_resp.json()
    assert "/nonexistent" not in health_resp.text
    # It answers (labelled templates), so it is in rotation, but says its model is not there.
    assert health["template_fallback"] is True
    assert health["status"] == "degraded" and health["detail"]
    auth = (svc.url, {"Authorization": f"Bearer {TOKEN_A}"})
    resp = post(auth, "/v1/chat/scenes/expand",
                {"message": SIXTY_WORDS, "persona": PERSONA, "coverage": "suggestive"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["source"] == "template" and body["model"] == "template"
    assert body["shortened_by"] == "truncation" and word_count(body["shortened_message"]) <= 25
    # No model, no tokenizer: the count is absent, not guessed.
    assert body["prompt_tokens"] is None and body["trimmed"] is False
    # The labelled template follows the decision too: covered, so it ends with the clause.
    assert all(trait in body["prompt"] for trait in TRAITS) and body["prompt"].endswith(COVERAGE_CLAUSE)
    caption = post(auth, "/v1/chat/1to1/caption", {"prompt": "a fox"}).json()
    assert caption["source"] == "template" and 10 <= caption["word_count"] <= 15
    # A reply is a labelled in-character template too (shared/reply_templates.py), never the model's words.
    reply = post(auth, "/v1/chat/1to1/reply", {"message": "hi", "persona": PERSONA})
    assert reply.status_code == 200, reply.text
    assert reply.json()["source"] == "template" and reply.json()["model"] == "template"
    assert reply.json()["reply"] == template_reply("hi", Features(**PERSONA))


def test_unreachable_vllm_is_503(cluster: Cluster) -> None:
    svc = cluster.unreachable
    health = svc.wait_for_health(503).json()
    assert health["status"] == "error" and "unreachable" in health["detail"]
    resp = post(
        (svc.url, {"Authorization": f"Bearer {TOKEN_B}"}), "/v1/chat/1to1/expand", {"message": "a fox"}
    )
    assert "unavailable" in assert_error(resp, 503, "model_unavailable")["detail"]


# --- the token budget over HTTP, with text a random model cannot be made to write ------------------------

# A long expansion (~130 words of distinct comma-separated phrases): far over the budget below.
LONG_EXPANSION = ", ".join(
    [
        "golden light on calm water",
        "a wooden pier with old ropes",
        "gulls circling over the harbour",
        "fishing boats painted blue and red",
        "a lighthouse on the far cliff",
        "waves breaking on dark rocks",
        "wet sand shining like glass",
        "a striped towel and a straw bag",
        "children flying a yellow kite",
        "a dog chasing the foam",
        "clouds glowing pink and violet",
        "a cafe terrace with string lights",
        "linen shirts moving in the breeze",
        "a bicycle leaning on a railing",
        "shells scattered near dunes",
        "tall grass bending in the wind",
        "a sailboat far on the horizon",
        "warm rim light on the hair",
        "soft shadows stretching inland",
        "wide cinematic framing",
        "shallow depth of field",
        "a calm and happy mood",
        "fine film grain",
        "rich natural colours",
        "a quiet evening atmosphere",
    ]
)
# Room for a few phrases beside the persona, the coverage clause and the reserve (~150 tokens on the tiny
# tokenizer), and far below LONG_EXPANSION (~400).
TRIM_LIMIT = 200


@pytest.fixture(scope="module")
def scripted_stack(tiny_models: dict[str, Path]) -> Iterator[dict[str, ServiceProcess]]:
    """The LLM service's vLLM client in front of a scripted vLLM (tests/helpers/scripted_llm.py) that
    answers LONG_EXPANSION: the real service, tokenizer and budget, with a model output chosen on purpose."""
    model = str(tiny_models["qwen_lm"])
    scripted = ServiceProcess("tests.helpers.scripted_llm", env={"SCRIPTED_MODELS": model})
    llm = ServiceProcess(
        "services.llm_service.main",
        env=_env(
            tiny_models,
            LLM_BACKEND="vllm",
            LLM_VLLM_BASE_URL=scripted.url,
            LLM_INTERNAL_TOKEN=TOKEN_B,
            LLM_IMAGE_PROMPT_TOKEN_LIMIT=str(TRIM_LIMIT),
        ),
    )
    with all_running([scripted, llm]):
        httpx.post(scripted.url + "/script", json={"chat_text": LONG_EXPANSION}).raise_for_status()
        yield {"scripted": scripted, "llm": llm}


def trimmed_total(url: str) -> float:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN_B}"}, timeout=TIMEOUT).text
    line = 'imgpod_llm_expansion_trimmed_total{cause="tokens",kind="shorts"} '
    return sum(float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line))


def assert_trimmed_at_a_comma(body: dict[str, Any], models: dict[str, Path]) -> None:
    prompt = body["prompt"]
    assert body["trimmed"] is True and body["source"] == "model"
    assert body["prompt_tokens"] == encoder_tokens(models, prompt)
    # Room is left for the suffix the interface may append; the cut is at a phrase boundary, never mid-phrase.
    tokenizer = AutoTokenizer.from_pretrained(models["qwen_lm"])
    reserve = len(tokenizer.encode(COVERAGE_SUFFIX, add_special_tokens=False))
    assert body["prompt_tokens"] + reserve <= TRIM_LIMIT
    assert all(trait in prompt for trait in TRAITS) and prompt.endswith(COVERAGE_CLAUSE)
    scene = prompt.split(". ", 1)[1].removesuffix(f". {COVERAGE_CLAUSE}")
    assert scene and any(LONG_EXPANSION[:cut] == scene for cut in phrase_cuts(LONG_EXPANSION))


def test_expansion_over_the_token_budget_is_trimmed_at_a_comma_and_reported(
    scripted_stack: dict[str, ServiceProcess], tiny_models: dict[str, Path]
) -> None:
    url = scripted_stack["llm"].url
    before = trimmed_total(url)
    resp = post((url, {"Authorization": f"Bearer {TOKEN_B}"}), "/v1/chat/shorts/expand",
                {"message": "a walk on the beach", "persona": PERSONA, "coverage": "suggestive"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert_trimmed_at_a_comma(resp.json(), tiny_models)
    assert trimmed_total(url) == before + 1


def test_overlapping_expansions_are_all_trimmed_alike(
    scripted_stack: dict[str, ServiceProcess], tiny_models: dict[str, Path]
) -> None:
    """The count tokenizer is shared by every request on the loop: overlapping ones must all count right."""
    url = scripted_stack["llm"].url
    before = trimmed_total(url)

    async def burst() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {TOKEN_B}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=TIMEOUT) as client:
            body = {"message": "a walk on the beach", "persona": PERSONA, "coverage": "suggestive"}
            return await asyncio.gather(*(client.post("/v1/chat/shorts/expand", json=body) for _ in range(8)))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    bodies = [r.json() for r in responses]
    for body in bodies:
        assert_trimmed_at_a_comma(body, tiny_models)
    assert len({(b["prompt"], b["prompt_tokens"]) for b in bodies}) == 1
    assert trimmed_total(url) == before + 8


# --- moderation follows the interface's decision, with text a random model cannot be made to write --------

# What a model may write for "me naked on silk sheets", whatever its rules said.
EXPLICIT_EXPANSION = "a woman in lace lingerie, nude on silk sheets, having sex, soft window light"
COVERED_EXPANSION = f"a woman in lace lingerie, on silk sheets, soft window light. {COVERAGE_CLAUSE}"


@pytest.mark.parametrize(
    ("kind", "coverage", "expected"),
    [
        # Neutral: as the model wrote it (the interface re-checks every expanded prompt itself).
        ("scenes", None, f"{EXPLICIT_EXPANSION}."),
        # Covered: exposure and acts removed, lingerie and silk sheets kept, the clause at the end.
        ("scenes", "explicit", COVERED_EXPANSION),
        ("shorts", "suggestive", COVERED_EXPANSION),
        # 1:1: no moderation beyond the hard block, whatever the body says.
        ("1to1", "explicit", f"{EXPLICIT_EXPANSION}."),
    ],
)
def test_the_expansion_follows_the_coverage_decision(
    scripted_stack: dict[str, ServiceProcess],
    tiny_models: dict[str, Path],
    kind: str,
    coverage: str | None,
    expected: str,
) -> None:
    stack = scripted_stack
    httpx.post(stack["scripted"].url + "/script", json={"chat_text": EXPLICIT_EXPANSION}).raise_for_status()
    try:
        resp = post((stack["llm"].url, {"Authorization": f"Bearer {TOKEN_B}"}), f"/v1/chat/{kind}/expand",
                    {"message": "me naked on silk sheets", "coverage": coverage})  # fmt: skip
    finally:
        httpx.post(stack["scripted"].url + "/script", json={"chat_text": LONG_EXPANSION}).raise_for_status()
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["source"] == "model" and body["prompt"] == expected and body["trimmed"] is False
    # The clause is counted exactly when it is there.
    assert body["prompt_tokens"] == encoder_tokens(tiny_models, expected)


# --- vLLM's own error bodies and startup, replayed byte for byte (tests/unit/test_vllm_errors.py) ---------


@pytest.fixture(scope="module")
def replay_stack(tiny_models: dict[str, Path]) -> Iterator[dict[str, ServiceProcess]]:
    """The LLM service's OpenAI client in front of the fault injector (tests/helpers/scripted_llm.py), which
    answers each error body exactly as vLLM sends it."""
    model = str(tiny_models["qwen_lm"])
    injector = ServiceProcess("tests.helpers.scripted_llm", env={"SCRIPTED_MODELS": model})
    llm = ServiceProcess(
        "services.llm_service.main",
        env=_env(tiny_models, LLM_BACKEND="vllm", LLM_VLLM_BASE_URL=injector.url, LLM_INTERNAL_TOKEN=TOKEN_B),
    )
    with all_running([injector, llm]):
        yield {"injector": injector, "llm": llm}


def _script(injector: ServiceProcess, **script: object) -> None:
    httpx.post(injector.url + "/script", json=script, timeout=TIMEOUT).raise_for_status()


def _replay_cases() -> list[tuple[str, int, bytes, int, str]]:
    from tests.unit.test_vllm_errors import CASES

    return [(name, status, body, kind.status_code, kind.code) for name, status, body, kind, _ in CASES]


@pytest.mark.parametrize(("name", "status", "body", "public_status", "code"), _replay_cases())
def test_vllm_error_bodies_over_http_map_to_public_errors_and_logs(
    replay_stack: dict[str, ServiceProcess],
    name: str,
    status: int,
    body: bytes,
    public_status: int,
    code: str,
) -> None:
    injector, llm = replay_stack["injector"], replay_stack["llm"]
    _script(injector, chat_reply={"status": status, "body": body.decode()})
    try:
        resp = post((llm.url, {"Authorization": f"Bearer {TOKEN_B}"}), "/v1/chat/1to1/reply",
                    {"message": "hi", "persona": PERSONA})  # fmt: skip
    finally:
        _script(injector)
    got = assert_error(resp, public_status, code)
    upstream = json.loads(body).get("error", json.loads(body)) if body.startswith(b"{") else {}
    message = upstream.get("message") if isinstance(upstream, dict) else None
    if isinstance(message, str):
        assert message not in resp.text and "secret-path" not in resp.text
        # The upstream words are in the service's log, on the line that carries this request's id.
        lines = [json.loads(line) for line in llm.logs().splitlines() if line.startswith("{")]
        assert any(
            rec.get("request_id") == got["request_id"] and rec.get("upstream_message") == message
            for rec in lines
        )


def test_ready_only_once_v1_models_lists_the_model(replay_stack: dict[str, ServiceProcess]) -> None:
    """A server that answers /v1/models without our model (or with 503, as one warming up) is "loading";
    the service is ready (200) the moment the list names it."""
    injector, llm = replay_stack["injector"], replay_stack["llm"]
    # A fresh service process, so it has never seen the model listed.
    fresh = ServiceProcess("services.llm_service.main", env={**llm.extra_env, "LLM_INTERNAL_TOKEN": TOKEN_A},
                           wait_healthy=False)  # fmt: skip
    _script(injector, models_reply={"status": 200, "body": '{"object": "list", "data": []}'})
    try:
        with fresh:
            health = _health_once_connected(fresh)
            assert health["status"] == "loading" and "does not serve" in health["detail"]
            _script(injector, models_reply={"status": 503, "body": ""})
            health = httpx.get(fresh.url + "/healthz", timeout=TIMEOUT)
            assert health.status_code == 503 and health.json()["status"] == "loading"
            _script(injector)
            assert fresh.wait_for_health(200).json()["status"] == "ok"
    finally:
        _script(injector)


def _health_once_connected(svc: ServiceProcess, timeout_s: float = 60.0) -> dict[str, Any]:
    """/healthz once the service has loaded its tokenizer and probed the server (its detail names it)."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(svc.url + "/healthz", timeout=TIMEOUT)
            body = resp.json()
            if "vllm" in (body.get("detail") or ""):
                assert resp.status_code == 503
                return body
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"no probe result in {timeout_s}s: {body}\n{svc.logs()[-2000:]}")
