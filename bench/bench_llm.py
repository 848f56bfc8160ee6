"""Latency of the LLM service's routes on the tiny model (or on any running instance).

    python bench/bench_llm.py                      # starts A (transformers, tiny model) and B (vllm -> A)
    python bench/bench_llm.py --url http://pod:8002 --token $LLM_INTERNAL_TOKEN   # an existing service

Prints p50/p95 per route over ``--calls`` sequential calls (after one warm-up call per route).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.service_process import ServiceProcess  # noqa: E402
from shared.tiny_models.build import build_all  # noqa: E402

PERSONA = {"hair_color": "auburn", "hair_style": "long wavy", "eye_color": "green", "skin_tone": "fair",
           "age_range": "25-34", "gender_presentation": "woman", "glasses": True}  # fmt: skip
LONG = " ".join(["I would love a picture of us walking on the quiet beach at sunset with the dog"] * 4)
ROUTES: list[tuple[str, str, dict[str, object]]] = [
    ("expand 1to1", "/v1/chat/1to1/expand", {"message": "a walk on the beach", "persona": PERSONA}),
    ("expand shorts", "/v1/chat/shorts/expand", {"message": "a walk on the beach", "persona": PERSONA}),
    ("expand scenes", "/v1/chat/scenes/expand", {"message": "a walk on the beach", "persona": PERSONA}),
    ("expand 1to1 (64 words, shortened)", "/v1/chat/1to1/expand", {"message": LONG, "persona": PERSONA}),
    ("caption", "/v1/chat/1to1/caption", {"prompt": "a woman walking on a beach at sunset"}),
    ("reply", "/v1/chat/1to1/reply", {"message": "how was your day?", "persona": PERSONA}),
]


def bench(url: str, token: str | None, calls: int, label: str) -> list[tuple[str, str, float, float, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    rows = []
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        for name, path, body in ROUTES:
            client.post(path, json=body)  # warm-up
            times, statuses = [], {}
            for _ in range(calls):
                started = time.perf_counter()
                resp = client.post(path, json=body)
                times.append((time.perf_counter() - started) * 1000)
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            p95 = statistics.quantiles(times, n=20)[-1] if len(times) >= 2 else times[0]
            codes = " ".join(f"{k}x{v}" for k, v in sorted(statuses.items()))
            rows.append((label, name, statistics.median(times), p95, codes))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument(
        "--max-new-tokens", type=int, default=48, help="per-route cap for the local instances"
    )
    args = parser.parse_args()

    if args.url:
        rows = bench(args.url, args.token, args.calls, "remote")
    else:
        models = build_all(Path(tempfile.gettempdir()) / "img_pod_bench_models", only=["qwen_lm"])
        caps = {f"LLM_{r}_MAX_NEW_TOKENS": str(args.max_new_tokens) for r in ("EXPAND", "SHORTEN", "REPLY")}
        env = {"LLM_MODEL_ID": str(models["qwen_lm"]), "LLM_MIN_NEW_TOKENS": "16", "LLM_SEED": "1234",
               "LLM_CAPTION_MAX_NEW_TOKENS": "40", "LLM_LOG_LEVEL": "warning", "LLM_GUARD_BACKEND": "off",
               **caps}  # fmt: skip
        token_a, token_b = "bench-token-a-1234", "bench-token-b-5678"
        with ServiceProcess(
            "services.llm_service.main",
            env={**env, "LLM_BACKEND": "transformers", "LLM_INTERNAL_TOKEN": token_a},
        ) as a:
            rows = bench(a.url, token_a, args.calls, "transformers")
            b_env = {**env, "LLM_BACKEND": "vllm", "LLM_VLLM_BASE_URL": a.url, "LLM_VLLM_API_KEY": token_a,
                     "LLM_INTERNAL_TOKEN": token_b}  # fmt: skip
            with ServiceProcess("services.llm_service.main", env=b_env) as b:
                rows += bench(b.url, token_b, args.calls, "vllm -> A")

    print(f"{'backend':<14} {'route':<36} {'p50 ms':>8} {'p95 ms':>8}  statuses")
    for label, name, p50, p95, codes in rows:
        print(f"{label:<14} {name:<36} {p50:>8.1f} {p95:>8.1f}  {codes}")


if __name__ == "__main__":
    main()
