"""``flows.both``: two stages side by side (the chat flow's image and caption)."""

from __future__ import annotations

import asyncio

import pytest

from services.interface.flows import both
from shared.errors import UpstreamFailed


def test_both_run_side_by_side_and_come_back_in_order() -> None:
    async def main() -> tuple[str, str]:
        caption_started = asyncio.Event()

        async def image() -> str:
            # Finishes only once the caption has started: one after the other would never get here.
            await caption_started.wait()
            return "image"

        async def caption() -> str:
            caption_started.set()
            return "caption"

        return await asyncio.wait_for(both(image(), caption()), 5)

    assert asyncio.run(main()) == ("image", "caption")


def test_a_failure_is_raised_at_once_and_cancels_the_other() -> None:
    cancelled: list[str] = []

    async def slow_image() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append("image")
            raise
        return "image"

    async def failing_caption() -> str:
        await asyncio.sleep(0.01)
        raise UpstreamFailed("caption: no", stage="caption")

    async def main() -> None:
        with pytest.raises(UpstreamFailed):
            await asyncio.wait_for(both(slow_image(), failing_caption()), 5)

    asyncio.run(main())
    assert cancelled == ["image"]


def test_cancelling_the_caller_cancels_both_and_waits_for_them() -> None:
    ended: list[str] = []

    async def stage(name: str) -> str:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.01)  # a clean-up that takes a moment (a worker call closing its stream)
            ended.append(name)
        return name

    async def main() -> None:
        task = asyncio.create_task(both(stage("image"), stage("caption")))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Both had finished their clean-up by the time the caller saw the cancel.
        assert sorted(ended) == ["caption", "image"]

    asyncio.run(main())
