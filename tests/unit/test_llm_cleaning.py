"""The cleaner and the usability judge, on the kinds of junk models really emit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.llm_service.cleaning import (
    clean_output,
    drop_unfinished_phrase,
    judge,
    phrase_cuts,
    truncate_words,
    word_count,
    word_cuts,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A red fox in the snow.<|im_end|>", "A red fox in the snow."),
        (
            "<|im_start|>assistant\nA red fox in the snow<|im_end|>\n<|im_start|>user\nmore",
            "A red fox in the snow",
        ),
        ("A red fox<|endoftext|><|endoftext|>", "A red fox"),
        ("assistant: A red fox", "A red fox"),
        ("Prompt: A red fox", "A red fox"),
        ("Sure, here is a prompt: A red fox", "A red fox"),
        ('Sure! Here\'s the image prompt:\n\n"A red fox in the snow"', "A red fox in the snow"),
        ("Here's a prompt: 'A red fox'", "A red fox"),
        ("Certainly! A red fox", "A red fox"),
        ("“A red fox”", "A red fox"),
        ("```text\nA red fox in the snow\n```", "A red fox in the snow"),
        ("```\nA red fox", "A red fox"),
        ("A   red\n\n fox\tin  snow", "A red fox in snow"),
        ("A red\x00 fox\x1b in\u200b the\ufffd snow", "A red fox in the snow"),
        ("**A red fox** in the snow", "A red fox in the snow"),
        ("", ""),
        ("   \n\n  ", ""),
        ("<|im_end|>", ""),
        ('""', ""),
    ],
)
def test_clean_output(raw: str, expected: str) -> None:
    assert clean_output(raw) == expected


def test_clean_keeps_legitimate_text_that_looks_like_a_prefix() -> None:
    # "Here" and "sure" inside a sentence are content, not a preamble.
    assert (
        clean_output("Sunset over the sea, here and there a boat")
        == "Sunset over the sea, here and there a boat"
    )
    assert clean_output("A surefooted goat on a cliff") == "A surefooted goat on a cliff"


@given(st.text(max_size=300))
def test_clean_never_raises_and_returns_printable_single_line(raw: str) -> None:
    out = clean_output(raw)
    assert "\n" not in out and "\t" not in out
    assert "<|im_end|>" not in out and "<|im_start|>" not in out
    assert "\ufffd" not in out
    assert all(c.isprintable() for c in out)
    assert out == out.strip()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a", "too few"),
        ("ok fine", "too few"),
        ("!!! ??? ... 123 456 ###", "too few"),
        ("42 17 99 3.14 0 1 2 3", "too few"),
        ("ab 12345678 cd 987654321 ef 1234567890", "non-letters"),
        ("fox fox fox fox fox fox fox fox fox fox", "repetitive"),
    ],
)
def test_judge_rejects_junk(text: str, reason: str) -> None:
    verdict = judge(text)
    assert not verdict.usable
    assert reason in (verdict.reason or "")


@pytest.mark.parametrize(
    "text",
    [
        "A red fox sitting in fresh snow at dawn",
        "Portrait of a woman with auburn hair, soft light, 85mm lens",
        "Un renard roux dans la neige",  # non-English letters are letters
    ],
)
def test_judge_accepts_text(text: str) -> None:
    assert judge(text).usable


def test_judge_min_words_is_configurable() -> None:
    assert judge("Hello there", min_words=1).usable
    assert not judge("Hello there", min_words=3).usable


def test_word_count_ignores_punctuation_tokens() -> None:
    assert word_count("A fox - in the snow !") == 5
    assert word_count("") == 0


def test_truncate_words() -> None:
    text = "one two three, four - five six seven"
    assert truncate_words(text, 3) == "one two three"
    assert truncate_words(text, 5) == "one two three, four - five"
    assert word_count(truncate_words(text, 4)) == 4
    assert truncate_words(text, 50) == text


def test_phrase_cuts_fall_on_separators_followed_by_a_space() -> None:
    text = "a fox in snow, at dusk; soft light. 3.5 mm lens, f/1.8"
    assert [text[:c] for c in phrase_cuts(text)] == [
        "a fox in snow",
        "a fox in snow, at dusk",
        "a fox in snow, at dusk; soft light",
        "a fox in snow, at dusk; soft light. 3.5 mm lens",
    ]
    assert [text[:c] for c in word_cuts("a fox  in")] == ["a", "a fox"]


@given(st.text(alphabet="ab ,;.", max_size=60))
def test_every_phrase_cut_ends_before_a_separator(text: str) -> None:
    for cut in phrase_cuts(text):
        assert text[cut] in ",;.!?" and text[cut + 1].isspace()


def test_drop_unfinished_phrase() -> None:
    assert drop_unfinished_phrase("a fox in snow, at dusk, wearing a red") == "a fox in snow, at dusk"
    assert drop_unfinished_phrase("a fox in snow wearing a red") == "a fox in snow wearing a red"
