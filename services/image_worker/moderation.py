"""Role policy at the image worker: the last gate before pixels exist.

The interface already applies the policy, but workers sit on public proxy URLs and may be called
directly: every role refuses hard-blocked prompts, and the moderated roles (shorts, scenes) append the
safety constraints to explicit prompts themselves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from services.image_worker.settings import Role
from shared.errors import PolicyBlocked
from shared.policy import check_expanded_prompt

MODERATED_ROLES: frozenset[Role] = frozenset({"shorts", "scenes"})


@dataclass(frozen=True, slots=True)
class ModeratedPrompt:
    prompt: str
    soft_blocked: bool


# The policy costs about a millisecond per 2,000 characters: longer prompts are judged in a thread.
_INLINE_CHARS = 200


async def moderate(prompt: str, role: Role, *, moderated_route: bool) -> ModeratedPrompt:
    """Hard block everywhere; soft block (constraints appended) on moderated roles' own routes."""
    if len(prompt) <= _INLINE_CHARS:
        return moderate_now(prompt, role, moderated_route=moderated_route)
    return await asyncio.to_thread(moderate_now, prompt, role, moderated_route=moderated_route)


def moderate_now(prompt: str, role: Role, *, moderated_route: bool) -> ModeratedPrompt:
    decision = check_expanded_prompt(prompt, moderated=moderated_route and role in MODERATED_ROLES)
    if decision.blocked:
        raise PolicyBlocked(decision.reason or "the prompt is not allowed", stage="image_policy")
    return ModeratedPrompt(decision.prompt, decision.soft_blocked)
