"""How every service bounds its connections: the one place the launcher, the scripts and the tests read.

A public HTTP port is reached by clients on slow mobile links and by anyone who wants to pin it. Without
these bounds a connection that sends one header byte every half second is kept for ever, an 8 MB header is
parsed and answered, and a few hundred such connections exhaust the file descriptors. The values below are
enforced by ``shared/edge_protocol.py`` inside uvicorn's own HTTP protocol (DEPLOYMENT.md, "Connection
limits", says why that and not another server or a proxy).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import LayeredSettings


class EdgeLimits(LayeredSettings):
    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore", validate_default=True)
    yaml_section: ClassVar[str] = "edge"

    # From the connection's first byte (or its opening, for the first request) to the end of the headers.
    # A real client sends its headers in one packet; 10 s covers a bad mobile link.
    header_timeout_s: float = Field(10.0, gt=0)
    # The longest gap between two pieces of a request body while the service is reading it.
    body_idle_timeout_s: float = Field(15.0, gt=0)
    # The whole body: a 10 MB selfie at 1 Mbit/s takes 80 s.
    body_timeout_s: float = Field(120.0, gt=0)
    # Request line plus headers; past it the answer is 431. Browsers send 1-2 kB, big cookies 8 kB.
    max_header_bytes: int = Field(32 * 1024, ge=1024)
    # Open connections per process; one more is answered 503 and closed. Below the usual 1024 file descriptors
    # so the service keeps some for its own calls to workers and for its model files.
    max_connections: int = Field(512, ge=1)
    # An idle keep-alive connection is closed after this. Must stay above the interface's own pool expiry
    # (4 s, shared/http_client.py), so the interface never reuses a connection the worker is closing.
    keep_alive_s: int = Field(5, ge=1)
    # After the app's own drain (shared/drain.py) has finished or timed out, what uvicorn may still wait.
    graceful_shutdown_s: int = Field(30, ge=0)
    # glibc's allocator, read when the process starts (shared/serve.py sets them; a variable already in the
    # environment wins). Decodes and model calls run in threads; by default glibc raises its mmap threshold
    # after each large free, so the next large blocks (Pillow's 16 MB image blocks) come from per-thread
    # arenas and stay held after the burst. A fixed threshold keeps every block of 1 MiB or more in its own
    # mapping, returned on free: a burst of 16 huge uploads left the selfie worker at 917 MB after (baseline
    # 900) instead of 1027, with a lower peak; jemalloc measured in between (bench/bench_upload_memory.py).
    # 0 leaves glibc's default.
    malloc_mmap_threshold: int = Field(1024 * 1024, ge=0, le=32 * 1024 * 1024)
    # Arenas for threads: fewer arenas, less memory held in each thread's leftovers. 0 leaves the default.
    malloc_arena_max: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _body_total_covers_idle(self) -> EdgeLimits:
        if self.body_timeout_s < self.body_idle_timeout_s:
            raise ValueError("body_timeout_s must be at least body_idle_timeout_s")
        return self
