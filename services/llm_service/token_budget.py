"""Fitting an expanded prompt into what the image model reads: cut at a phrase boundary, and say so.

What is counted, and with which tokenizer. The image worker counts a prompt inside the text encoder's chat
wrapper (``services/image_worker/pipeline.py``, ``count_tokens``) against its ``max_sequence_length`` (512 for
Z-Image); this module counts the same string. It counts with the LLM's own tokenizer files: Z-Image's text
encoder is Qwen3 and the LLM is Qwen2.5, and both use Qwen's byte-level BPE (the same 151,643 regular tokens
and merges and the same pre-tokenizer; Qwen3 only adds special tokens such as ``<think>``), so plain text gets
the same count from either. Loading the image model's tokenizer here would ship the image model's files to
the LLM pod for the same number. An image model with another tokenizer would need its own count here.

What the interface may still append: the coverage suffix its word rules add when they cover a prompt
(``shared.policy.COVERAGE_SUFFIX``); its tokens are held back. A covered expansion already ends with the
coverage phrase, which the word rules never append twice, but a neutral one may still be covered. The style
phrase, the persona and, on a covered expansion only, the coverage clause are part of the composed prompt,
so they are counted when present, and only the scene is ever cut.

The request's character limit (``MAX_PROMPT_CHARS`` on the image routes, again minus the suffix) is fitted
the same way: for long English scenes it binds a little before the token limit.

Where it runs: in its own thread, with its own tokenizer instance. One count of a whole prompt is a few
hundred microseconds, a cut adds one count per dropped phrase (bench.bench_expansion_length prints both), and
a fast tokenizer must not be used from two threads at once (the backends' count tokenizers belong to the
event loop), so neither the loop nor the backends' instances do this work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from services.llm_service.cleaning import phrase_cuts, word_cuts
from shared.policy import COVERAGE_SUFFIX

# Qwen3's chat template around one user turn, as the Z-Image pipeline renders it (enable_thinking=True adds
# no empty think block). Its special tokens are in the Qwen2.5 vocabulary too, so they count as one each.
ENCODER_OPEN = "<|im_start|>user\n"
ENCODER_CLOSE = "<|im_end|>\n<|im_start|>assistant\n"

log = logging.getLogger(__name__)

Cause = Literal["tokens", "chars"]
Count = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class Fitted:
    prompt: str
    # Tokens of ``prompt`` inside the encoder's wrapper; None when no tokenizer could count.
    tokens: int | None
    # What forced a cut of the scene; None when it was kept whole.
    cut_for: Cause | None


class PromptBudget:
    def __init__(self, *, token_limit: int, max_chars: int) -> None:
        self.token_limit = token_limit
        self.max_chars = max_chars
        # The tokenizer's count, set by start(); None checks characters only (no tokenizer could be loaded).
        self.count: Count | None = None
        self._reserve: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-token-budget")

    async def start(self, tokenizer_id: str) -> None:
        """Load this budget's own tokenizer instance; a failure leaves characters-only fitting, logged."""
        loop = asyncio.get_running_loop()
        try:
            tokenizer = await loop.run_in_executor(self._executor, _load_tokenizer, tokenizer_id)
        except Exception as exc:  # a missing or broken tokenizer must not stop the service
            log.warning(
                "prompt budget without a tokenizer: characters only", extra={"error": type(exc).__name__}
            )
            return
        self.count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))

    def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def fit(self, scene: str, compose: Callable[[str], str]) -> Fitted:
        """``fit_sync`` in the budget's thread: never on the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.fit_sync, scene, compose)

    def reserve(self, count: Count) -> int:
        """Tokens held back for the suffix the interface may append; counted once."""
        if self._reserve is None:
            self._reserve = count(COVERAGE_SUFFIX)
        return self._reserve

    def encoder_tokens(self, prompt: str, count: Count) -> int:
        return count(ENCODER_OPEN + prompt + ENCODER_CLOSE)

    def fit_sync(self, scene: str, compose: Callable[[str], str]) -> Fitted:
        """The longest prompt ``compose(scene[:cut])`` that fits, cutting at phrase boundaries (words when
        a single phrase is too long)."""
        count = self.count
        prompt = compose(scene)
        tokens = self.encoder_tokens(prompt, count) if count else None
        over = self._over(prompt, tokens, count)
        if over == (0, 0):
            return Fitted(prompt, tokens, None)
        cause: Cause = "tokens" if over[0] > 0 else "chars"
        phrases = phrase_cuts(scene)
        found = self._cut(scene, phrases, compose, count, over)
        if found is None:
            # Not even the first phrase fits: cut that phrase between words.
            first = scene[: phrases[0]] if phrases else scene
            first_prompt = compose(first)
            first_tokens = self.encoder_tokens(first_prompt, count) if count else None
            first_over = self._over(first_prompt, first_tokens, count)
            found = self._cut(first, word_cuts(first), compose, count, first_over)
        if found is None:
            # Nothing of the scene fits beside the fixed parts (a budget set below them): those alone.
            prompt = compose("")
            found = (prompt, self.encoder_tokens(prompt, count) if count else None)
        return Fitted(found[0], found[1], cause)

    def _over(self, prompt: str, tokens: int | None, count: Count | None) -> tuple[int, int]:
        """(tokens, characters) over the limits; (0, 0) when the prompt fits."""
        token_excess = 0
        if tokens is not None and count is not None:
            token_excess = max(0, tokens + self.reserve(count) - self.token_limit)
        return token_excess, max(0, len(prompt) - self.max_chars)

    def _cut(
        self,
        scene: str,
        cuts: list[int],
        compose: Callable[[str], str],
        count: Count | None,
        over: tuple[int, int],
    ) -> tuple[str, int | None] | None:
        """Drop pieces from the end of ``scene`` until the estimate fits, then check with a real count.

        The estimate subtracts each dropped piece's own count: BPE pieces split at a space or a comma count
        the same apart as together, so one verifying count is usually all it takes; when it is not, the loop
        drops the next piece and checks again.
        """
        token_excess, char_excess = over
        end = len(scene)
        for cut in reversed(cuts):
            if cut <= 0:
                break
            piece = scene[cut:end]
            token_excess -= count(piece) if count else 0
            char_excess -= len(piece)
            end = cut
            if token_excess > 0 or char_excess > 0:
                continue
            prompt = compose(scene[:cut])
            tokens = self.encoder_tokens(prompt, count) if count else None
            token_excess, char_excess = self._over(prompt, tokens, count)
            if (token_excess, char_excess) == (0, 0):
                return prompt, tokens
        return None


def _load_tokenizer(tokenizer_id: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_id)
