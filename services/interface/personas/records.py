"""A stored persona: what its API key made, with the avatar candidates kept beside it (never in its JSON)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

from shared.errors import ImgPodError
from shared.models import MAX_PERSONA_AVATARS, Features, PersonaAvatar, PersonaView

MAX_AVATARS = MAX_PERSONA_AVATARS
ID_PATTERN = r"^per_[0-9a-f]{24}$"


class PersonaNotFound(ImgPodError):
    """Missing, or another key's: the same answer, so ids never tell whether they exist."""

    status_code = 404
    code = "persona_not_found"


class PersonaLimitReached(ImgPodError):
    status_code = 409
    code = "persona_limit_reached"


def new_persona_id() -> str:
    # 96 random bits, like job ids: unguessable, though ownership is what guards them.
    return "per_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class PersonaRecord:
    id: str
    # The API key's id (admission.owner_of); None on an open deployment, where everyone is one owner.
    owner: str | None
    features: Features
    name: str | None = None
    personality: str | None = None
    speaking_style: str | None = None
    avatar_count: int = 0
    approved: int | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.updated_at:
            object.__setattr__(self, "updated_at", self.created_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "features": self.features.model_dump(mode="json"),
            "name": self.name,
            "personality": self.personality,
            "speaking_style": self.speaking_style,
            "avatar_count": self.avatar_count,
            "approved": self.approved,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def drawn(
        cls,
        owner: str | None,
        features: Features,
        avatar_count: int,
        *,
        name: str | None,
        personality: str | None,
        speaking_style: str | None,
    ) -> PersonaRecord:
        """A new persona whose avatar candidates were just drawn (from a selfie or a brief): the first one is
        approved until the client picks another."""
        return cls(
            id=new_persona_id(),
            owner=owner,
            features=features,
            name=name,
            personality=personality,
            speaking_style=speaking_style,
            avatar_count=avatar_count,
            approved=0 if avatar_count else None,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PersonaRecord:
        return cls(**{**data, "features": Features.model_validate(data["features"])})

    def changed(self, **fields: Any) -> PersonaRecord:
        return replace(self, **fields, updated_at=max(time.time(), self.updated_at))

    def view(self) -> PersonaView:
        approved = self.approved
        return PersonaView(
            id=self.id,
            name=self.name,
            features=self.features,
            personality=self.personality,
            speaking_style=self.speaking_style,
            avatars=[PersonaAvatar(index=i, approved=i == approved) for i in range(self.avatar_count)],
            avatar_url=avatar_path(self.id, approved) if approved is not None else None,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


def persona_path(persona_id: str) -> str:
    return f"/v1/personas/{persona_id}"


def avatar_path(persona_id: str, index: int) -> str:
    return f"{persona_path(persona_id)}/avatars/{index}"
