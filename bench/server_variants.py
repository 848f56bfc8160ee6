"""Ways to start a service's ASGI app, for the side-by-side server comparison of issue 19.

``bench.bench_interface_overhead --server NAME`` starts the interface (never its upstream) with one of them:

- ``guarded``: the default ``ServiceProcess``, ``python -m shared.serve`` (uvicorn, uvloop, httptools with the
  edge bounds of ``shared/edge_protocol.py``): what every script starts now.
- ``uvicorn``: plain uvicorn with uvloop and httptools, the command production ran before the guard, so the
  guard's own cost shows against it.
- ``granian``: Granian (a Rust HTTP server, ASGI interface, one worker process, uvloop), with the edge bounds
  mapped onto the flags it has (``granian_bounds_args``). It is not a project dependency: it is taken from the
  project's environment if importable there, else from a scratch directory put on ``PYTHONPATH`` for that
  process only (``BENCH_GRANIAN_PATH``, default ``/tmp/granian-pkgs``), filled with::

      .venv/bin/pip install --no-deps --target /tmp/granian-pkgs granian

  Granian runs the app in a child process of the one started here (its supervisor), so the bench meters the
  whole process tree (``ProcessTreeCpuMeter``). On SIGTERM Granian's supervisor first closes the listening
  socket, then signals the worker: the app's drain handler (``shared/drain.py``) still runs in the worker and
  waits for requests in flight, but new connections are refused at once instead of answered 503.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from devtools.service_process import ServiceProcess
from shared.edge_limits import EdgeLimits
from shared.serve import allocator_env

SERVERS = ("guarded", "uvicorn", "granian")
GRANIAN_PATH_ENV = "BENCH_GRANIAN_PATH"
GRANIAN_DEFAULT_PATH = "/tmp/granian-pkgs"


class PlainUvicornProcess(ServiceProcess):
    """uvicorn as production started it before the edge guard: no header/body timeouts, no header limit,
    no connection cap; only the keep-alive timeout (uvicorn's default, 5 s)."""

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            f"{self.module}:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "5",
        ]


def granian_path() -> str | None:
    """Where granian comes from: ``""`` when the project's environment has it, else the scratch directory;
    ``None`` when neither has it."""
    if importlib.util.find_spec("granian") is not None:
        return ""
    path = os.environ.get(GRANIAN_PATH_ENV, GRANIAN_DEFAULT_PATH)
    return path if (Path(path) / "granian" / "__init__.py").is_file() else None


def granian_bounds_args(limits: EdgeLimits) -> list[str]:
    """The edge bounds Granian has a flag for. The header read timeout closes the connection without an
    answer, and also bounds an idle keep-alive connection (there is no separate keep-alive timeout). The
    header limit is hyper's read buffer (at least 8 KiB), loosely: with 32 KiB, 33 kB of headers passed and
    50 kB got 431. There is no body read timeout (idle or total) and no connection cap that answers:
    ``--backpressure`` stops accepting (new connections wait in the kernel backlog) while that many requests
    are in progress, so as many stalled uploads stop the service for everyone."""
    return [
        "--http1-header-read-timeout",
        str(min(60_000, int(limits.header_timeout_s * 1000))),
        "--http1-buffer-size",
        str(max(8192, limits.max_header_bytes)),
        "--backpressure",
        str(limits.max_connections),
    ]


class GranianProcess(ServiceProcess):
    """Granian, ASGI interface, HTTP/1 only, one worker, uvloop, access log off, lifespan on (Granian runs
    the ASGI lifespan by default, so the app's pools and models load as under uvicorn)."""

    def __init__(self, module: str, *, env: dict[str, str] | None = None, **kwargs: Any) -> None:
        path = granian_path()
        if path is None:
            raise RuntimeError(
                f"granian is not importable and {os.environ.get(GRANIAN_PATH_ENV, GRANIAN_DEFAULT_PATH)} has"
                " no copy: `.venv/bin/pip install --no-deps --target /tmp/granian-pkgs granian` (or set"
                f" {GRANIAN_PATH_ENV})"
            )
        env = dict(env or {})
        if path:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH", "")) if p)
        # shared.serve's allocator settings; Granian's worker is forked and inherits them.
        env = {**allocator_env(EdgeLimits()), **env}
        super().__init__(module, env=env, **kwargs)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--http",
            "1",
            "--no-ws",
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--no-access-log",
            "--log-level",
            "warning",
            # The same grace as the tests' servers (ServiceProcess sets EDGE_GRACEFUL_SHUTDOWN_S=5).
            "--workers-kill-timeout",
            "5",
            *granian_bounds_args(EdgeLimits()),
            f"{self.module}:create_app",
        ]


VARIANTS: dict[str, type[ServiceProcess]] = {
    "guarded": ServiceProcess,
    "uvicorn": PlainUvicornProcess,
    "granian": GranianProcess,
}


def service_process(server: str, module: str, **kwargs: Any) -> ServiceProcess:
    """``ServiceProcess(module, **kwargs)`` started by the server named ``server`` (one of ``SERVERS``)."""
    try:
        cls = VARIANTS[server]
    except KeyError:
        raise ValueError(f"unknown server {server!r}, expected one of {SERVERS}") from None
    return cls(module, **kwargs)


class ProcessTreeCpuMeter:
    """CPU seconds (user + system) of a process and all its descendants between ``start()`` and ``stop()``,
    like ``bench.common.CpuMeter`` for one pid; for servers that serve from child processes (Granian's
    workers). With no children it counts exactly what ``CpuMeter`` counts."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._psutil = psutil
        self._root = psutil.Process(pid)
        self._begin: dict[int, float] = {}

    def _times(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for proc in (self._root, *self._root.children(recursive=True)):
            try:
                t = proc.cpu_times()
            except self._psutil.NoSuchProcess:
                continue
            out[proc.pid] = t.user + t.system
        return out

    def pids(self) -> list[int]:
        return sorted(self._times())

    def start(self) -> None:
        self._begin = self._times()

    def stop(self) -> float:
        return sum(v - self._begin.get(pid, 0.0) for pid, v in self._times().items())
