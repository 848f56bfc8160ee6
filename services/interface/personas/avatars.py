"""Avatar candidates from a profile job's answer: the PNG bytes a persona keeps."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from pydantic import BaseModel

from services.interface.personas.records import MAX_AVATARS
from shared.errors import UpstreamFailed
from shared.images import decode_base64_image, encode_image
from shared.models import ProfileCreateResponse

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def profile_answer(result: BaseModel | dict[str, Any]) -> ProfileCreateResponse:
    """The profile job's response: the object when it ran here, its stored JSON when another replica did."""
    if isinstance(result, ProfileCreateResponse):
        return result
    data = result.model_dump() if isinstance(result, BaseModel) else result
    return ProfileCreateResponse.model_validate(data)


def _png(text: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UpstreamFailed("the profile worker answered an unreadable image", stage="personas") from exc
    if data.startswith(_PNG_SIGNATURE):
        return data
    # A worker deployed with another output format: the persona's avatars are PNG, whatever made them.
    return encode_image(decode_base64_image(text), "png")


async def avatar_candidates(profile: ProfileCreateResponse) -> list[bytes]:
    """Up to MAX_AVATARS PNGs, the profile image first; decoded on a thread (megabytes of base64)."""
    return await avatar_pngs([profile.profile_image_base64, *(i.image_base64 for i in profile.more_images)])


async def avatar_pngs(texts: list[str]) -> list[bytes]:
    """Up to MAX_AVATARS PNGs from the profile worker's base64 images, in order, decoded on a thread."""
    return await asyncio.to_thread(lambda: [_png(text) for text in texts[:MAX_AVATARS]])
