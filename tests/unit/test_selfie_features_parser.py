"""The VLM answer parser: good JSON in any wrapping becomes Features; junk never becomes a value."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.selfie_feature_worker.features import clean_text, find_json_object, parse_features
from shared.models import Features

GOOD = {
    "hair_color": "Brown",
    "hair_style": "short, curly",
    "eye_color": "green",
    "skin_tone": "light",
    "age_range": "25-35",
    "gender_presentation": "feminine",
    "facial_hair": "none",
    "glasses": False,
    "expression": "smiling",
    "accessories": ["earrings", "necklace"],
    "description": "A smiling woman with short curly brown hair.",
}


def test_plain_json() -> None:
    features, parsed = parse_features(json.dumps(GOOD))
    assert parsed is True
    assert features == Features(**GOOD)


@pytest.mark.parametrize(
    "wrap",
    [
        "```json\n{}\n```",
        "Sure! Here is the JSON:\n{}\nLet me know if you need more.",
        '{} {{"hair_color": "red"}}',  # the first object wins
        "<|im_start|>assistant\n{}<|im_end|>",
    ],
)
def test_json_in_fences_and_prose(wrap: str) -> None:
    features, parsed = parse_features(wrap.replace("{}", json.dumps(GOOD), 1))
    assert parsed is True
    assert features.hair_color == "Brown"
    assert features.accessories == ["earrings", "necklace"]


def test_trailing_comma_and_unclosed_object() -> None:
    assert parse_features('{"hair_color": "black", "eye_color": "brown",}')[0].eye_color == "brown"
    features, parsed = parse_features('{"hair_color": "black", "glasses": true')
    assert parsed and features.hair_color == "black" and features.glasses is True


def test_value_normalisation() -> None:
    features, parsed = parse_features(
        json.dumps(
            {
                "Hair Colour": "  dark   brown ",
                "glasses": "yes",
                "accessories": "hat, earrings;  hat",
                "age": 30,
                "description": " ".join(f"detail{i}" for i in range(100)),
                "unknown_key": "ignored",
            }
        )
    )
    assert parsed
    assert features.hair_color == "dark brown"
    assert features.glasses is True
    assert features.accessories == ["hat", "earrings"]
    assert features.age_range == "30"
    assert features.description is not None and len(features.description) <= 400


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\n\n",
        "I cannot help with that.",
        " 25\x02\ufffd modest orange)ken 25\x02\ufffd modest orange)ken",  # what the tiny random VLM emits
        "[1, 2, 3]",
        '"just a string"',
        "{not json at all}",
        '{"hair_color": null, "eye_color": "unknown", "glasses": "maybe", "accessories": []}',
        '{"hair_color": "\\u0002\\u0003bro", "eye_color": "{{}}[]##@@", "skin_tone": 12345678}',
        '{"hair_color": "brown brown brown brown brown brown"}',
        '{"foo": "bar", "baz": 1}',
    ],
)
def test_junk_gives_no_features(text: str) -> None:
    features, parsed = parse_features(text)
    assert parsed is False
    assert features == Features()


def test_junk_fields_dropped_good_ones_kept() -> None:
    features, parsed = parse_features(
        '{"hair_color": "blonde", "eye_color": "\\u0001\\u0002", "skin_tone": "%%%%", "glasses": 3}'
    )
    assert parsed
    assert features.hair_color == "blonde"
    assert features.eye_color is None and features.skin_tone is None and features.glasses is None


def test_find_json_object_skips_non_objects() -> None:
    assert find_json_object('noise {"a": [1, {"b": 2}]} tail') == {"a": [1, {"b": 2}]}
    assert find_json_object("{ broken ") is None


def test_clean_text_limits() -> None:
    assert clean_text("x" * 100, 64) == "x" * 64
    # Cut at a word boundary when one is near the limit.
    assert clean_text("short curly brown hair with a side parting", 32) == "short curly brown hair with a"
    assert clean_text(["list"], 64) is None
    assert clean_text(True, 64) is None


@given(st.text(max_size=300))
def test_parser_never_raises_and_output_validates(text: str) -> None:
    features, parsed = parse_features(text)
    Features.model_validate(features.model_dump())
    if not parsed:
        assert features == Features()
