"""Start an upstream (a tiny image worker, or the echo worker) and the interface as real processes, as the
integration tests do. ``server`` picks how the interface is started (``bench/server_variants.py``: the default
launcher, plain uvicorn, Granian); the upstream always runs on the default launcher."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.server_variants import service_process
from devtools.service_process import ServiceProcess

TOKEN = "bench-internal-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def worker_env(model_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "IMAGE_MODEL_ID": str(model_dir),
        "IMAGE_DEVICES": "cpu",
        "IMAGE_DEFAULT_WIDTH": "64",
        "IMAGE_DEFAULT_HEIGHT": "64",
        "IMAGE_MAX_SIDE": "512",
        "IMAGE_INTERNAL_TOKEN": TOKEN,
        "IMAGE_LOG_LEVEL": "warning",
        **extra,
    }


def interface_env(worker_url: str, **extra: str) -> dict[str, str]:
    return {
        "INTERFACE_INTERNAL_TOKEN": TOKEN,
        "INTERFACE_TEXT2IMG_WORKER_URLS": worker_url,
        "INTERFACE_LOG_LEVEL": "warning",
        # No LLM here to ask: these benches measure the interface in front of image workers only.
        "INTERFACE_GUARD": "off",
        **extra,
    }


@contextlib.contextmanager
def _interfaces(
    upstream_url: str, servers: Sequence[str], interface_extra: dict[str, str] | None
) -> Iterator[dict[str, ServiceProcess]]:
    """One interface per server name, each on its own port, all in front of the same upstream."""
    env = interface_env(upstream_url, **(interface_extra or {}))
    with contextlib.ExitStack() as stack:
        yield {
            s: stack.enter_context(service_process(s, "services.interface.main", env=env)) for s in servers
        }


@contextlib.contextmanager
def worker_and_interfaces(
    model_dir: Path,
    servers: Sequence[str],
    worker_extra: dict[str, str] | None = None,
    interface_extra: dict[str, str] | None = None,
) -> Iterator[tuple[ServiceProcess, dict[str, ServiceProcess]]]:
    worker = ServiceProcess("services.image_worker.main", env=worker_env(model_dir, **(worker_extra or {})))
    with worker as w, _interfaces(w.url, servers, interface_extra) as apis:
        yield w, apis


@contextlib.contextmanager
def worker_and_interface(
    model_dir: Path,
    worker_extra: dict[str, str] | None = None,
    interface_extra: dict[str, str] | None = None,
    server: str = "guarded",
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    with worker_and_interfaces(model_dir, [server], worker_extra, interface_extra) as (w, apis):
        yield w, apis[server]


@contextlib.contextmanager
def echo_and_interfaces(
    servers: Sequence[str], concurrency: int = 8, interface_extra: dict[str, str] | None = None
) -> Iterator[tuple[ServiceProcess, dict[str, ServiceProcess]]]:
    """The echo worker (``bench/echo_worker.py``: a latency-measurement upstream, no model) behind one
    interface per server name, for overhead measurements at request rates no model on a CPU could serve."""
    echo_env = {"ECHO_CONCURRENCY": str(concurrency)}
    with (
        ServiceProcess("bench.echo_worker", env=echo_env) as w,
        _interfaces(w.url, servers, interface_extra) as apis,
    ):
        yield w, apis


@contextlib.contextmanager
def echo_and_interface(
    concurrency: int = 8, interface_extra: dict[str, str] | None = None, server: str = "guarded"
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """The echo worker behind one interface (``echo_and_interfaces``)."""
    with echo_and_interfaces([server], concurrency, interface_extra) as (w, apis):
        yield w, apis[server]
