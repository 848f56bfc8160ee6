"""System prompts and message builders: what the model is told on each route."""

from __future__ import annotations

import pytest

from services.llm_service.prompts import (
    COVERAGE_CLAUSE,
    COVERAGE_REASONS,
    COVERAGE_RULES,
    STYLE_INSTRUCTION,
    build_caption_messages,
    build_expand_messages,
    build_reply_messages,
    build_shorten_messages,
    character_descriptor,
    compose_expanded_prompt,
    expand_system_prompt,
)
from services.llm_service.settings import LlmSettings
from services.llm_service.templates import TEMPLATE_SCENE_TAIL, template_scene
from shared.models import ChatTurn, Features, ReplyRequest
from shared.persona import describe_persona
from shared.policy import COVERAGE_PHRASE
from shared.styles import STYLE_NAMES, STYLE_PHRASES

PERSONA = Features(
    hair_color="auburn",
    hair_style="long wavy",
    eye_color="green",
    skin_tone="fair",
    age_range="25-34",
    gender_presentation="woman",
    facial_hair="none",
    glasses=True,
    accessories=["silver necklace", "red scarf"],
    description="A cheerful photographer who loves the sea.",
)
# The wording itself is tested once, in test_persona.py; here only that each prompt carries it whole.
DESCRIPTOR = describe_persona(PERSONA)


REASONS = ["suggestive", "explicit"]
# The product covers, it does not censor: no prompt the service builds may ask for these.
CENSORING = ("modest", "fully clothed")


def assert_no_censoring(text: str) -> None:
    assert not any(word in text.lower() for word in CENSORING), text


@pytest.mark.parametrize("kind", ["shorts", "scenes"])
@pytest.mark.parametrize("reason", REASONS)
def test_covered_kinds_carry_the_coverage_rules_and_their_reason(kind: str, reason: str) -> None:
    system = build_expand_messages(kind, "at the beach", [], PERSONA, words=100, coverage=reason)[0]  # type: ignore[arg-type]
    assert system["role"] == "system"
    content = system["content"]
    assert COVERAGE_RULES in content and COVERAGE_REASONS[reason] in content  # type: ignore[index]
    # The spec's own examples of acceptable coverage reach the model, and what is never described.
    for allowed in (
        "draped in silk sheets",
        "wearing lace lingerie",
        "positioned behind translucent curtains",
    ):
        assert allowed in content
    for forbidden in ("exposed genitals", "exposed nipples", "sexual act", "minor"):
        assert forbidden in content
    assert_no_censoring(content)


@pytest.mark.parametrize("kind", ["shorts", "scenes"])
def test_a_neutral_moderated_expansion_gets_no_rules(kind: str) -> None:
    system = build_expand_messages(kind, "a misty mountain lake", [], PERSONA, words=100)[0]["content"]
    assert COVERAGE_RULES not in system and "coverage" not in system.lower()
    assert not any(text in system for text in COVERAGE_REASONS.values())
    assert system == expand_system_prompt(kind, words=100, coverage=None)


@pytest.mark.parametrize("coverage", [None, *REASONS])
def test_1to1_has_no_moderation_instructions_whatever_the_coverage(coverage: str | None) -> None:
    system = expand_system_prompt("1to1", words=100, coverage=coverage)  # type: ignore[arg-type]
    assert COVERAGE_RULES not in system
    assert "nudity" not in system.lower() and "coverage" not in system.lower()
    assert "moderated" not in system.lower()
    assert system == expand_system_prompt("1to1", words=100)


def test_the_clause_is_the_one_coverage_wording() -> None:
    assert f"Coverage: {COVERAGE_PHRASE}." == COVERAGE_CLAUSE
    assert_no_censoring(COVERAGE_CLAUSE)
    assert_no_censoring(COVERAGE_RULES + " ".join(COVERAGE_REASONS.values()))


@pytest.mark.parametrize("kind", ["1to1", "shorts", "scenes"])
def test_expand_messages_carry_persona_and_instruction_to_keep_it(kind: str) -> None:
    history = [ChatTurn(role="user", content="hi")]
    messages = build_expand_messages(kind, "at the beach", history, PERSONA, words=100)
    assert "keep every trait exactly" in messages[0]["content"]
    user = messages[1]["content"]
    assert f"Character appearance (keep exactly): the same character: {DESCRIPTOR}\n" in user
    assert "Character notes: A cheerful photographer who loves the sea" in user
    assert "at the beach" in user and "user: hi" in user


def test_expand_messages_without_persona() -> None:
    user = build_expand_messages("1to1", "a fox", [], None, words=100)[1]["content"]
    assert "Character appearance (keep exactly): not specified" in user
    assert "Character notes" not in user
    assert character_descriptor(None) == "" and character_descriptor(Features()) == ""


@pytest.mark.parametrize("kind", ["1to1", "shorts", "scenes"])
@pytest.mark.parametrize("coverage", [None, *REASONS])
def test_compose_keeps_persona_and_ends_with_the_clause_only_when_covered(
    kind: str, coverage: str | None
) -> None:
    descriptor = character_descriptor(PERSONA)
    for scene in ["", "junk qq zz", "x" * 5000]:
        # Nothing is cut here: fitting the budget is token_budget.py's (tests/unit/test_llm_engine.py).
        prompt = compose_expanded_prompt(kind, descriptor, scene, coverage=coverage)  # type: ignore[arg-type]
        assert prompt.startswith(f"The same character: {DESCRIPTOR}.") and scene in prompt
        if kind == "1to1" or coverage is None:
            assert COVERAGE_PHRASE not in prompt and prompt.endswith(f"{scene}." if scene else ".")
        else:
            assert prompt.endswith(f". {COVERAGE_CLAUSE}") and prompt.count(COVERAGE_PHRASE) == 1
        assert_no_censoring(prompt)


def test_a_neutral_scene_passes_as_written() -> None:
    scene = "a misty mountain lake at dawn, pine trees, soft fog"
    assert compose_expanded_prompt("scenes", "", scene) == f"{scene}."


def test_compose_without_persona() -> None:
    assert compose_expanded_prompt("1to1", "", "a fox in snow") == "a fox in snow."
    assert compose_expanded_prompt("1to1", "", "a fox in snow, at dusk.") == "a fox in snow, at dusk."


@pytest.mark.parametrize("kind", ["1to1", "shorts", "scenes"])
def test_each_kinds_word_target_reaches_its_system_prompt(kind: str) -> None:
    settings = LlmSettings(expand_words_1to1=90, expand_words_shorts=140, expand_words_scenes=210)
    words = settings.expand_words(kind)  # type: ignore[arg-type]
    assert words == {"1to1": 90, "shorts": 140, "scenes": 210}[kind]
    system = build_expand_messages(kind, "a fox", [], None, words=words)[0]["content"]
    assert f"about {words} words" in system
    # The old hard cap is gone from every prompt the service builds, whatever the kind or style.
    for style in (None, *STYLE_NAMES):
        assert "70 words" not in expand_system_prompt(kind, words=words, style=style)


@pytest.mark.parametrize("style", STYLE_NAMES)
def test_style_reaches_the_system_prompt_and_ends_the_prompt_once(style: str) -> None:
    phrase = STYLE_PHRASES[style]
    system = expand_system_prompt("shorts", words=150, style=style, coverage="suggestive")
    assert STYLE_INSTRUCTION.format(phrase=phrase) in system and COVERAGE_RULES in system
    # The model may copy the phrase into the scene, or not at all: either way it ends the prompt once.
    for scene in ["a fox in snow, at dusk", f"a fox in snow, {phrase}, at dusk", f"a fox in snow, {phrase}."]:
        prompt = compose_expanded_prompt("shorts", DESCRIPTOR, scene, style=style, coverage="suggestive")
        assert prompt.count(phrase) == 1 and prompt.endswith(f"{phrase}. {COVERAGE_CLAUSE}")
        assert "a fox in snow" in prompt and ", ," not in prompt
        assert compose_expanded_prompt("shorts", DESCRIPTOR, scene, style=style).endswith(f"{phrase}.")
    assert phrase not in expand_system_prompt("shorts", words=150)


@pytest.mark.parametrize("style", STYLE_NAMES)
def test_template_scene_carries_the_style_phrase(style: str) -> None:
    scene = template_scene("scenes", "a fox in the snow", max_words=25, style=style)
    assert scene.endswith(STYLE_PHRASES[style]) and TEMPLATE_SCENE_TAIL not in scene and "fox" in scene
    assert template_scene("scenes", "a fox in the snow", max_words=25).endswith(TEMPLATE_SCENE_TAIL)
    prompt = compose_expanded_prompt("scenes", "", scene, style=style)
    assert prompt.count(STYLE_PHRASES[style]) == 1


def test_shorten_caption_reply_builders() -> None:
    shorten = build_shorten_messages("long message", 25)
    assert "at most 25 words" in shorten[0]["content"] and shorten[1]["content"] == "long message"
    caption = build_caption_messages("a fox", "show me a fox", min_words=10, max_words=15)
    assert "10 to 15 words" in caption[0]["content"] and "safe for work" in caption[0]["content"]
    assert "a fox" in caption[1]["content"] and "show me a fox" in caption[1]["content"]
    history = [ChatTurn(role="user", content="hello"), ChatTurn(role="assistant", content="hi!")]
    reply = build_reply_messages(ReplyRequest(message="how are you?", persona=PERSONA), history)
    assert [m["role"] for m in reply] == ["system", "user", "assistant", "user"]
    assert f"Your appearance: {DESCRIPTOR}." in reply[0]["content"]
    assert "About you: A cheerful photographer" in reply[0]["content"]
    assert "Your name" not in reply[0]["content"] and "Your personality" not in reply[0]["content"]
    assert reply[-1]["content"] == "how are you?"
    # A stored persona's record speaks too: its name, personality and way of speaking, beside its looks.
    who = ReplyRequest(
        message="hi", persona=PERSONA, name="Ada", personality="dry wit", speaking_style="short sentences"
    )
    system = build_reply_messages(who, [])[0]["content"]
    assert "Your name: Ada." in system and f"Your appearance: {DESCRIPTOR}." in system
    assert "Your personality: dry wit" in system and "How you speak: short sentences" in system
