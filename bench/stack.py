"""Start an upstream (a tiny image worker, or the echo worker) and the interface as real processes, as the
integration tests do."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

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
        **extra,
    }


@contextlib.contextmanager
def worker_and_interface(
    model_dir: Path, worker_extra: dict[str, str] | None = None, interface_extra: dict[str, str] | None = None
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    with ServiceProcess("services.image_worker.main", env=worker_env(model_dir, **(worker_extra or {}))) as w:
        env = interface_env(w.url, **(interface_extra or {}))
        with ServiceProcess("services.interface.main", env=env) as api:
            yield w, api


@contextlib.contextmanager
def echo_and_interface(
    concurrency: int = 8, interface_extra: dict[str, str] | None = None
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """The echo worker (``bench/echo_worker.py``: a latency-measurement upstream, no model) behind the
    interface, for overhead measurements at request rates no model on a CPU could serve."""
    echo_env = {"ECHO_CONCURRENCY": str(concurrency)}
    with ServiceProcess("bench.echo_worker", env=echo_env) as w:
        env = interface_env(w.url, **(interface_extra or {}))
        with ServiceProcess("services.interface.main", env=env) as api:
            yield w, api
