"""The whole local stack for the soak harness: seven kinds of service, nine processes, all on loopback.

The same services and settings as ``tests/integration/test_e2e_flows.py`` (tiny LLM with the labelled
template fallback, the selfie worker on nudenet's face detector and the tiny Qwen2-VL, four role image
workers on the tiny Z-Image), plus two general image workers of their own behind the interface's text2img
pool, so one of them can be SIGKILLed part-way through a phase without taking any other flow down, and
started again (same port) before the next phase.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from devtools import stack_env
from devtools.service_process import ServiceProcess, all_running

TOKEN = "soak-internal-token"
API_KEY = "soak-client-key"
WORKER_AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMAGE_ROLES = ("profile", "chat1to1", "shorts", "scenes")
TEXT2IMG = ("t2i_a", "t2i_b")
# The text2img worker that is killed part-way through a phase; its twin keeps the pool serving.
VICTIM = "t2i_b"


@dataclass(frozen=True, slots=True)
class StackConfig:
    """Knobs of the soak stack; everything else is the services' defaults."""

    sla_ms: float = 10_000.0
    queue_capacity: int = 32
    per_worker_concurrency: int = 8
    llm_concurrency: int = 4
    selfie_concurrency: int = 2
    image_steps: int = 2
    health_interval_s: float = 1.0
    eject_cooldown_s: float = 5.0
    # Torch threads per model process: seven model processes share the machine's cores; more threads each
    # would only make them fight over the same cores.
    torch_threads: int = 1
    # Scheduling niceness of the seven model processes. In production the interface has a CPU pod of its
    # own and the models run on GPUs; here they all share a few cores, and model compute at equal priority
    # would make the interface's (and the load generator's) timings measure the machine's scheduler. 0 keeps
    # everyone equal.
    worker_nice: int = 10
    # The victim runs with its test gate (shared/test_hooks.py), so the kill can be timed to cut off
    # requests it holds rather than land while it happens to be idle.
    victim_gate: bool = True
    log_level: str = "warning"
    extra_interface_env: dict[str, str] = field(default_factory=dict)


class NicedProcess(ServiceProcess):
    """A ``ServiceProcess`` whose main thread is reniced right after it is spawned.

    Linux applies a nice value per thread and new threads inherit their creator's: set at once, while the
    interpreter is still starting, it covers the threads torch and the executors make later.
    """

    def __init__(self, module: str, *, nice: int = 0, **kwargs: Any) -> None:
        super().__init__(module, **kwargs)
        self.nice = nice

    def start(self) -> NicedProcess:
        wait, self.wait_healthy = self.wait_healthy, False
        super().start()
        self.wait_healthy = wait
        if self.nice and self.proc is not None:
            with contextlib.suppress(psutil.Error):
                psutil.Process(self.proc.pid).nice(self.nice)
        if wait:
            self.wait_for_health(self.expect_status)
        return self


def model_paths(root: Path | None = None) -> dict[str, Path]:
    """Every tiny checkpoint, built (seconds) or reused from ``IMG_POD_TINY_MODELS``."""
    from shared.tiny_models.build import build_all

    default = Path(__file__).resolve().parents[1] / ".local" / "tiny-models"
    return build_all(root or Path(os.environ.get("IMG_POD_TINY_MODELS", default)))


def _threads(n: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n), "TOKENIZERS_PARALLELISM": "false"}


def llm_env(models: dict[str, Path], cfg: StackConfig) -> dict[str, str]:
    return stack_env.llm_env(models, TOKEN, LLM_LOG_LEVEL=cfg.log_level, **_threads(cfg.torch_threads))


def selfie_env(models: dict[str, Path], cfg: StackConfig, scratch: Path) -> dict[str, str]:
    return stack_env.selfie_env(
        models, TOKEN, scratch, SELFIE_LOG_LEVEL=cfg.log_level, **_threads(cfg.torch_threads)
    )


def image_env(models: dict[str, Path], cfg: StackConfig) -> dict[str, str]:
    return {
        "IMAGE_MODEL_ID": str(models["zimage"]),
        "IMAGE_DEFAULT_WIDTH": "64",
        "IMAGE_DEFAULT_HEIGHT": "64",
        "IMAGE_DEFAULT_STEPS": str(cfg.image_steps),
        "IMAGE_MAX_SIDE": "512",
        "IMAGE_DEVICES": "cpu",
        "IMAGE_INTERNAL_TOKEN": TOKEN,
        "IMAGE_LOG_LEVEL": cfg.log_level,
        **_threads(cfg.torch_threads),
    }


def interface_env(procs: dict[str, ServiceProcess], cfg: StackConfig) -> dict[str, str]:
    return stack_env.interface_env(
        {name: proc.url for name, proc in procs.items()},
        TOKEN,
        INTERFACE_API_KEYS=API_KEY,
        INTERFACE_TEXT2IMG_WORKER_URLS=",".join(procs[name].url for name in TEXT2IMG),
        INTERFACE_QUEUE_SLA_MS=str(cfg.sla_ms),
        INTERFACE_QUEUE_CAPACITY=str(cfg.queue_capacity),
        INTERFACE_PER_WORKER_CONCURRENCY=str(cfg.per_worker_concurrency),
        INTERFACE_LLM_CONCURRENCY=str(cfg.llm_concurrency),
        INTERFACE_SELFIE_CONCURRENCY=str(cfg.selfie_concurrency),
        INTERFACE_HEALTH_INTERVAL_S=str(cfg.health_interval_s),
        INTERFACE_EJECT_COOLDOWN_S=str(cfg.eject_cooldown_s),
        INTERFACE_LOG_LEVEL=cfg.log_level,
        **cfg.extra_interface_env,
    )


class SoakStack:
    """The running processes by name (``interface``, ``llm``, ``selfie``, the four roles, ``t2i_a/b``)."""

    def __init__(self, procs: dict[str, ServiceProcess], cfg: StackConfig, log_dir: Path) -> None:
        self.procs = procs
        self.cfg = cfg
        self.log_dir = log_dir
        # Names of processes started again after a kill: their peaks and RSS restart from zero.
        self.restarted: set[str] = set()
        # Killed and not started again; set before the signal, so no observer probes a dying process.
        self.down: set[str] = set()

    @property
    def interface(self) -> ServiceProcess:
        return self.procs["interface"]

    @property
    def workers(self) -> dict[str, ServiceProcess]:
        return {name: p for name, p in self.procs.items() if name != "interface"}

    def pid(self, name: str) -> int | None:
        if name in self.down:
            return None
        proc = self.procs[name].proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def alive(self, name: str) -> bool:
        return self.pid(name) is not None

    def kill(self, name: str = VICTIM) -> None:
        """SIGKILL, no drain: the worker's in-flight requests die with it."""
        self.down.add(name)
        self.procs[name].kill(signal.SIGKILL)

    def restart(self, name: str = VICTIM, timeout_s: float = 120.0) -> float:
        """Start a killed worker again on its old port; wait until the interface has it back in rotation.

        Returns the seconds it took. The port stays reserved by nobody while the worker is down; on loopback
        with ephemeral ports above it, a clash is unlikely and would show as a failed start.
        """
        started = time.monotonic()
        old = self.procs[name]
        old.stop()
        # The new process logs to the same file name (module and port): keep the killed one's log apart.
        with contextlib.suppress(OSError):
            old.log_path.rename(old.log_path.with_suffix(f".killed-{time.time_ns()}.log"))
        fresh = NicedProcess(
            old.module, env=old.extra_env, port=old.port, log_dir=self.log_dir, nice=self.cfg.worker_nice
        )
        fresh.startup_timeout_s = timeout_s
        fresh.start()
        self.procs[name] = fresh
        self.restarted.add(name)
        self.down.discard(name)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                pools = httpx.get(self.interface.url + "/healthz", timeout=5).json().get("pools", {})
                if pools.get("text2img", {}).get("healthy") == len(TEXT2IMG):
                    break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"{name} did not return to the text2img pool in {timeout_s:g}s")
        return time.monotonic() - started


@contextlib.contextmanager
def soak_stack(
    cfg: StackConfig | None = None, models: dict[str, Path] | None = None, log_dir: Path | None = None
) -> Iterator[SoakStack]:
    """Start all nine processes (workers first, together; then the interface); stop them all on exit.

    Logs (and the selfie worker's scratch files) go to ``log_dir``, kept afterwards; without one, to a
    temporary directory removed on exit.
    """
    cfg = cfg or StackConfig()
    models = models or model_paths()
    with contextlib.ExitStack() as cleanup:
        if log_dir is None:
            scratch = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="imgpod-soak-")))
        else:
            scratch = log_dir
            scratch.mkdir(parents=True, exist_ok=True)
        image = image_env(models, cfg)

        def worker(module: str, env: dict[str, str]) -> ServiceProcess:
            return NicedProcess(module, env=env, log_dir=scratch, nice=cfg.worker_nice)

        procs: dict[str, ServiceProcess] = {
            "llm": worker("services.llm_service.main", llm_env(models, cfg)),
            "selfie": worker("services.selfie_feature_worker.main", selfie_env(models, cfg, scratch)),
        }
        for role in IMAGE_ROLES:
            procs[role] = worker(f"services.{role}_worker.main", image)
        for name in TEXT2IMG:
            hooks = {"IMAGE_TEST_HOOKS": "true"} if name == VICTIM and cfg.victim_gate else {}
            procs[name] = worker("services.image_worker.main", {**image, **hooks})
        stack = SoakStack(procs, cfg, scratch)
        try:
            with (
                all_running(list(procs.values())),
                ServiceProcess(
                    "services.interface.main", env=interface_env(procs, cfg), log_dir=scratch
                ) as api,
            ):
                procs["interface"] = api
                yield stack
        finally:
            # A restarted worker is a new ServiceProcess that all_running does not know about.
            for name in stack.restarted:
                stack.procs[name].stop()
