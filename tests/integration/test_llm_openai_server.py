"""The LLM service with ``LLM_BACKEND=openai`` against a server nobody here wrote: llama.cpp's
OpenAI-compatible server (llama-cpp-python[server], CPU), serving the tiny Qwen2 converted to GGUF.

Expand, shortening, caption and reply go through the service's production client to llama.cpp and back,
and a prompt over llama.cpp's context window comes back as llama.cpp's own 400, which the client maps to
the client's 422. scripts/install_llama_cpp.sh builds the server once per machine (.ci/run calls it); where
it was not run, these tests are skipped with that command as the reason (in CI, where CI is set, they fail).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.service_process import REPO_ROOT, ServiceProcess, all_running, free_port
from services.llm_service.cleaning import word_count
from services.llm_service.prompts import COVERAGE_CLAUSE
from tests.integration.test_llm_service import _env

pytestmark = pytest.mark.integration

LLAMA_CPP_VERSION = "0.3.36"
ALIAS = "qwen2.5-tiny-gguf"  # the id llama.cpp lists on /v1/models, and the service's LLM_MODEL_ID
TOKEN = "llm-openai-test-token-5d1a"
TIMEOUT = httpx.Timeout(120.0, connect=5.0)
PERSONA = {"hair_color": "auburn", "eye_color": "green", "glasses": True}
SIXTY_WORDS = " ".join(["a long walk on the quiet beach at sunset with the dog"] * 5)  # 12 x 5


def llama_venv_python() -> Path:
    cache = Path(os.environ.get("IMG_POD_CACHE", Path.home() / ".cache/img_pod"))
    venv = Path(os.environ.get("LLAMA_CPP_VENV", cache / f"venv-llamacpp-{LLAMA_CPP_VERSION}"))
    return venv / "bin/python"


class LlamaServer:
    """``python -m llama_cpp.server`` on a loopback port, its log in a file."""

    def __init__(self, python: Path, gguf: Path, log: Path, n_ctx: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.cmd = [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", ALIAS,
                    "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx),
                    "--n_threads", "1", "--verbose", "false"]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            # Its uvicorn.run reads HOST and PORT from the environment before its own flags.
            env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port)}
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama.cpp server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if ALIAS in httpx.get(self.url + "/v1/models", timeout=2).text:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"llama.cpp server not up in 60 s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def completions_served(self) -> int:
        return self.log.read_text(errors="replace").count("POST /v1/chat/completions")


@pytest.fixture(scope="module")
def gguf(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not llama_venv_python().exists():
        # CI installs it (.ci/run): there, a missing server is a failure, never a silent skip.
        if os.environ.get("CI"):
            pytest.fail("llama.cpp's server is missing: .ci/run runs scripts/install_llama_cpp.sh first")
        pytest.skip("llama.cpp's server is not installed here: bash scripts/install_llama_cpp.sh")
    out = tmp_path_factory.mktemp("gguf") / "qwen2.5-tiny.gguf"
    env = {**os.environ, "IMG_POD_PYTHON": sys.executable, "LLAMA_CPP_PRE_TOKENIZER": "gpt-2"}
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts/install_llama_cpp.sh"), "convert", str(tiny_models["qwen_lm"]),
         str(out)], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and out.stat().st_size > 0, result.stderr[-3000:]
    return out


def _service_env(models: dict[str, Path], server_url: str) -> dict[str, str]:
    """The chat-contract env of the in-process tests, pointed at a llama.cpp server instead."""
    return _env(
        models,
        LLM_BACKEND="openai",
        LLM_VLLM_BASE_URL=server_url,
        LLM_MODEL_ID=ALIAS,
        LLM_TOKENIZER_ID=str(models["qwen_lm"]),  # llama.cpp serves a GGUF; the budget counts with HF's
        LLM_INTERNAL_TOKEN=TOKEN,
        LLM_REQUEST_TIMEOUT_S="60",
    )


@pytest.fixture(scope="module")
def stack(
    gguf: Path, tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, object]]:
    """llama.cpp's server with the tiny model's whole window, one with a 256-token window, and an LLM service
    in front of each."""
    logs = tmp_path_factory.mktemp("llama-logs")
    python = llama_venv_python()
    wide = LlamaServer(python, gguf, logs / "wide.log", n_ctx=2048)
    narrow = LlamaServer(python, gguf, logs / "narrow.log", n_ctx=256)
    servers = [wide, narrow]
    try:
        for server in servers:
            server.start()
        llm = ServiceProcess("services.llm_service.main", env=_service_env(tiny_models, wide.url))
        small = ServiceProcess("services.llm_service.main", env=_service_env(tiny_models, narrow.url))
        with all_running([llm, small]):
            yield {"server": wide, "llm": llm, "small": small}
    finally:
        for server in servers:
            server.stop()


def post(svc: ServiceProcess, path: str, body: object) -> httpx.Response:
    return httpx.post(
        svc.url + path, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT
    )


def test_ready_with_the_openai_backend(stack: dict[str, object]) -> None:
    llm = stack["llm"]
    assert isinstance(llm, ServiceProcess)
    health = httpx.get(llm.url + "/healthz", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["backend"] == "openai" and health["model"] == ALIAS


def test_expand_through_llama_cpp(stack: dict[str, object]) -> None:
    llm, server = stack["llm"], stack["server"]
    assert isinstance(llm, ServiceProcess) and isinstance(server, LlamaServer)
    before = server.completions_served()
    # A message the interface found suggestive: the expansion ends with the coverage clause.
    request = {"message": "a walk on the beach", "persona": PERSONA, "coverage": "suggestive"}
    resp = post(llm, "/v1/chat/shorts/expand", request)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["source"] == "model" and body["model"] == ALIAS
    assert all(trait in body["prompt"] for trait in ("auburn", "green eyes", "glasses"))
    assert body["prompt"].endswith(COVERAGE_CLAUSE) and isinstance(body["prompt_tokens"], int)
    assert server.completions_served() == before + 1


def test_long_message_is_shortened_through_llama_cpp(stack: dict[str, object]) -> None:
    llm, server = stack["llm"], stack["server"]
    assert isinstance(llm, ServiceProcess) and isinstance(server, LlamaServer)
    assert word_count(SIXTY_WORDS) == 60
    before = server.completions_served()
    resp = post(llm, "/v1/chat/shorts/expand", {"message": SIXTY_WORDS, "persona": PERSONA})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["shortened_message"] and word_count(body["shortened_message"]) <= 25
    assert body["shortened_by"] in ("model", "truncation") and body["timings_ms"]["shorten"] > 0
    # One call to shorten, one to expand: both answered by llama.cpp.
    assert server.completions_served() == before + 2


def test_caption_through_llama_cpp(stack: dict[str, object]) -> None:
    llm, server = stack["llm"], stack["server"]
    assert isinstance(llm, ServiceProcess) and isinstance(server, LlamaServer)
    before = server.completions_served()
    resp = post(llm, "/v1/chat/1to1/caption", {"prompt": "a woman walking on a beach", "message": "show me"})
    assert server.completions_served() > before
    if resp.status_code == 502:  # random weights may never reach 10 words: every retry was too short
        assert resp.json()["code"] == "unusable_model_output"
        return
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert 10 <= body["word_count"] <= 15 and body["source"] == "model" and body["model"] == ALIAS


def test_reply_through_llama_cpp(stack: dict[str, object]) -> None:
    llm, server = stack["llm"], stack["server"]
    assert isinstance(llm, ServiceProcess) and isinstance(server, LlamaServer)
    history = [{"role": "user", "content": "hi!"}, {"role": "assistant", "content": "hello there"}]
    before = server.completions_served()
    resp = post(llm, "/v1/chat/1to1/reply", {"message": "how was your day?", "persona": PERSONA,
                                             "history": history})  # fmt: skip
    assert server.completions_served() == before + 1
    if resp.status_code == 502:
        assert resp.json()["code"] == "unusable_model_output"
        return
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["reply"] and body["source"] == "model" and "<|im_end|>" not in body["reply"]


def test_llama_cpp_context_overflow_is_the_clients_422(stack: dict[str, object]) -> None:
    """The system prompt, persona and history (within the service's own 1024-token budget) do not fit a
    256-token window: llama.cpp answers its own 400 ``context_length_exceeded``; the client sees a 422 naming
    its message, never llama.cpp's words."""
    small = stack["small"]
    assert isinstance(small, ServiceProcess)
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "tell me more " * 20} for i in range(6)
    ]
    body = {"message": "how was your day?", "persona": PERSONA, "history": history}
    resp = post(small, "/v1/chat/1to1/reply", body)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["code"] == "validation_error" and "too long" in body["detail"]
    assert "maximum context length" not in resp.text
    assert "maximum context length" in small.logs()
