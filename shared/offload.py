"""Work that costs milliseconds when its input is large: in a thread then, inline otherwise.

Why both: a thread hop costs tens of microseconds, more than encoding or parsing a small JSON body; an image's
base64 (megabytes) costs about a millisecond per 1.2 MB to parse or encode, which must not run on an event
loop that serves every other request meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Past this size (bytes or characters) the work goes to a thread: ~50 us of JSON, about a thread hop.
INLINE_BYTES = 64 * 1024


async def off_loop_if(large: bool, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, in a thread when ``large``."""
    return await asyncio.to_thread(fn, *args) if large else fn(*args)
