"""The edge protocol's body clock while the server itself has stopped reading (its buffer is full).

The state is hard to reach over a socket on purpose (uvicorn resumes reading whenever an app waits on
``receive``), so the timer's decision is checked on the protocol object with a real event loop.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from shared.edge_limits import EdgeLimits
from shared.edge_protocol import GuardedHttpToolsProtocol, Phase


def test_a_paused_body_is_not_closed_and_its_check_waits_an_idle_period() -> None:
    loop = asyncio.new_event_loop()
    try:
        proto = object.__new__(GuardedHttpToolsProtocol)
        proto.loop = loop
        proto.limits = EdgeLimits(body_idle_timeout_s=1.5, body_timeout_s=4.0)
        proto.transport = SimpleNamespace(is_closing=lambda: False)
        proto.flow = SimpleNamespace(read_paused=True)
        proto._timer = None
        proto._phase = Phase.BODY
        now = loop.time()
        # Both clocks long past: had the client been the slow one, this would be a 408.
        proto._body_started = now - 100.0
        proto._last_body_data = now - 100.0
        refused: list[str] = []
        proto._refuse = lambda response, reason: refused.append(reason)  # type: ignore[method-assign]

        proto._on_timer()

        assert refused == []
        assert proto._timer is not None
        # Re-armed one idle period ahead, never at a deadline already past (that would spin the loop).
        assert proto._timer.when() >= now + 1.5 - 0.01
        proto._timer.cancel()
    finally:
        loop.close()
