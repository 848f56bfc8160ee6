"""Start a real service as a uvicorn subprocess on a free loopback port and wait until it is healthy.

Modelled on vLLM's ``RemoteOpenAIServer``: the caller (a test or a benchmark) talks to the service over HTTP
exactly as a client would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 120.0
SHUTDOWN_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """``with ServiceProcess("services.profile_worker.main", env={...}) as svc: httpx.get(svc.url + ...)``."""

    def __init__(
        self,
        module: str,
        *,
        env: dict[str, str] | None = None,
        port: int | None = None,
        wait_healthy: bool = True,
        expect_status: int = 200,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        log_dir: Path | None = None,
    ) -> None:
        self.module = module
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.wait_healthy = wait_healthy
        self.expect_status = expect_status
        self.startup_timeout_s = startup_timeout_s
        self.log_path = (log_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / (
            f"{module.replace('.', '_')}-{self.port}.log"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        # A test's server stops within seconds, not the 30 s production allows requests still running.
        env = {
            "EDGE_GRACEFUL_SHUTDOWN_S": "5",
            **os.environ,
            # Each interface its own jobs file (one interface per file), unless the caller names one (a test
            # that restarts an interface on the same file).
            "INTERFACE_JOBS_SQLITE_PATH": str(self._own_jobs_file()),
            "INTERFACE_PERSONAS_SQLITE_PATH": str(self._own_personas_file()),
            **self.extra_env,
            "PYTHONUNBUFFERED": "1",
        }
        cmd = self.command()
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        if self.wait_healthy:
            self.wait_for_health(self.expect_status)
        return self

    def _own_jobs_file(self) -> Path:
        """A fresh jobs file per process: an earlier run's file on the same port must not be resumed."""
        path = self.log_path.with_suffix(".jobs.sqlite3")
        if "INTERFACE_JOBS_SQLITE_PATH" not in self.extra_env:
            for suffix in ("", "-wal", "-shm", ".lock"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        return path

    def _own_personas_file(self) -> Path:
        """A fresh personas file per process, as for jobs: an earlier run's personas must not be listed."""
        path = self.log_path.with_suffix(".personas.sqlite3")
        if "INTERFACE_PERSONAS_SQLITE_PATH" not in self.extra_env:
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        return path

    def command(self) -> list[str]:
        """The same launcher as every script (shared/serve.py): production's edge bounds, loop and parser."""
        return [
            sys.executable,
            "-m",
            "shared.serve",
            self.module,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]

    def wait_for_health(self, expect_status: int = 200) -> httpx.Response:
        deadline = time.monotonic() + self.startup_timeout_s
        last: str = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.module} exited with {self.proc.returncode}:\n{self.logs()[-4000:]}"
                )
            try:
                resp = httpx.get(f"{self.url}/healthz", timeout=2.0)
                if resp.status_code == expect_status:
                    return resp
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.module} not healthy after {self.startup_timeout_s}s ({last}):\n{self.logs()[-4000:]}"
        )

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(SHUTDOWN_TIMEOUT_S)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # A test may have frozen it (SIGSTOP); a stopped process would never see the SIGINT.
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(SHUTDOWN_TIMEOUT_S)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def all_running(procs: Iterable[ServiceProcess]) -> Iterator[None]:
    """Start every process first, then wait for each, so imports and model loads overlap instead of adding
    up; every one is stopped on exit, also when one of them never comes up."""
    procs = list(procs)
    try:
        for proc in procs:
            proc.wait_healthy = False
            proc.start()
        for proc in procs:
            proc.wait_for_health(proc.expect_status)
        yield
    finally:
        for proc in procs:
            proc.stop()
