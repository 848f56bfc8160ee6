"""The running job's progress sink, for the flows' generate calls to hand to the worker pool.

A context variable rather than a parameter threaded through every flow: the flows are the same for a job that
someone watches and one nobody does, and only their image-worker call cares. Unset: the plain call, no stream.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from shared.progress_stream import Progress

ProgressSink = Callable[[Progress], None]
progress_sink: ContextVar[ProgressSink | None] = ContextVar("progress_sink", default=None)
