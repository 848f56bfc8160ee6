"""The one persona descriptor: selfie features to words, shared by the avatar and the chat prompts."""

from __future__ import annotations

import pytest

from services.image_worker.profile_prompt import DEFAULT_STYLE, build_profile_prompt
from services.llm_service.prompts import character_descriptor, reply_system_prompt
from shared.models import Features
from shared.persona import (
    MAX_ACCESSORIES,
    MAX_DESCRIPTOR_CHARS,
    clean_trait,
    describe_expression,
    describe_persona,
    persona_notes,
)

FULL = Features(
    hair_color="auburn",
    hair_style="long wavy",
    eye_color="green",
    skin_tone="fair",
    age_range="25-34",
    gender_presentation="woman",
    facial_hair="none",
    glasses=True,
    expression="smiling",
    accessories=["silver necklace", "red scarf"],
    description="A cheerful photographer who loves the sea.",
)
FULL_DESCRIPTOR = (
    "woman, age 25-34, long wavy auburn hair, green eyes, fair skin, clean-shaven, wearing glasses, "
    "wearing silver necklace, red scarf"
)


def test_full_features_give_the_one_wording_in_a_fixed_order() -> None:
    assert describe_persona(FULL) == FULL_DESCRIPTOR
    # Deterministic: the same words every call and for an equal model built separately.
    assert describe_persona(FULL) == describe_persona(Features(**FULL.model_dump()))


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (Features(gender_presentation="man"), "man"),
        (Features(gender_presentation="androgynous"), "androgynous person"),
        (Features(gender_presentation="feminine"), "feminine person"),
        (Features(age_range="20-30"), "age 20-30"),
        (Features(age_range="young adult"), "young adult"),
        (Features(hair_color="black"), "black hair"),
        (Features(hair_style="short curly"), "short curly hair"),
        (Features(hair_style="short", hair_color="brown"), "short brown hair"),
        (Features(eye_color="brown"), "brown eyes"),
        (Features(skin_tone="olive"), "olive skin"),
        (Features(facial_hair="stubble"), "stubble"),
        (Features(facial_hair="full beard"), "full beard"),
        (Features(facial_hair="none"), "clean-shaven"),
        (Features(facial_hair="No facial hair"), "clean-shaven"),
        (Features(glasses=True), "wearing glasses"),
        (Features(glasses=False), "no glasses"),
        (Features(accessories=["earrings"]), "wearing earrings"),
        (Features(accessories=["earrings", "hat"]), "wearing earrings, hat"),
    ],
)
def test_each_field_alone(features: Features, expected: str) -> None:
    assert describe_persona(features) == expected


def test_unknown_and_empty_fields_are_skipped() -> None:
    assert describe_persona(None) == ""
    assert describe_persona(Features()) == ""
    assert describe_persona(Features(glasses=None, accessories=[])) == ""
    blank = Features(hair_color="", hair_style="  ", eye_color=" . ", skin_tone="\x00", age_range=",")
    assert describe_persona(blank) == ""
    assert describe_persona(Features(accessories=["", " ", "none"])) == ""
    # Neither expression nor description is an appearance trait of the descriptor.
    assert describe_persona(Features(expression="smiling", description="A photographer.")) == ""


def test_values_are_sanitised() -> None:
    assert describe_persona(Features(hair_color="  red\n\x00 ", facial_hair="full beard.")) == (
        "red hair, full beard"
    )
    assert clean_trait(" a \t b ; ") == "a b"
    assert clean_trait(None) is None and clean_trait("\x01") is None


def test_no_field_text_is_said_twice() -> None:
    doubled = Features(
        gender_presentation="person",
        hair_color="black hair",
        hair_style="short hair",
        eye_color="brown eyes",
        skin_tone="dark skin",
        expression="neutral expression",
        glasses=True,
        accessories=["Glasses", "hat", "Hat", "hat"],
    )
    descriptor = describe_persona(doubled)
    assert descriptor == "person, short black hair, brown eyes, dark skin, wearing glasses, wearing hat"
    for word in ("person", "black", "hair", "eyes", "skin", "glasses", "hat"):
        assert descriptor.lower().count(word) == 1, word
    # A hair style that already names the colour does not repeat it (and the other way round).
    assert describe_persona(Features(hair_style="short brown", hair_color="brown")) == "short brown hair"
    assert describe_persona(Features(hair_style="curly", hair_color="curly red")) == "curly red hair"
    # Whole words only: "red" inside another word is no repeat.
    assert describe_persona(Features(hair_style="braided", hair_color="red")) == "braided red hair"
    assert describe_expression(doubled) == "neutral expression"


def test_every_known_field_appears_exactly_once_in_the_full_descriptor() -> None:
    descriptor = describe_persona(FULL)
    for text in ("woman", "25-34", "long wavy", "auburn", "green", "fair", "clean-shaven", "glasses"):
        assert descriptor.count(text) == 1, text
    for accessory in FULL.accessories:
        assert descriptor.count(accessory) == 1, accessory


def test_accessories_keep_their_order_and_are_capped() -> None:
    many = [f"item{i}" for i in range(10)]
    descriptor = describe_persona(Features(accessories=many))
    assert descriptor == "wearing " + ", ".join(many[:MAX_ACCESSORIES])


def test_length_is_bounded_even_at_every_field_limit() -> None:
    longest = Features(
        hair_color="c" * 64,
        hair_style="s" * 64,
        eye_color="e" * 64,
        skin_tone="t" * 64,
        age_range="1" * 32,
        gender_presentation="g" * 32,
        facial_hair="f" * 64,
        glasses=True,
        accessories=[f"{i}" * 64 for i in range(10)],
    )
    descriptor = describe_persona(longest)
    assert len(descriptor) <= MAX_DESCRIPTOR_CHARS
    # Within today's field limits nothing is dropped but the accessories past the cap.
    assert descriptor.startswith("g" * 32) and "wearing glasses" in descriptor
    assert descriptor.endswith("4" * 64)


def test_length_guard_drops_whole_trailing_phrases() -> None:
    # model_construct skips validation: stands in for field limits that may grow later.
    huge = Features.model_construct(
        gender_presentation="woman", eye_color="green", accessories=["x" * 2000], glasses=None
    )
    descriptor = describe_persona(huge)
    assert descriptor == "woman, green eyes"
    assert len(descriptor) <= MAX_DESCRIPTOR_CHARS


def test_expression_and_notes_helpers() -> None:
    assert describe_expression(FULL) == "smiling expression"
    assert describe_expression(Features()) == "" and describe_expression(None) == ""
    assert persona_notes(FULL) == "A cheerful photographer who loves the sea"
    assert persona_notes(Features(description=" \n ")) is None and persona_notes(None) is None


def test_avatar_and_chat_carry_the_same_words() -> None:
    """The point of the one descriptor: the avatar and every chat prompt describe the persona identically."""
    assert build_profile_prompt(FULL, None) == f"{DEFAULT_STYLE}, {FULL_DESCRIPTOR}, smiling expression"
    assert build_profile_prompt(FULL, " anime style ").startswith(f"anime style, {FULL_DESCRIPTOR}, ")
    assert character_descriptor(FULL) == f"the same character: {FULL_DESCRIPTOR}"
    assert f"Your appearance: {FULL_DESCRIPTOR}." in reply_system_prompt(FULL)
    # The avatar still needs a subject when nothing is known; chat then says nothing about looks.
    assert build_profile_prompt(Features(), None) == f"{DEFAULT_STYLE}, a person"
    assert character_descriptor(Features()) == ""
