"""The one declaration of what each role's policy is, and that every service reads it."""

from __future__ import annotations

from typing import get_args

from services.image_worker.engine import ImageEngine
from services.image_worker.settings import ImageSettings
from services.llm_service.prompts import MODERATED_KINDS
from shared.metrics import ServiceMetrics
from shared.roles import CHAT_KIND_ROLE, ROLES, ChatKind, RoleName, chat_policy


def test_every_role_is_declared_once() -> None:
    assert set(ROLES) == set(get_args(RoleName))
    assert set(CHAT_KIND_ROLE) == set(get_args(ChatKind))


def test_the_product_definition_of_moderation() -> None:
    # 1:1 chat: no NSFW moderation beyond the hard block; shorts and scenes: moderated in text and pixels.
    assert (chat_policy("1to1").soft_block, chat_policy("1to1").pixel_check) == (False, False)
    for kind in ("shorts", "scenes"):
        policy = chat_policy(kind)
        assert (policy.soft_block, policy.moderated_expansion, policy.pixel_check) == (True, True, True)
    assert ROLES["general"].soft_block and ROLES["general"].pixel_check


def test_the_llm_reads_the_declaration() -> None:
    assert set(MODERATED_KINDS) == {k for k in CHAT_KIND_ROLE if chat_policy(k).moderated_expansion}


def test_a_worker_checks_pixels_by_route_not_by_its_own_role() -> None:
    for own_role in ("profile", "chat1to1", "shorts", "scenes"):
        engine = ImageEngine(ImageSettings(role=own_role), ServiceMetrics(f"roles-{own_role}"))
        assert engine.checks_output("general") is True, own_role
        assert engine.checks_output("chat1to1") is False, own_role
        assert engine.checks_output("shorts") is True, own_role
    off = ImageEngine(ImageSettings(role="shorts", output_safety="off"), ServiceMetrics("roles-off"))
    assert off.checks_output("shorts") is False
