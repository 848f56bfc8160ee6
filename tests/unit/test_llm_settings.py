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


def test_expansion_length_defaults_per_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONFIG_FILE", raising=False)
    s = LlmSettings()
    # 1:1 waits on its expansion, scenes do not (DEPLOYMENT.md, "Prompt length"); the spec asks 100-200.
    assert [s.expand_words(k) for k in ("1to1", "shorts", "scenes")] == [100, 150, 200]
    assert (s.expand_tokens_per_word, s.expand_length_margin, s.expand_max_new_tokens) == (1.25, 0.3, None)
    assert s.image_prompt_token_limit == 512
    assert [s.expand_max_tokens(k) for k in ("1to1", "shorts", "scenes")] == [163, 244, 325]


def test_expansion_length_from_env_and_the_optional_hard_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_EXPAND_WORDS_1TO1", "60")
    monkeypatch.setenv("LLM_EXPAND_WORDS_SCENES", "240")
    monkeypatch.setenv("LLM_EXPAND_TOKENS_PER_WORD", "1.5")
    s = LlmSettings()
    assert s.expand_max_tokens("1to1") == 117 and s.expand_max_tokens("scenes") == 468
    monkeypatch.setenv("LLM_EXPAND_MAX_NEW_TOKENS", "48")
    assert LlmSettings().expand_max_tokens("scenes") == 48  # tiny-model tests cap it below the derived one


def test_rejects_bad_expansion_lengths() -> None:
    for bad in ({"expand_words_1to1": 0}, {"expand_words_scenes": 5000}, {"expand_tokens_per_word": 0},
                {"expand_length_margin": -0.1}, {"image_prompt_token_limit": 16}):  # fmt: skip
        with pytest.raises(ValidationError):
            LlmSettings(**bad)
