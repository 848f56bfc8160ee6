"""The deploy scripts, run for real against a local service in a fake pod directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.service_process import REPO_ROOT, free_port

pytestmark = pytest.mark.integration
SCRIPTS = sorted(
    [*REPO_ROOT.glob("deploy_*.sh"), *REPO_ROOT.glob("scripts/*.sh"), *REPO_ROOT.glob("scripts/lib/*.sh")]
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill 0; it is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_every_deploy_script_exists_and_is_shellcheck_clean() -> None:
    names = {p.name for p in REPO_ROOT.glob("deploy_*.sh")}
    assert names == {
        f"deploy_{s}.sh"
        for s in ("interface", "llm", "profile", "selfie_feature", "chat1to1", "shorts", "scenes")
    }
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run(
        [str(shellcheck), "-x", *map(str, SCRIPTS)], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def pod(tmp_path: Path, tiny_models: dict[str, Path]) -> Iterator[dict[str, str]]:
    """A fake pod: an env file, a run dir and a log dir, and the project venv as the pod's venv."""
    env_file = tmp_path / "img_pod.env"
    env_file.write_text(
        f"IMAGE_MODEL_ID={tiny_models['zimage']}\nIMAGE_DEFAULT_WIDTH=64\nIMAGE_DEFAULT_HEIGHT=64\n"
        "IMAGE_DEVICES=cpu\nIMAGE_INTERNAL_TOKEN=pod-token-123\nEDGE_MAX_HEADER_BYTES=4096\n"
    )
    env = {
        **os.environ,
        "IMG_POD_ENV_FILE": str(env_file),
        "IMG_POD_SKIP_INSTALL": "1",
        "IMG_POD_VENV": sys.prefix,
        "PORT": str(free_port()),
        "HOST": "127.0.0.1",
        "RUN_DIR": str(tmp_path / "run"),
        "LOG_DIR": str(tmp_path / "logs"),
        "HEALTH_TIMEOUT_S": "120",
    }
    yield env
    pid_file = Path(env["RUN_DIR"]) / "img_pod-chat1to1.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO_ROOT / "deploy_chat1to1.sh")], env=env, capture_output=True, text=True, timeout=300
    )


def test_deploy_starts_one_healthy_instance_and_is_idempotent(pod: dict[str, str]) -> None:
    pid_file = Path(pod["RUN_DIR"]) / "img_pod-chat1to1.pid"
    log_file = Path(pod["LOG_DIR"]) / f"chat1to1-{pod['PORT']}.log"
    url = f"http://127.0.0.1:{pod['PORT']}"

    first = deploy(pod)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "is healthy" in first.stdout
    assert f"http://127.0.0.1:{pod['PORT']}" in first.stdout
    first_pid = int(pid_file.read_text())
    assert alive(first_pid)
    assert log_file.exists() and log_file.stat().st_size > 0
    health = httpx.get(url + "/healthz").json()
    assert health["status"] == "ok" and health["role"] == "chat1to1"
    # The env file's token is in force: the worker refuses calls without it.
    assert httpx.post(url + "/v1/generate", json={"prompt": "x"}).status_code == 401
    # The launcher's connection bounds and allocator setting are in force, from the env file too.
    assert httpx.get(url + "/healthz", headers={"X-Big": "a" * 8192}).status_code == 431
    environ = Path(f"/proc/{first_pid}/environ").read_bytes().split(b"\0")
    assert b"MALLOC_ARENA_MAX=2" in environ and b"MALLOC_MMAP_THRESHOLD_=1048576" in environ

    second = deploy(pod)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "stopping previous chat1to1" in second.stdout
    second_pid = int(pid_file.read_text())
    assert second_pid != first_pid
    deadline = time.monotonic() + 10
    while alive(first_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(first_pid)
    assert alive(second_pid)
    assert httpx.get(url + "/healthz").status_code == 200


def test_stale_pid_file_never_kills_an_unrelated_process(pod: dict[str, str]) -> None:
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        run_dir = Path(pod["RUN_DIR"])
        run_dir.mkdir(parents=True)
        (run_dir / "img_pod-chat1to1.pid").write_text(str(bystander.pid))
        result = deploy(pod)
        assert result.returncode == 0, result.stdout + result.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_deploy_fails_visibly_when_the_model_is_missing(pod: dict[str, str], tmp_path: Path) -> None:
    env_file = Path(pod["IMG_POD_ENV_FILE"])
    env_file.write_text(env_file.read_text() + f"IMAGE_MODEL_ID={tmp_path / 'nothing-here'}\n")
    result = deploy({**pod, "HEALTH_TIMEOUT_S": "20"})
    assert result.returncode != 0
    assert "does not exist" in result.stdout + result.stderr
