"""Start one service: ``python -m shared.serve services.interface.main --host 0.0.0.0 --port 8000``.

Every launch goes through here (scripts/run_local.sh, run_service.sh, deploy_service.sh, the tests' and
the benches' ``ServiceProcess``), so the connection bounds (``shared/edge_limits.py``, ``EDGE_*``), the event
loop, the HTTP parser and the allocator settings are the same everywhere and come from one place.

The allocator is set by environment variables that glibc reads when the process starts, so when they are
missing this module sets them and re-executes itself (same pid: the scripts' pid files stay right).
"""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from shared.edge_limits import EdgeLimits
from shared.edge_protocol import GuardedHttpToolsProtocol

# Marks the re-executed process: a variable a user set on purpose is never overridden; the exec runs once.
REEXEC_MARK = "IMGPOD_SERVE_ENV_SET"


def allocator_env(limits: EdgeLimits) -> dict[str, str]:
    """What the allocator needs that the environment does not already say."""
    wanted: dict[str, str] = {}
    if limits.malloc_arena_max:
        wanted["MALLOC_ARENA_MAX"] = str(limits.malloc_arena_max)
    if limits.malloc_mmap_threshold:
        # The trailing underscore is glibc's spelling for its tunables read from the environment.
        wanted["MALLOC_MMAP_THRESHOLD_"] = str(limits.malloc_mmap_threshold)
    return {k: v for k, v in wanted.items() if k not in os.environ}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shared.serve", description=__doc__.splitlines()[0])
    parser.add_argument("module", help="the service's module, with a create_app(settings=None) factory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    limits = EdgeLimits()
    missing = allocator_env(limits)
    if missing and REEXEC_MARK not in os.environ:
        os.environ.update(missing)
        os.environ[REEXEC_MARK] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "shared.serve", *sys.argv[1:]])
    uvicorn.run(
        f"{args.module}:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        reload=args.reload,
        # Named, not "auto": an environment without uvloop fails here, loudly, instead of running slower.
        loop="uvloop",
        http=GuardedHttpToolsProtocol,
        timeout_keep_alive=limits.keep_alive_s,
        timeout_graceful_shutdown=limits.graceful_shutdown_s,
        # Each app logs its own access line with the request id (shared/service.py); uvicorn's would be a 2nd.
        access_log=False,
    )


if __name__ == "__main__":
    main()
