"""What the expansion's length costs, per chat kind and GPU, and how much of it the image model can read.

    python -m bench.bench_expansion_length --tokenizer DIR_OR_ID      # the Qwen2.5 (or Qwen3) tokenizer
    python -m bench.bench_expansion_length --tokenizer DIR --rate H100=140 --rate H200=170@40

The latency model (DEPLOYMENT.md, "Prompt length"): an expansion adds

    prefill(prompt tokens) + words x tokens_per_word / decode_rate

to a chat image request, before any pixel exists. Measured here, on the CPU: tokens per word of expansions
(bench/expansion_samples.py) and the expansion request's own prompt tokens, with the tokenizer given (the
LLM's: Qwen's byte-level BPE, which Z-Image's Qwen3 text encoder shares). Published, with their sources below:
single-stream (batch 1) decode rates of Qwen2.5-7B-Instruct in bf16 on vLLM, and the prefill times where the
same source gives them. A GPU without a published figure is left out rather than guessed; ``--rate
NAME=TOKENS_PER_S[@TTFT_MS]`` adds one measured on a pod (``vllm bench serve --max-concurrency 1``).

The token budget: the final prompt (persona + scene + style phrase + safety clause) inside the text encoder's
chat wrapper, plus the safety suffix the interface may append, must fit LLM_IMAGE_PROMPT_TOKEN_LIMIT (512);
the request's character limit binds too. The last table says how many scene words fit each.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import print_table, write_results
from bench.expansion_samples import SAMPLES
from services.llm_service.cleaning import word_count
from services.llm_service.prompts import build_expand_messages, character_descriptor, compose_expanded_prompt
from services.llm_service.settings import LlmSettings
from services.llm_service.token_budget import ENCODER_CLOSE, ENCODER_OPEN, PromptBudget
from shared.models import MAX_PROMPT_CHARS, Features
from shared.policy import COVERAGE_SUFFIX
from shared.roles import ChatKind
from shared.styles import STYLE_PHRASES

KINDS: tuple[ChatKind, ...] = ("1to1", "shorts", "scenes")
# The cap the expansion had before these settings: the baseline of the "added" column.
OLD_CAP_WORDS = 70
SWEEP_WORDS = (70, 100, 150, 200, 250, 300)
# Every persona field set: the longest descriptor the service composes.
PERSONA = Features(
    hair_color="auburn",
    hair_style="long wavy",
    eye_color="green",
    skin_tone="fair",
    age_range="25-34",
    gender_presentation="woman",
    facial_hair="none",
    glasses=True,
    accessories=["silver necklace", "red scarf"],
    description="A cheerful photographer who loves the sea and old film cameras.",
)
LONGEST_STYLE = max(STYLE_PHRASES, key=lambda name: len(STYLE_PHRASES[name]))


@dataclass(frozen=True, slots=True)
class DecodeRate:
    gpu: str
    tokens_per_s: float
    source: str
    # Published time to first token at (input tokens, ms), when the same source gives it.
    ttft_ms: tuple[tuple[int, float], ...] = ()

    def prefill_ms(self, prompt_tokens: int) -> float | None:
        """Linear between the published points (flat below the first, the last slope above the last)."""
        points = sorted(self.ttft_ms)
        if not points:
            return None
        if prompt_tokens <= points[0][0] or len(points) == 1:
            return points[0][1]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            if prompt_tokens <= x1:
                return y0 + (y1 - y0) * (prompt_tokens - x0) / (x1 - x0)
        (x0, y0), (x1, y1) = points[-2], points[-1]
        return y1 + (y1 - y0) * (prompt_tokens - x1) / (x1 - x0)


PUBLISHED: tuple[DecodeRate, ...] = (
    DecodeRate(
        "A100 80GB",
        84.28,
        "Qwen team, Qwen2.5 Speed Benchmark, table '7B (vLLM)': Qwen2.5-7B-Instruct, BF16, 1 GPU, batch 1, "
        "input length 1, 2048 generated tokens, vLLM 0.6.3 (github.com/QwenLM/Qwen2.5, "
        "docs/source/benchmark/speed_benchmark.rst). No TTFT published.",
    ),
    DecodeRate(
        "RTX 4090",
        1000 / 17.1,
        "Tenstorrent GPU reference run, 'Performance Benchmarks for Qwen2.5-7B-Instruct on 4090' "
        "(github.com/tenstorrent/tt-inference-server issue #125, 2025-03-28): vLLM, concurrency 1, TPOT "
        "17.1 ms at ISL 128 / OSL 128 (17.2 ms at ISL 1024-2048); TTFT 30.8 / 99.6 / 116.4 / 128.1 ms at "
        "ISL 128 / 1024 / 2048 / 3072. dtype not stated: the bf16 weights (15.2 GB) fit the 24 GB card.",
        ((128, 30.8), (1024, 99.6), (2048, 116.4), (3072, 128.1)),
    ),
)
# Asked for, no published single-stream Qwen2.5-7B bf16 vLLM figure found: measure on a pod and pass --rate.
UNSOURCED = ("H100", "H200", "L40S")


def parse_rate(text: str) -> DecodeRate:
    name, _, value = text.partition("=")
    rate, _, ttft = value.partition("@")
    if not name or not rate:
        raise argparse.ArgumentTypeError("expected NAME=TOKENS_PER_S[@TTFT_MS]")
    points = ((1024, float(ttft)),) if ttft else ()
    return DecodeRate(name, float(rate), "measured by the operator (--rate)", points)


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        sys.exit(f"cannot load tokenizer {name!r} ({type(exc).__name__}); pass --tokenizer DIR_OR_ID")


def chatml(messages: list[dict[str, str]]) -> str:
    """Qwen2.5's chat template for a system + user turn and the generation prompt."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def fit_costs(
    count: Callable[[str], int], limit: int, max_chars: int, descriptor: str
) -> list[tuple[Any, ...]]:
    """Time PromptBudget.fit_sync (the service runs it in the budget's own thread) on a scene that fits, and
    on scenes over the budget: the longest the generation cap allows at 400 words, and twice that."""
    joined = ", ".join(SAMPLES["scenes"] * 2)
    cap_400 = " ".join(joined.split()[: int(400 * 1.3)])
    cases = [SAMPLES["scenes"][0], cap_400, " ".join(joined.split()[: int(800 * 1.3)])]
    rows = []
    for scene in cases:
        times, trimmed = [], False
        for _ in range(50):
            budget = PromptBudget(token_limit=limit, max_chars=max_chars)
            budget.count = count
            budget.reserve(count)  # counted once per process in the service
            started = time.perf_counter()
            fitted = budget.fit_sync(scene, lambda part: compose_expanded_prompt("scenes", descriptor, part))
            times.append((time.perf_counter() - started) * 1e6)
            trimmed = fitted.cut_for is not None
        label = f"{word_count(scene)}-word scene"
        rows.append((label, round(statistics.median(times)), round(max(times)), trimmed))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", help="tokenizer dir or id (default: LLM_TOKENIZER_ID or LLM_MODEL_ID)")
    parser.add_argument("--rate", type=parse_rate, action="append", default=[], help="NAME=TOK_S[@TTFT_MS]")
    args = parser.parse_args()
    settings = LlmSettings()
    name = args.tokenizer or settings.tokenizer_id or settings.model_id
    tok = load_tokenizer(name)

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    vocab = len(tok)
    print(f"tokenizer: {name} (vocabulary {vocab})")
    if vocab < 100_000:
        print("WARNING: not Qwen's 151k BPE (a tiny test tokenizer?): tokens per word are not representative")

    # --- tokens per word --------------------------------------------------------------------------------
    rows, total_tokens, total_words, total_chars = [], 0, 0, 0
    per_sample = []
    for kind, texts in SAMPLES.items():
        for text in texts:
            tokens, words = count(text), word_count(text)
            per_sample.append(tokens / words)
            total_tokens, total_words, total_chars = (
                total_tokens + tokens,
                total_words + words,
                total_chars + len(text),
            )
            rows.append((kind, words, tokens, round(tokens / words, 3), round(len(text) / tokens, 2)))
    tpw = total_tokens / total_words
    chars_per_word = total_chars / total_words
    print_table("expansion samples", ("kind", "words", "tokens", "tokens/word", "chars/token"), rows)
    print(f"tokens per word: {tpw:.3f} overall (min {min(per_sample):.3f}, max {max(per_sample):.3f}); "
          f"setting LLM_EXPAND_TOKENS_PER_WORD = {settings.expand_tokens_per_word}")  # fmt: skip

    # --- the expansion request's prompt (prefill) -------------------------------------------------------
    prompt_tokens = {}
    for kind in KINDS:
        messages = build_expand_messages(
            kind,
            "a walk on the beach at sunset",
            [],
            PERSONA,
            words=settings.expand_words(kind),
            style="cinematic",
        )
        prompt_tokens[kind] = count(chatml([dict(m) for m in messages]))
    full_history = settings.history_token_budget
    print_table(
        "expansion request prompt tokens (system + persona + message, + history up to its token budget)",
        ("kind", "no history", f"+{full_history} history"),
        [(k, prompt_tokens[k], prompt_tokens[k] + full_history) for k in KINDS],
    )

    gpus = [*PUBLISHED, *args.rate]
    print_table(
        "decode cost per expansion word (tokens/word / single-stream decode rate)",
        ("GPU", "decode tok/s", "ms/word", "ms / 10 words"),
        [
            (
                g.gpu,
                round(g.tokens_per_s, 1),
                round(tpw / g.tokens_per_s * 1000, 1),
                round(10 * tpw / g.tokens_per_s * 1000),
            )
            for g in gpus
        ],
    )

    # --- words -> added latency -------------------------------------------------------------------------
    sweep = []
    for words in SWEEP_WORDS:
        sweep.append((words, math.ceil(words * tpw), *(round(words * tpw / g.tokens_per_s, 2) for g in gpus)))
    print_table("decode seconds by expansion length", ("words", "tokens", *(g.gpu for g in gpus)), sweep)

    role_rows = []
    results_roles: dict[str, Any] = {}
    for kind in KINDS:
        words = settings.expand_words(kind)
        row: list[Any] = [kind, words, settings.expand_max_tokens(kind)]
        results_roles[kind] = {"words": words, "max_tokens": settings.expand_max_tokens(kind), "gpus": {}}
        for g in gpus:
            decode = words * tpw / g.tokens_per_s
            prefill = g.prefill_ms(prompt_tokens[kind])
            added = (words - OLD_CAP_WORDS) * tpw / g.tokens_per_s
            total = f"{prefill / 1000 + decode:.2f}" if prefill is not None else f"{decode:.2f}+prefill"
            row.append(f"{total} (+{added:.2f})")
            results_roles[kind]["gpus"][g.gpu] = {"prefill_ms": prefill, "decode_s": round(decode, 3),
                                                  "over_70_words_s": round(added, 3)}  # fmt: skip
        role_rows.append(row)
    print_table(
        "expansion latency per kind at its default length, s: prefill + decode (+ over the old 70-word cap)",
        ("kind", "words", "max_tokens", *(g.gpu for g in gpus)),
        role_rows,
    )

    # --- token budget ---------------------------------------------------------------------------------------
    limit = settings.image_prompt_token_limit
    max_chars = MAX_PROMPT_CHARS - len(COVERAGE_SUFFIX)
    descriptor = character_descriptor(PERSONA)
    budget_rows = []
    for kind in KINDS:
        fixed = compose_expanded_prompt(kind, descriptor, "", style=LONGEST_STYLE)
        fixed_tokens = count(ENCODER_OPEN + fixed + ENCODER_CLOSE) + count(COVERAGE_SUFFIX) + 1  # + the ", "
        room_tokens, room_chars = limit - fixed_tokens, max_chars - len(fixed) - 2
        budget_rows.append((kind, fixed_tokens, room_tokens, int(room_tokens / tpw), len(fixed), room_chars,
                            int(room_chars / chars_per_word)))  # fmt: skip
    print_table(
        f"what fits: token limit {limit} (encoder wrapper, safety suffix held back), {max_chars} characters; "
        f"fixed parts = full persona + '{LONGEST_STYLE}' style + the kind's safety clause",
        (
            "kind",
            "fixed tok",
            "scene tok",
            "scene words",
            "fixed chars",
            "scene chars",
            "scene words (chars)",
        ),
        budget_rows,
    )
    fit_rows = fit_costs(count, limit, max_chars, descriptor)
    print_table(
        "cost of fitting a prompt (PromptBudget.fit_sync, in its own thread, real tokenizer), microseconds",
        ("case", "p50 us", "max us", "trimmed"),
        fit_rows,
    )
    for gpu in UNSOURCED:
        if all(g.gpu != gpu for g in gpus):
            print(
                f"{gpu}: left out, no published single-stream Qwen2.5-7B bf16 vLLM figure (--rate adds one)"
            )
    print("\nsources:")
    for g in gpus:
        print(f"  {g.gpu}: {g.source}")
    write_results(
        "bench_expansion_length",
        {
            "tokenizer": name,
            "vocabulary": vocab,
            "tokens_per_word": round(tpw, 4),
            "chars_per_word": round(chars_per_word, 3),
            "prompt_tokens": prompt_tokens,
            "rates": {g.gpu: {"tokens_per_s": g.tokens_per_s, "source": g.source} for g in gpus},
            "kinds": results_roles,
            "budget": budget_rows,
            "fit_cost_us": fit_rows,
        },
    )


if __name__ == "__main__":
    main()
