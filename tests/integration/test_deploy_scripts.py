"""The deploy scripts, run for real against a local service in a fake pod directory."""

from __future__ import annotations

import json
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


def test_deploy_stops_before_downloading_when_the_role_cannot_fit(pod: dict[str, str]) -> None:
    """The real Z-Image Turbo (sized from its shipped configs) on an 8 GB GPU: the preflight says no, and the
    deploy stops with that message before the weights are fetched or anything is started."""
    env_file = Path(pod["IMG_POD_ENV_FILE"])
    env_file.write_text(env_file.read_text() + "IMAGE_MODEL_ID=Tongyi-MAI/Z-Image-Turbo\n")
    result = deploy({**pod, "IMG_POD_GPU_MEM_GB": "8"})
    assert result.returncode == 1
    assert "does not fit" in result.stdout
    assert "weights 19.1 GB" in result.stdout
    assert "chat1to1 does not fit this GPU as configured" in result.stderr
    assert "nothing was downloaded" in result.stderr
    assert "fetching" not in result.stdout
    assert not (Path(pod["RUN_DIR"]) / "img_pod-chat1to1.pid").exists()


# --- scripts/start_vllm.sh: flags by the GPU, with a fake nvidia-smi and a fake vLLM ------------------------

FAKE_VLLM = """#!{python}
# Records its argv, then answers 200 on every path like a vLLM server that is up.
import http.server, json, os, sys
with open(os.environ["FAKE_VLLM_ARGV"], "w") as f:
    json.dump(sys.argv[1:], f)
port = int(sys.argv[sys.argv.index("--port") + 1])
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"{{}}")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Ok).serve_forever()
"""


def start_fake_vllm(tmp_path: Path, gpu_mib: str, **env: str) -> list[str]:
    """Run start_vllm.sh with ``nvidia-smi`` reporting ``gpu_mib``; the argv vLLM would have been given."""
    bin_dir, venv_bin = tmp_path / "bin", tmp_path / "venv" / "bin"
    bin_dir.mkdir()
    venv_bin.mkdir(parents=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '{gpu_mib}\\n{gpu_mib}\\n'\n")
    (venv_bin / "python").write_text(FAKE_VLLM.format(python=sys.executable))
    (venv_bin / "vllm").write_text("#!/bin/sh\n")
    for tool in (smi, venv_bin / "python", venv_bin / "vllm"):
        tool.chmod(0o755)
    argv_file = tmp_path / "argv.json"
    run_env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "VLLM_VENV": str(tmp_path / "venv"),
        "VLLM_PORT": str(free_port()),
        "RUN_DIR": str(tmp_path),
        "LOG_DIR": str(tmp_path),
        "FAKE_VLLM_ARGV": str(argv_file),
        "VLLM_HEALTH_TIMEOUT_S": "30",
        **env,
    }
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts/start_vllm.sh")],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    pid_file = tmp_path / "img_pod-vllm.pid"
    if pid_file.exists() and alive(pid := int(pid_file.read_text())):
        os.kill(pid, signal.SIGKILL)
    assert result.returncode == 0, result.stdout + result.stderr
    return list(json.loads(argv_file.read_text()))


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_start_vllm_picks_flags_from_the_gpu_and_caches_prefixes(tmp_path: Path) -> None:
    argv = start_fake_vllm(tmp_path, "81559")  # an 80 GB card, the guard on it (LLM_GUARD_BACKEND default)
    assert argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert flag(argv, "--max-model-len") == "8192" and flag(argv, "--gpu-memory-utilization") == "0.80"
    assert flag(argv, "--max-num-seqs") == "64" and "--enable-prefix-caching" in argv


def test_start_vllm_env_overrides_win(tmp_path: Path) -> None:
    env = {"LLM_GUARD_BACKEND": "off", "VLLM_MAX_NUM_SEQS": "4", "VLLM_EXTRA_ARGS": "--max-model-len 1024"}
    argv = start_fake_vllm(tmp_path, "23034", **env)  # an L4, no guard
    assert flag(argv, "--gpu-memory-utilization") == "0.90" and flag(argv, "--max-num-seqs") == "4"
    # The table's 4096 is passed, and VLLM_EXTRA_ARGS comes after it: vLLM's parser keeps the last value.
    assert flag(argv, "--max-model-len") == "4096" and argv[-2:] == ["--max-model-len", "1024"]
    assert "--enable-prefix-caching" in argv


def test_start_vllm_pins_the_revision_it_is_given(tmp_path: Path) -> None:
    for case in ("plain", "pinned", "guard"):
        (tmp_path / case).mkdir()
    argv = start_fake_vllm(tmp_path / "plain", "81559")
    assert "--revision" not in argv  # unpinned: the main branch
    argv = start_fake_vllm(tmp_path / "pinned", "81559", LLM_MODEL_REVISION="a1b2c3d")
    assert flag(argv, "--revision") == "a1b2c3d" and flag(argv, "--model") == "Qwen/Qwen2.5-7B-Instruct"
    # The guard's server is started with VLLM_REVISION set, empty when its own pin is: never the chat model's.
    argv = start_fake_vllm(tmp_path / "guard", "81559", LLM_MODEL_REVISION="a1b2c3d", VLLM_REVISION="")
    assert "--revision" not in argv
