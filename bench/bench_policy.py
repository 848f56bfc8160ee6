"""Throughput and worst-case latency of shared.policy. A measurement script, not a test: it never fails.

Run from the repository root: ``python -m bench.bench_policy``. Prints a table and writes
``bench/results/policy.json``.
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.policy_eval import load_cases
from shared.policy import PolicyDecision, evaluate_private_chat, sanitize_general

RESULTS = Path(__file__).resolve().parent / "results" / "policy.json"
LARGE_BYTES = 100_000
LATENCY_GOAL_MS = 50.0

_SUBJECTS = (
    "a young woman with auburn hair", "an elderly fisherman", "a knight in silver armor",
    "two friends", "a street musician", "a woman in a red evening dress", "a man with a beard",
    "a nude model", "a couple", "an astronaut", "a barista", "a dancer in lingerie",
)  # fmt: skip
_PLACES = (
    "on a rainy street in Tokyo at night", "in a sunlit kitchen", "on a beach at golden hour",
    "in a candle-lit bedroom", "in a misty pine forest", "on the deck of a sailing ship",
    "in a neon-lit cyberpunk alley", "in a cozy library with tall shelves", "at a rooftop bar",
)  # fmt: skip
_STYLE = (
    "cinematic lighting, shallow depth of field, 85mm lens, photorealistic, highly detailed skin texture",
    "oil painting in the style of the old masters, warm palette, soft brush strokes",
    "anime style, vibrant colors, clean line art, dynamic pose, 4k wallpaper",
    "soft film grain, Kodak Portra 400, natural light, candid expression, bokeh background",
    "studio portrait, rim light, dramatic shadows, 8k, sharp focus, award winning photograph",
)  # fmt: skip
_ACTIONS = (
    "smiling at the camera", "reading a worn paperback", "laughing while holding a coffee cup",
    "looking over the shoulder", "sitting cross-legged", "dancing slowly", "posing topless",
    "leaning against a vintage car", "holding an umbrella",
)  # fmt: skip
_VOCAB = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "cat", "house", "tree", "river",
    "mountain", "light", "shadow", "city", "night", "portrait", "painting", "camera", "lens",
    "sunset", "ocean", "forest", "garden", "window", "table", "chair", "book", "music", "analysis",
    "therapist", "grape", "cocktail", "classic", "title", "sussex", "essex", "assassin",
    "skateboard", "cumulative", "shiitake",
)  # fmt: skip


def realistic_prompts(count: int, rng: random.Random) -> list[str]:
    """Image prompts of roughly 20-60 words, a few of them explicit, like the traffic the services see."""
    prompts = []
    for _ in range(count):
        parts = [rng.choice(_SUBJECTS), rng.choice(_ACTIONS), rng.choice(_PLACES), rng.choice(_STYLE)]
        if rng.random() < 0.5:
            parts.append(rng.choice(_STYLE))
        prompts.append(", ".join(parts))
    return prompts


def large_inputs(rng: random.Random) -> dict[str, str]:
    """100 kB inputs: ordinary text and shapes aimed at the normalizer and regexes, in several scripts."""

    def fill(unit: str) -> str:
        return (unit * (LARGE_BYTES // len(unit) + 1))[:LARGE_BYTES]

    words = []
    size = 0
    while size < LARGE_BYTES:
        word = rng.choice(_VOCAB)
        words.append(word)
        size += len(word) + 1
    return {
        "random words": " ".join(words)[:LARGE_BYTES],
        "'a a a ...'": fill("a "),
        "'s e x ' repeated": fill("s e x "),
        "one letter run": "a" * LARGE_BYTES,
        "many digits": "".join(rng.choice("0123456789") for _ in range(LARGE_BYTES)),
        "digits and spaces": fill("1 5 "),
        "'r.a.p.e.' dotted": fill("r.a.p.e."),
        "'r*pe ' repeated": fill("r*pe "),
        "'15yo ' repeated": fill("15yo "),
        "cyrillic homoglyphs": fill("ѕеху "),
        "zero-width joined": fill("n\u200bu\u200bd\u200be "),
        "wide-gap spacing": fill("n u d e   "),
        "cyrillic words": fill("голая девочка "),
        "spaced cyrillic": fill("г о л а я "),
        "arabic words": fill("طفلة عارية "),
        "han run": fill("儿童裸体"),
        "hangul traps": fill("아이들은 해야한다 "),
        "devanagari words": fill("नंगी बच्ची "),
    }


def throughput(fn: Callable[[str], PolicyDecision], prompts: list[str], repeats: int = 5) -> dict[str, float]:
    """Best-of-N prompts/s over the whole list (best, to reduce scheduler noise)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for prompt in prompts:
            fn(prompt)
        rates.append(len(prompts) / (time.perf_counter() - start))
    return {"best_per_s": max(rates), "median_per_s": statistics.median(rates)}


def latency_ms(fn: Callable[[str], PolicyDecision], text: str, repeats: int = 5) -> dict[str, float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(text)
        samples.append((time.perf_counter() - start) * 1000)
    return {"min_ms": min(samples), "median_ms": statistics.median(samples), "max_ms": max(samples)}


def main() -> None:
    rng = random.Random(1234)
    prompts = realistic_prompts(5000, rng)
    word_counts = [len(p.split()) for p in prompts]
    functions: dict[str, Callable[[str], PolicyDecision]] = {
        "evaluate_private_chat": evaluate_private_chat,
        "sanitize_general": sanitize_general,
    }
    for prompt in prompts[:200]:  # warm-up: imports, regex caches
        sanitize_general(prompt)

    results: dict[str, object] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "prompt_count": len(prompts),
        "prompt_words": {
            "min": min(word_counts),
            "max": max(word_counts),
            "mean": statistics.mean(word_counts),
        },
        "throughput": {},
        "large_inputs": {},
        "latency_goal_ms": LATENCY_GOAL_MS,
    }
    print(f"prompts: {len(prompts)} ({min(word_counts)}-{max(word_counts)} words)")
    print(f"{'function':<24}{'best prompts/s':>16}{'median prompts/s':>18}")
    for name, fn in functions.items():
        stats = throughput(fn, prompts)
        results["throughput"][name] = stats  # type: ignore[index]
        print(f"{name:<24}{stats['best_per_s']:>16,.0f}{stats['median_per_s']:>18,.0f}")

    # The evaluation set: short prompts in 14 languages and scripts, half of them harmful.
    multilingual = [case.text for case in load_cases()]
    print(f"\npolicy_eval cases: {len(multilingual)} (14 languages, obfuscations, traps)")
    print(f"{'function':<24}{'best prompts/s':>16}{'median prompts/s':>18}")
    results["throughput_multilingual"] = {}
    for name, fn in functions.items():
        stats = throughput(fn, multilingual)
        results["throughput_multilingual"][name] = stats  # type: ignore[index]
        print(f"{name:<24}{stats['best_per_s']:>16,.0f}{stats['median_per_s']:>18,.0f}")

    print(f"\n100 kB inputs (goal < {LATENCY_GOAL_MS:.0f} ms)")
    print(f"{'input':<24}{'function':<24}{'min ms':>9}{'median ms':>11}{'max ms':>9}  verdict")
    for label, text in large_inputs(rng).items():
        for name, fn in functions.items():
            stats = latency_ms(fn, text)
            decision = fn(text)
            verdict = decision.category or "pass"
            results["large_inputs"].setdefault(label, {})[name] = {**stats, "verdict": verdict}  # type: ignore[union-attr]
            flag = "" if stats["median_ms"] < LATENCY_GOAL_MS else "  (over goal)"
            print(
                f"{label:<24}{name:<24}{stats['min_ms']:>9.1f}{stats['median_ms']:>11.1f}"
                f"{stats['max_ms']:>9.1f}  {verdict}{flag}"
            )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
