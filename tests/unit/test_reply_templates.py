"""Template replies: labelled, in character, deterministic, and never carrying blocked persona text."""

from __future__ import annotations

import asyncio

import pytest

from shared.errors import ModelUnavailable, UnusableModelOutput
from shared.models import Features, ReplyRequest
from shared.reply_templates import checked_template_reply, template_reply
from tests.unit.test_llm_engine import make_engine, run


def test_the_same_message_and_persona_give_the_same_reply() -> None:
    persona = Features(hair_color="auburn", hair_style="long wavy", glasses=True)
    assert template_reply("hi", persona) == template_reply("hi", persona)
    replies = {template_reply(f"message {i}", persona) for i in range(40)}
    assert len(replies) > 5  # lines and gestures vary across messages


def test_the_persona_shows_in_the_gesture() -> None:
    glasses_only = Features(glasses=True)
    assert template_reply("hi", glasses_only).startswith("*pushes my glasses up*")
    hair = Features(hair_color="black", hair_style="curly")
    assert "curly black hair" in template_reply("hello", hair)
    assert template_reply("hello", None).startswith("*smiles*")
    assert template_reply("hello", Features()).startswith("*smiles*")


def test_the_user_message_is_never_echoed() -> None:
    message = "zebra-unicorn-42 is my secret word"
    assert "zebra" not in template_reply(message, Features(hair_color="red"))


def test_a_persona_trait_the_hard_block_refuses_is_dropped() -> None:
    blocked = Features(hair_style="child porn")
    reply = asyncio.run(checked_template_reply("hi", blocked))
    assert "porn" not in reply and reply == template_reply("hi", None)
    fine = Features(hair_style="short", hair_color="red")
    assert "short red hair" in asyncio.run(checked_template_reply("hi", fine))


@pytest.mark.parametrize(
    "answer", [ModelUnavailable("LLM backend unavailable"), "<|im_start|>assistant\n<|im_end|>"]
)
def test_llm_service_reply_falls_back_to_a_labelled_template_when_on(answer: object) -> None:
    persona = Features(glasses=True)
    engine, _ = make_engine([answer], template_fallback=True)
    resp = run(engine.reply(ReplyRequest(message="hi", persona=persona)))
    assert resp.source == "template" and resp.model == "template"
    assert resp.reply == template_reply("hi", persona)
    assert "template" in resp.timings_ms
    engine, _ = make_engine([answer])  # off, the service's default: the error is the answer
    with pytest.raises((ModelUnavailable, UnusableModelOutput)):
        run(engine.reply(ReplyRequest(message="hi", persona=persona)))
