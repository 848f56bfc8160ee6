"""Settings of the LLM service (env prefix ``LLM_``, YAML section ``llm``)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from shared.roles import ChatKind
from shared.settings import Revision, ServiceSettings

# "openai": any OpenAI-compatible server at LLM_VLLM_BASE_URL (vLLM on the pod, llama.cpp's server on a CPU
# box). "vllm" is the same client under its first name, kept for existing env files; deploy_service.sh
# starts a vLLM server beside the service for it only.
Backend = Literal["transformers", "openai", "vllm"]
GuardBackend = Literal["transformers", "openai", "vllm", "off"]


class LlmSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLM_", extra="ignore", validate_default=True)
    yaml_section: ClassVar[str] = "llm"

    # Which engine answers: the in-process transformers model, or an OpenAI-compatible server (vllm/openai).
    backend: Backend = "vllm"
    model_id: str = "Qwen/Qwen2.5-7B-Instruct"
    # The hub revision of model_id, for the fetch, vLLM (--revision) and in-process loading alike.
    model_revision: Revision = None
    # The name response bodies and /healthz give the model (like vLLM's --served-model-name). Unset: model_id
    # when it is a hub id, its last path component when it is a local path, so no body shows the pod's disk.
    served_model_name: str | None = None
    # The tokenizer that counts history tokens for the vllm backend, and the expansion's prompt tokens for the
    # image model's budget (both backends); defaults to model_id.
    tokenizer_id: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    warmup: bool = True

    # The OpenAI-compatible server's base URL (without /v1), for LLM_BACKEND=openai or vllm.
    vllm_base_url: str = "http://127.0.0.1:8001"
    # Send answer formats (the guard's verdict lines) as vLLM's ``structured_outputs`` regex, so the server
    # cannot sample an answer the parser would have to refuse. Off for a server that refuses unknown fields.
    structured_outputs: bool = True
    vllm_api_key: SecretStr | None = None
    connect_timeout_s: float = Field(3.0, gt=0)
    # Upper bound of one generation call (model or vLLM); a slower call is a 504 (or the template fallback).
    request_timeout_s: float = Field(60.0, gt=0)
    health_timeout_s: float = Field(2.0, gt=0)

    # Expansion length per chat kind, in words: the system prompt asks for about this many. 1:1 waits on the
    # expansion before any pixel exists, so it is shorter; scenes are not latency-bound. The spec asks for
    # 100-200 words; python -m bench.bench_expansion_length prints what each word costs per GPU
    # (DEPLOYMENT.md, "Prompt length").
    expand_words_1to1: int = Field(100, ge=10, le=400)
    expand_words_shorts: int = Field(150, ge=10, le=400)
    expand_words_scenes: int = Field(200, ge=10, le=400)
    # Tokens per word of expansions on the Qwen BPE (Qwen2.5 and Z-Image's Qwen3 share it): 1.23 measured by
    # the bench above (1.17-1.29 per sample), rounded up. The expansion's max_tokens is
    # words x (1 + margin) x this.
    expand_tokens_per_word: float = Field(1.25, gt=0.5, le=4.0)
    # Room over the target before the generation is stopped: models overshoot a word count. A stopped
    # generation loses its unfinished last phrase, and the response says so (trimmed).
    expand_length_margin: float = Field(0.3, ge=0.0, le=2.0)
    # A hard cap on the expansion's new tokens over the derived one (tiny-model tests); unset in production.
    expand_max_new_tokens: int | None = Field(None, ge=8, le=2048)
    # The image model's text-encoder limit in tokens (IMAGE_MAX_SEQUENCE_LENGTH; Z-Image reads 512). A final
    # prompt, with the encoder's chat wrapper and the safety suffix the interface may append, stays within it:
    # an expansion over it is cut at a phrase boundary and reported (trimmed, prompt_tokens), never silently.
    image_prompt_token_limit: int = Field(512, ge=64, le=4096)

    # Generation length caps per route, in tokens.
    shorten_max_new_tokens: int = Field(64, ge=8, le=1024)
    caption_max_new_tokens: int = Field(40, ge=8, le=512)
    reply_max_new_tokens: int = Field(200, ge=8, le=2048)
    openai_max_tokens: int = Field(1024, ge=8, le=8192)
    # 0 in production. Random tiny test models often stop at once; a floor makes them emit text.
    min_new_tokens: int = Field(0, ge=0, le=256)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0)
    max_input_tokens: int = Field(6144, ge=64)

    history_token_budget: int = Field(1024, ge=0)
    shorten_word_threshold: int = Field(25, ge=3, le=200)
    caption_min_words: int = Field(10, ge=1)
    caption_max_words: int = Field(15, ge=1)
    caption_retries: int = Field(2, ge=0, le=10)
    # Off by default: a template answer is labelled source="template", never passed off as the model's.
    template_fallback: bool = False

    # The guard: a safety classifier (Qwen3Guard-Gen) behind POST /v1/moderate, served like the main model
    # (in process, or by a second vLLM server). "off": /v1/moderate answers 503 and outputs are not guarded.
    guard_backend: GuardBackend = "vllm"
    guard_model_id: str = "Qwen/Qwen3Guard-Gen-0.6B"
    guard_model_revision: Revision = None
    guard_served_model_name: str | None = None
    # Its own vLLM server (scripts/start_vllm.sh started a second time by deploy_service.sh).
    guard_vllm_base_url: str = "http://127.0.0.1:8008"
    # Upper bound of one guard generation; the interface's own INTERFACE_GUARD_TIMEOUT_S is what clients see.
    guard_timeout_s: float = Field(10.0, gt=0)
    # The verdict is three short lines; more tokens would only be the model rambling.
    guard_max_new_tokens: int = Field(48, ge=4, le=256)
    # Captions and replies are checked by the guard (kind="response") before they leave the service.
    guard_outputs: bool = True

    def expand_words(self, kind: ChatKind) -> int:
        words: dict[ChatKind, int] = {
            "1to1": self.expand_words_1to1,
            "shorts": self.expand_words_shorts,
            "scenes": self.expand_words_scenes,
        }
        return words[kind]

    def expand_max_tokens(self, kind: ChatKind) -> int:
        """The expansion's generation cap, derived from the kind's word target (never a separate number)."""
        words = self.expand_words(kind) * (1 + self.expand_length_margin)
        derived = math.ceil(words * self.expand_tokens_per_word)
        cap = self.expand_max_new_tokens
        return derived if cap is None else min(derived, cap)

    @field_validator("vllm_base_url", "guard_vllm_base_url")
    @classmethod
    def _strip_url(cls, value: str) -> str:
        return value.strip().rstrip("/")

    @field_validator("served_model_name", "guard_served_model_name")
    @classmethod
    def _blank_name_is_none(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return value.strip() or None

    @field_validator("vllm_api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return value

    @field_validator("caption_max_words")
    @classmethod
    def _caption_range(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("caption_min_words", 1)
        if value < low:
            raise ValueError("caption_max_words must be >= caption_min_words")
        return value
