"""In-process backend: ``AutoModelForCausalLM`` + ``AutoTokenizer`` with the model's chat template.

Why a one-thread executor: ``generate`` blocks for seconds and one model object must not run two
generations at once. A dedicated single worker thread serializes calls in arrival order, keeps the event loop
free, and a call whose client gave up before it started is simply dropped from the executor's queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.llm_service.backends.base import ChatMessage, ChatResult, apply_stop
from services.llm_service.settings import LlmSettings
from shared.errors import InferenceFailed, ModelUnavailable, ValidationFailed
from shared.torch_devices import resolve_device, resolve_dtype

log = logging.getLogger(__name__)


class TransformersBackend:
    name = "transformers"

    def __init__(self, settings: LlmSettings) -> None:
        self.settings = settings
        self.model_id = settings.model_id
        self.device: str | None = None
        self.dtype: str | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._count_tokenizer: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-generate")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        device = resolve_device(self.settings.device)
        dtype = resolve_dtype(self.settings.dtype, device)
        revision = self.settings.model_revision
        tokenizer = AutoTokenizer.from_pretrained(self.settings.model_id, revision=revision)
        # A second instance for counting history tokens on the event loop: a fast tokenizer used from two
        # threads at once can fail with "Already borrowed" while the generation thread encodes.
        self._count_tokenizer = AutoTokenizer.from_pretrained(self.settings.model_id, revision=revision)
        # device_map loads the weights straight onto the GPU instead of staging 15 GB in host memory first.
        model = AutoModelForCausalLM.from_pretrained(
            self.settings.model_id, dtype=dtype, device_map=device, revision=revision
        )
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer, self._model = tokenizer, model
        self.device, self.dtype = device, str(dtype).removeprefix("torch.")
        if self.settings.warmup:
            # The first generate pays for kernel selection and allocator growth; pay it before /healthz=200.
            with torch.inference_mode():
                self._generate_sync([{"role": "user", "content": "hello"}], 4, 0.0, 1.0, (), 0, 0)
        log.info(
            "model loaded",
            extra={"model": self.model_id, "device": device, "s": round(time.perf_counter() - started, 2)},
        )

    async def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._model = None
        self._tokenizer = self._count_tokenizer = None

    async def health(self) -> str | None:
        return None if self._model is not None else "model not loaded"

    def count_tokens(self, text: str) -> int:
        if self._count_tokenizer is None or self._model is None:
            raise ModelUnavailable("model is not loaded")
        return len(self._count_tokenizer.encode(text, add_special_tokens=False))

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        min_tokens: int = 0,
        seed: int | None = None,
        regex: str | None = None,
        json_schema: Mapping[str, Any] | None = None,
    ) -> ChatResult:
        # Answer formats (``regex``, ``json_schema``) are not enforced in process: transformers has no
        # constrained decoding, so what parses the answer must fail closed on anything else, as the guard's
        # parser and the persona reader do.
        del regex, json_schema
        if self._model is None:
            raise ModelUnavailable("model is not loaded")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor,
            self._generate_sync,
            list(messages),
            max_tokens,
            temperature,
            top_p,
            tuple(stop),
            min_tokens,
            seed,
        )

    def _generate_sync(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: tuple[str, ...],
        min_tokens: int,
        seed: int | None,
    ) -> ChatResult:
        import torch

        tok, model = self._tokenizer, self._model
        enc = tok.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt_tokens = int(enc["input_ids"].shape[1])
        if prompt_tokens > self.settings.max_input_tokens:
            raise ValidationFailed(
                f"input is {prompt_tokens} tokens; the limit is {self.settings.max_input_tokens}"
            )
        enc = {k: v.to(model.device) for k, v in enc.items()}
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "min_new_tokens": min(min_tokens, max_tokens),
            "pad_token_id": tok.pad_token_id,
            # A hard stop inside generate, so a slow call frees the model thread near the request timeout.
            "max_time": self.settings.request_timeout_s,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if seed is not None:
            torch.manual_seed(seed)
        try:
            with torch.inference_mode():
                out = model.generate(**enc, **kwargs)
        except (RuntimeError, ValueError) as exc:
            log.exception("generate failed")
            raise InferenceFailed(f"generation failed ({type(exc).__name__})") from exc
        new_ids = out[0][prompt_tokens:]
        eos_ids = _as_set(model.generation_config.eos_token_id)
        hit_eos = bool(len(new_ids)) and int(new_ids[-1]) in eos_ids
        text = tok.decode(new_ids, skip_special_tokens=True)
        text, hit_stop = apply_stop(text, stop)
        return ChatResult(
            text=text,
            model=self.model_id,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(new_ids),
            finish_reason="stop" if (hit_eos or hit_stop or len(new_ids) < max_tokens) else "length",
        )


def _as_set(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {value} if isinstance(value, int) else set(value)
