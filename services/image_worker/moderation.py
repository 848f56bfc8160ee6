"""Text policy at the image worker: the last gate before pixels exist.

The interface already applies the policy, but workers sit on public proxy URLs and may be called
directly: every route refuses hard-blocked prompts, and the routes whose role soft-blocks (shared/roles.py)
append the safety constraints to explicit prompts themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import PolicyBlocked
from shared.policy import check_expanded_prompt, decide_off_loop
from shared.roles import RoleName, policy_for


@dataclass(frozen=True, slots=True)
class ModeratedPrompt:
    prompt: str
    soft_blocked: bool


async def moderate(prompt: str, route_role: RoleName) -> ModeratedPrompt:
    """Hard block everywhere; soft block (constraints appended) where the route's role says so."""
    moderated = policy_for(route_role).soft_block
    decision = await decide_off_loop(lambda text: check_expanded_prompt(text, moderated=moderated), prompt)
    if decision.blocked:
        raise PolicyBlocked(decision.reason or "the prompt is not allowed", stage="image_policy")
    return ModeratedPrompt(decision.prompt, decision.soft_blocked)


async def check_negative_prompt(negative_prompt: str | None) -> None:
    """Hard block only: a negative prompt lists what to keep out ("nudity" is a usual one), so the soft
    block, which adds safety words to explicit prompts, has nothing to do here; the hard block still applies,
    as it does to any text of a client's that reaches the model."""
    if not negative_prompt or not negative_prompt.strip():
        return
    decision = await decide_off_loop(
        lambda text: check_expanded_prompt(text, moderated=False), negative_prompt
    )
    if decision.blocked:
        raise PolicyBlocked(decision.reason or "the negative prompt is not allowed", stage="image_policy")
