from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.llm_service.settings import LlmSettings


def test_defaults_are_production(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("LLM_BACKEND", "LLM_MODEL_ID", "CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    s = LlmSettings()
    assert (s.backend, s.model_id) == ("vllm", "Qwen/Qwen2.5-7B-Instruct")
    assert s.template_fallback is False and s.shorten_word_threshold == 25
    assert (s.caption_min_words, s.caption_max_words) == (10, 15)


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_BACKEND", "transformers")
    monkeypatch.setenv("LLM_VLLM_BASE_URL", " http://10.0.0.5:8001/ ")
    monkeypatch.setenv("LLM_VLLM_API_KEY", "  ")
    monkeypatch.setenv("LLM_TEMPLATE_FALLBACK", "true")
    s = LlmSettings()
    assert s.backend == "transformers" and s.vllm_base_url == "http://10.0.0.5:8001"
    assert s.vllm_api_key is None and s.template_fallback is True


def test_rejects_bad_values() -> None:
    with pytest.raises(ValidationError):
        LlmSettings(backend="tgi")
    with pytest.raises(ValidationError):
        LlmSettings(caption_min_words=12, caption_max_words=10)
    with pytest.raises(ValidationError):
        LlmSettings(internal_token="changeme")
