"""A real ``redis-server`` for tests: a fresh process on a free loopback port, without persistence.

In CI (``CI`` set, e.g. ``CI=true``) a missing binary fails the test: the tests that need Redis must run
there, never be skipped silently. On a workstation they are skipped with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from devtools.service_process import free_port
from tests.helpers.waiting import wait_until


@dataclass
class RedisServer:
    url: str
    port: int
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def redis_server_binary() -> str:
    """The path of ``redis-server``; fails the test in CI when it is missing, else skips it."""
    server = shutil.which("redis-server")
    if server is None:
        if in_ci():
            pytest.fail("redis-server is not installed; .ci/run installs it (scripts/install_redis.sh)")
        pytest.skip("redis-server is not installed (bash scripts/install_redis.sh)")
    return server


@contextmanager
def running_redis_server(workdir: Path) -> Iterator[RedisServer]:
    """Start one for the block; its log goes to ``workdir/redis.log``."""
    server = redis_server_binary()
    port = free_port()
    cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with (workdir / "redis.log").open("wb") as log:
        proc = subprocess.Popen([*cmd, "--dir", str(workdir)], stdout=log, stderr=subprocess.STDOUT)
        running = RedisServer(f"redis://127.0.0.1:{port}/0", port, proc)
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"redis-server exited ({proc.returncode}); see {workdir / 'redis.log'}")
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            wait_until(answers, what="redis-server answers PING")
            yield running
        finally:
            client.close()
            running.stop()
