"""What each role's content policy is: the one declaration every service reads.

A role is a kind of image a route makes. The interface (which text checks run before and after the LLM),
the LLM service (whether an expansion may get coverage rules and the coverage clause) and the image workers
(coverage on their routes, the pixel check of the output) all look the role up here, so "moderated" means
one thing everywhere. The hard block (sexual content with minors, sexual violence and the like) is not a
flag: it applies to every role, every route, every text.

A worker applies the policy of the *route* it is called on, not of the role it was deployed as: the general
text-to-image pool may rotate over every image worker, and the same prompt must get the same checks
whichever worker it lands on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RoleName = Literal["general", "profile", "chat1to1", "shorts", "scenes"]
ChatKind = Literal["1to1", "shorts", "scenes"]


@dataclass(frozen=True, slots=True)
class RolePolicy:
    # Suggestive or explicit (not hard-blocked) prompts keep their text and get coverage; otherwise they pass
    # unchanged (adults may ask for explicit images in their private 1:1 chat).
    soft_block: bool
    # The LLM's expansion gets coverage rules and the coverage clause when the message needs coverage
    # (chat roles only; shared/policy decides, docs/MODERATION.md).
    moderated_expansion: bool
    # The generated pixels are checked by the output safety model before they leave the worker.
    pixel_check: bool


ROLES: dict[RoleName, RolePolicy] = {
    # /v1/imagegen: a public, moderated endpoint without an LLM stage.
    "general": RolePolicy(soft_block=True, moderated_expansion=False, pixel_check=True),
    # The avatar is drawn from a fixed house-style prompt built from selfie features.
    "profile": RolePolicy(soft_block=False, moderated_expansion=False, pixel_check=False),
    # 1:1 chat (and private chat images): no NSFW moderation beyond the hard block.
    "chat1to1": RolePolicy(soft_block=False, moderated_expansion=False, pixel_check=False),
    "shorts": RolePolicy(soft_block=True, moderated_expansion=True, pixel_check=True),
    "scenes": RolePolicy(soft_block=True, moderated_expansion=True, pixel_check=True),
}

CHAT_KIND_ROLE: dict[ChatKind, RoleName] = {"1to1": "chat1to1", "shorts": "shorts", "scenes": "scenes"}


def policy_for(role: RoleName) -> RolePolicy:
    return ROLES[role]


def chat_policy(kind: ChatKind) -> RolePolicy:
    return ROLES[CHAT_KIND_ROLE[kind]]
