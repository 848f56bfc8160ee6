"""The engine's decisions (retry, trim, 502, labelled fallback) over a scripted backend.

These are unit tests of the engine layer only: the model path itself is tested over HTTP on the tiny model
in tests/integration/test_llm_service.py. A script lets us hit each branch on purpose.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from services.llm_service.backends import ChatMessage, ChatResult
from services.llm_service.engine import LlmEngine
from services.llm_service.prompts import COVERAGE_CLAUSE, COVERAGE_RULES, compose_expanded_prompt
from services.llm_service.settings import LlmSettings
from services.llm_service.token_budget import ENCODER_CLOSE, ENCODER_OPEN
from shared.errors import ModelUnavailable, UnusableModelOutput
from shared.metrics import ServiceMetrics
from shared.models import MAX_PROMPT_CHARS, CaptionRequest, ExpandRequest, Features, ReplyRequest
from shared.persona import describe_persona
from shared.policy import COVERAGE_PHRASE, COVERAGE_SUFFIX
from shared.styles import STYLE_PHRASES

GOOD_CAPTION = "A quiet walk along the beach at sunset with the waves rolling in"  # 13 words


class ScriptedBackend:
    name = "scripted"
    model_id = "scripted"
    device = "cpu"
    dtype = "float32"

    def __init__(self, answers: Sequence[str | tuple[str, str] | Exception]) -> None:
        self.answers = list(answers)
        self.calls: list[list[ChatMessage]] = []
        self.kwargs: list[dict[str, object]] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> str | None:
        return None

    def count_tokens(self, text: str) -> int:
        # One token per whitespace-separated piece: crude, but a real counter's contract (text -> int).
        return len(text.split())

    async def chat(self, messages: Sequence[ChatMessage], **kwargs: object) -> ChatResult:
        self.calls.append(list(messages))
        self.kwargs.append(kwargs)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        text, finish = answer if isinstance(answer, tuple) else (answer, "stop")
        return ChatResult(text, "scripted", 10, 10, finish)  # type: ignore[arg-type]


def make_engine(
    answers: Sequence[str | tuple[str, str] | Exception],
    metrics: ServiceMetrics | None = None,
    **overrides: object,
) -> tuple[LlmEngine, ScriptedBackend]:
    # The guard on outputs is tested over HTTP (tests/integration/test_guard.py); off here.
    settings = LlmSettings(
        **{"backend": "transformers", "model_id": "scripted", "guard_backend": "off", **overrides}
    )
    engine = LlmEngine(settings, metrics or ServiceMetrics("test"))
    backend = ScriptedBackend(answers)
    engine.backend = backend  # type: ignore[assignment]
    # What start() loads from the model's tokenizer files; the scripted counter stands in for it.
    engine.budget.count = backend.count_tokens
    engine.state = "ok"
    return engine, backend


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_caption_trims_long_output_and_reports_adjusted() -> None:
    engine, _ = make_engine([GOOD_CAPTION + " and the seagulls calling out over the water tonight"])
    resp = run(engine.caption(CaptionRequest(prompt="beach")))
    assert resp.word_count == 15 and resp.adjusted and resp.source == "model"


def test_caption_retries_when_too_short_or_unsafe_then_succeeds() -> None:
    engine, backend = make_engine(
        ["Too short.", "A naked person walking along the beach at sunset with waves", GOOD_CAPTION]
    )
    resp = run(engine.caption(CaptionRequest(prompt="beach")))
    assert resp.caption == GOOD_CAPTION and resp.adjusted and resp.word_count == 13
    assert len(backend.calls) == 3


def test_caption_gives_502_after_retries() -> None:
    engine, backend = make_engine(["", "!!! ???", "ok"], caption_retries=2)
    with pytest.raises(UnusableModelOutput, match="3 attempt"):
        run(engine.caption(CaptionRequest(prompt="beach")))
    assert len(backend.calls) == 3


def test_caption_template_fallback_is_labelled() -> None:
    engine, _ = make_engine(["", "", ""], caption_retries=2, template_fallback=True)
    resp = run(engine.caption(CaptionRequest(prompt="beach")))
    assert resp.source == "template" and resp.model == "template" and 10 <= resp.word_count <= 15


def test_expand_junk_is_502_or_labelled_template() -> None:
    engine, _ = make_engine(["<|im_end|>"])
    with pytest.raises(UnusableModelOutput, match="unusable"):
        run(engine.expand("1to1", ExpandRequest(message="a fox")))
    engine, _ = make_engine(["<|im_end|>"], template_fallback=True)
    resp = run(engine.expand("shorts", ExpandRequest(message="a fox", persona=Features(hair_color="red"))))
    assert resp.source == "template" and "red hair" in resp.prompt and COVERAGE_PHRASE not in resp.prompt


@pytest.mark.parametrize("coverage", ["suggestive", "explicit"])
def test_a_covered_template_fallback_ends_with_the_clause_and_loses_explicit_words(coverage: str) -> None:
    engine, backend = make_engine(["<|im_end|>"], template_fallback=True)
    req = ExpandRequest(message="me nude in lace lingerie on silk sheets", coverage=coverage)  # type: ignore[arg-type]
    resp = run(engine.expand("scenes", req))
    assert resp.source == "template" and resp.prompt.endswith(f". {COVERAGE_CLAUSE}")
    assert "nude" not in resp.prompt and "lingerie" in resp.prompt and "silk sheets" in resp.prompt
    assert resp.prompt_tokens == encoder_tokens(backend, resp.prompt)  # the clause is counted too


# --- moderation follows the interface's decision ---------------------------------------------------------

MODEL_SCENE = "a woman in lace lingerie, nude shoulders on silk sheets, having sex, soft window light"


def test_a_neutral_moderated_expansion_has_no_rules_no_clause_and_no_redaction() -> None:
    engine, backend = make_engine(["a misty mountain lake at dawn, pine trees"])
    resp = run(engine.expand("scenes", ExpandRequest(message="a misty mountain lake")))
    system = backend.calls[0][0]["content"]
    assert COVERAGE_RULES not in system and "nudity" not in system
    assert resp.prompt == "a misty mountain lake at dawn, pine trees."
    # Nothing is removed either: the interface judged the message neutral, and checks the expansion itself.
    engine, _ = make_engine([MODEL_SCENE])
    assert run(engine.expand("shorts", ExpandRequest(message="a woman resting"))).prompt == f"{MODEL_SCENE}."


def test_a_suggestive_expansion_gets_the_rules_and_the_clause_and_keeps_lingerie() -> None:
    scene = "a woman in lace lingerie, draped in silk sheets, sensual mood"
    engine, backend = make_engine([scene])
    resp = run(engine.expand("shorts", ExpandRequest(message="me in lingerie", coverage="suggestive")))
    assert COVERAGE_RULES in backend.calls[0][0]["content"]
    assert resp.prompt == f"{scene}. {COVERAGE_CLAUSE}"


def test_an_explicit_expansion_loses_exposure_and_acts_and_ends_with_the_clause() -> None:
    engine, backend = make_engine([MODEL_SCENE])
    persona = Features(hair_color="red")
    resp = run(
        engine.expand("scenes", ExpandRequest(message="me naked", persona=persona, coverage="explicit"))
    )
    assert COVERAGE_RULES in backend.calls[0][0]["content"]
    assert resp.prompt == (
        f"The same character: {describe_persona(persona)}. "
        f"a woman in lace lingerie, shoulders on silk sheets, soft window light. {COVERAGE_CLAUSE}"
    )


@pytest.mark.parametrize("coverage", [None, "suggestive", "explicit"])
def test_1to1_ignores_coverage(coverage: str | None) -> None:
    engine, backend = make_engine([MODEL_SCENE])
    resp = run(engine.expand("1to1", ExpandRequest(message="me naked", coverage=coverage)))  # type: ignore[arg-type]
    assert COVERAGE_RULES not in backend.calls[0][0]["content"]
    assert resp.prompt == f"{MODEL_SCENE}."


@pytest.mark.parametrize("kind", ["1to1", "shorts", "scenes"])
@pytest.mark.parametrize("coverage", [None, "suggestive", "explicit"])
@pytest.mark.parametrize("fallback", [False, True])
def test_nothing_the_expansion_sends_or_returns_asks_for_modesty(
    kind: str, coverage: str | None, fallback: bool
) -> None:
    engine, backend = make_engine(["<|im_end|>" if fallback else MODEL_SCENE], template_fallback=fallback)
    resp = run(engine.expand(kind, ExpandRequest(message="me in lingerie", coverage=coverage)))  # type: ignore[arg-type]
    for text in (backend.calls[0][0]["content"], resp.prompt):
        assert "modest" not in text.lower() and "fully clothed" not in text.lower()


def test_prompt_tokens_count_the_clause_only_when_it_is_there() -> None:
    scene = "a fox in the snow, at dusk"
    engine, backend = make_engine([scene, scene])
    neutral = run(engine.expand("scenes", ExpandRequest(message="a fox")))
    covered = run(engine.expand("scenes", ExpandRequest(message="a fox", coverage="suggestive")))
    assert neutral.prompt_tokens == encoder_tokens(backend, f"{scene}.")
    assert covered.prompt_tokens == encoder_tokens(backend, f"{scene}. {COVERAGE_CLAUSE}")
    assert covered.prompt_tokens - neutral.prompt_tokens == backend.count_tokens(COVERAGE_CLAUSE)


def test_expand_shortens_with_the_model_when_it_keeps_intent() -> None:
    long = "please " * 10 + "show me walking my dog on the beach at sunset " + "really " * 20
    engine, backend = make_engine(["walking my dog on the beach at sunset", "a dog and a person on a beach"])
    resp = run(engine.expand("1to1", ExpandRequest(message=long)))
    assert resp.shortened_by == "model" and resp.shortened_message == "walking my dog on the beach at sunset"
    assert "walking my dog" in backend.calls[1][1]["content"]  # the expansion saw the shortened message


def test_expand_falls_back_to_truncation_when_model_shortening_is_junk() -> None:
    long = "please " * 10 + "show me walking my dog on the beach at sunset " + "really " * 20
    engine, backend = make_engine(["qq zz silversson yelloof", "a dog on a beach"])
    resp = run(engine.expand("1to1", ExpandRequest(message=long)))
    assert resp.shortened_by == "truncation"
    assert resp.shortened_message and "dog" in resp.shortened_message
    assert resp.shortened_message in backend.calls[1][1]["content"]


def test_model_down_is_503_unless_fallback() -> None:
    engine, _ = make_engine([ModelUnavailable("LLM backend unavailable")])
    with pytest.raises(ModelUnavailable):
        run(engine.expand("1to1", ExpandRequest(message="a fox")))
    engine, _ = make_engine([])
    engine.state, engine.error = "error", "model 'x' failed to load (OSError)"
    with pytest.raises(ModelUnavailable, match="failed to load"):
        run(engine.reply(ReplyRequest(message="hi", persona=Features())))


def test_reply_junk_is_502() -> None:
    engine, _ = make_engine(["<|im_start|>assistant\n<|im_end|>"])
    with pytest.raises(UnusableModelOutput):
        run(engine.reply(ReplyRequest(message="hi", persona=Features())))


# --- expansion length, token budget, style --------------------------------------------------------------


def distinct_words(n: int) -> list[str]:
    """Letters-only words, all different: a long scene the junk judge takes as real (no repetition)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["w" + letters[i // 676] + letters[i // 26 % 26] + letters[i % 26] for i in range(n)]


WORDS = distinct_words(2000)
PHRASES = [" ".join(WORDS[3 * i : 3 * i + 3]) for i in range(40)]  # 3 "tokens" each for the scripted counter
LONG_SCENE = ", ".join(PHRASES)
PERSONA = Features(hair_color="red", eye_color="green")
DESCRIPTOR = f"The same character: {describe_persona(PERSONA)}"


def encoder_tokens(backend: ScriptedBackend, prompt: str) -> int:
    return backend.count_tokens(ENCODER_OPEN + prompt + ENCODER_CLOSE)


def trimmed_count(metrics: ServiceMetrics, kind: str, cause: str) -> float:
    text = metrics.render()[0].decode()
    line = f'imgpod_llm_expansion_trimmed_total{{cause="{cause}",kind="{kind}"}} '
    return sum(float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line))


@pytest.mark.parametrize("kind", ["1to1", "shorts", "scenes"])
def test_each_kinds_words_reach_its_system_prompt_and_max_tokens(kind: str) -> None:
    words = {"1to1": 80, "shorts": 130, "scenes": 190}
    engine, backend = make_engine(
        ["a fox in the snow, at dusk"],
        expand_words_1to1=80,
        expand_words_shorts=130,
        expand_words_scenes=190,
    )
    run(engine.expand(kind, ExpandRequest(message="a fox")))  # type: ignore[arg-type]
    assert f"about {words[kind]} words" in backend.calls[0][0]["content"]
    # max_tokens = words x (1 + margin) x tokens per word: derived, never a separate number.
    assert backend.kwargs[0]["max_tokens"] == math.ceil(words[kind] * 1.3 * 1.25)


def test_a_fitting_expansion_is_whole_and_counted() -> None:
    engine, backend = make_engine(["a fox in the snow, at dusk"])
    resp = run(engine.expand("scenes", ExpandRequest(message="a fox", persona=PERSONA, coverage="explicit")))
    assert resp.prompt == f"{DESCRIPTOR}. a fox in the snow, at dusk. {COVERAGE_CLAUSE}"
    assert resp.trimmed is False and resp.prompt_tokens == encoder_tokens(backend, resp.prompt)


def test_an_expansion_over_the_token_budget_is_cut_at_a_comma_and_says_so() -> None:
    metrics = ServiceMetrics("test")
    engine, backend = make_engine([LONG_SCENE], metrics, image_prompt_token_limit=96)
    req = ExpandRequest(message="a fox", persona=PERSONA, coverage="suggestive")
    resp = run(engine.expand("shorts", req))
    reserve = backend.count_tokens(COVERAGE_SUFFIX)
    assert resp.trimmed is True and resp.prompt_tokens == encoder_tokens(backend, resp.prompt)
    assert resp.prompt_tokens + reserve <= 96
    # Whole phrases, the longest run that fits: one phrase more would not.
    kept = next(n for n in range(len(PHRASES), 0, -1) if resp.prompt == compose(PHRASES[:n]))
    assert 1 <= kept < len(PHRASES)
    assert encoder_tokens(backend, compose(PHRASES[: kept + 1])) + reserve > 96
    assert resp.prompt.startswith(DESCRIPTOR) and resp.prompt.endswith(COVERAGE_CLAUSE)
    assert trimmed_count(metrics, "shorts", "tokens") == 1


def compose(phrases: list[str]) -> str:
    descriptor = DESCRIPTOR[0].lower() + DESCRIPTOR[1:]
    return compose_expanded_prompt("shorts", descriptor, ", ".join(phrases), coverage="suggestive")


def test_one_phrase_over_the_budget_is_cut_between_words() -> None:
    scene = " ".join(WORDS[:200])
    engine, backend = make_engine([scene], image_prompt_token_limit=64)
    resp = run(engine.expand("1to1", ExpandRequest(message="a fox")))
    assert resp.trimmed and resp.prompt_tokens is not None
    assert resp.prompt_tokens + backend.count_tokens(COVERAGE_SUFFIX) <= 64
    assert resp.prompt.startswith(f"{WORDS[0]} {WORDS[1]}") and scene.startswith(
        resp.prompt.removesuffix(".")
    )


def test_an_expansion_over_the_character_limit_is_cut_at_a_comma() -> None:
    metrics = ServiceMetrics("test")
    scene = ", ".join(" ".join(WORDS[3 * i : 3 * i + 3]) for i in range(200))  # ~3,200 characters
    engine, _ = make_engine([scene], metrics, image_prompt_token_limit=4096)
    resp = run(engine.expand("1to1", ExpandRequest(message="a fox")))
    assert resp.trimmed and len(resp.prompt) <= MAX_PROMPT_CHARS - len(COVERAGE_SUFFIX)
    assert scene.startswith(resp.prompt.removesuffix(".")) and scene[len(resp.prompt) - 1] == ","
    assert trimmed_count(metrics, "1to1", "chars") == 1


def test_a_generation_stopped_by_its_cap_loses_only_the_unfinished_phrase() -> None:
    metrics = ServiceMetrics("test")
    engine, _ = make_engine([("a fox in the snow, at dusk, wearing a red", "length")], metrics)
    resp = run(engine.expand("1to1", ExpandRequest(message="a fox")))
    assert resp.prompt == "a fox in the snow, at dusk." and resp.trimmed is True
    assert trimmed_count(metrics, "1to1", "generation_cap") == 1
    engine, _ = make_engine([("a fox in the snow, at dusk, wearing a red", "stop")])
    resp = run(engine.expand("1to1", ExpandRequest(message="a fox")))
    assert resp.prompt == "a fox in the snow, at dusk, wearing a red." and resp.trimmed is False


def test_style_reaches_the_model_and_ends_the_prompt() -> None:
    phrase = STYLE_PHRASES["anime"]
    engine, backend = make_engine(["a fox in the snow, at dusk"])
    resp = run(engine.expand("scenes", ExpandRequest(message="a fox", style="anime", coverage="suggestive")))
    assert phrase in backend.calls[0][0]["content"]
    assert resp.prompt == f"a fox in the snow, at dusk, {phrase}. {COVERAGE_CLAUSE}"
    # Trimming cuts the scene only: the style phrase and the coverage clause stay whole.
    engine, _ = make_engine([LONG_SCENE], image_prompt_token_limit=80)
    resp = run(engine.expand("scenes", ExpandRequest(message="a fox", style="anime", coverage="explicit")))
    assert resp.trimmed and resp.prompt.endswith(f", {phrase}. {COVERAGE_CLAUSE}")


def test_template_fallback_keeps_the_style_and_counts_when_it_can() -> None:
    phrase = STYLE_PHRASES["watercolor"]
    engine, backend = make_engine(["<|im_end|>"], template_fallback=True)
    resp = run(engine.expand("1to1", ExpandRequest(message="a fox in the snow", style="watercolor")))
    assert resp.source == "template" and resp.prompt.endswith(f"{phrase}.")
    assert resp.prompt_tokens == encoder_tokens(backend, resp.prompt)
    # The model's files are missing, so is its tokenizer: nothing counts tokens, and the response says None.
    engine, backend = make_engine([ModelUnavailable("LLM backend unavailable")], template_fallback=True)
    engine.budget.count = None
    resp = run(engine.expand("1to1", ExpandRequest(message="a fox in the snow", style="watercolor")))
    assert resp.source == "template" and resp.prompt.endswith(f"{phrase}.")
    assert resp.prompt_tokens is None and resp.trimmed is False


def test_unknown_style_is_refused() -> None:
    with pytest.raises(ValidationError, match="style"):
        ExpandRequest(message="a fox", style="oil-painting")  # type: ignore[arg-type]
