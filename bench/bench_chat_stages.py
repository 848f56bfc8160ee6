"""Per-stage time of the chat image flows on the local tiny stack: where a request's time goes.

Starts the LLM service (tiny Qwen2.5, transformers backend), one image worker per chat role (tiny Z-Image,
CPU) and the interface, as the e2e tests do (``devtools/stack_env.py``), then sends ``--calls`` requests to
each chat route one at a time and prints the median of each stage of ``timings_ms`` and of the end-to-end
time. The stages overlap where the flow runs them side by side (the guard beside the expansion, the caption
beside the image), so they add up to more than ``total``; ``total`` is what the client waits.

    python -m bench.bench_chat_stages [--calls 10] [--routes 1to1,shorts] [--size 256] [--steps 8]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO_ROOT, print_table, write_results
from bench.stack import TOKEN, worker_env
from devtools import stack_env
from devtools.service_process import ServiceProcess, all_running

KEY = "bench-key"
ROUTES = {
    "1to1": "/v1/chat/1to1/imagegen",
    "shorts": "/v1/chat/shorts/generate",
    "scenes": "/v1/chat/scenes/generate",
}
WORKER_OF = {"1to1": "chat1to1", "shorts": "shorts", "scenes": "scenes"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--routes", default="1to1")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    routes = [r for r in args.routes.split(",") if r]
    from shared.tiny_models.build import build_all

    root = Path(os.environ.get("IMG_POD_TINY_MODELS", REPO_ROOT / ".local" / "tiny-models"))
    models = build_all(root, only=["qwen_lm", "qwen3_guard", "zimage"])
    with contextlib.ExitStack() as stack:
        llm_env = {**stack_env.llm_env(models, TOKEN), "LLM_LOG_LEVEL": "warning"}
        procs = {"llm": ServiceProcess("services.llm_service.main", env=llm_env, wait_healthy=False)}
        for route in routes:
            role = WORKER_OF[route]
            procs[role] = ServiceProcess(
                f"services.{role}_worker.main", env=worker_env(models["zimage"]), wait_healthy=False
            )
        stack.enter_context(all_running(procs.values()))
        # Every role the interface knows needs a URL; the roles not measured point at the LLM (never called).
        urls = {name: procs.get(name, procs["llm"]).url for name in ("llm", "selfie", "profile")}
        urls |= {role: procs[role].url if role in procs else procs["llm"].url for role in WORKER_OF.values()}
        env = stack_env.interface_env(
            urls, TOKEN, INTERFACE_API_KEYS=KEY, INTERFACE_LOG_LEVEL="warning", INTERFACE_GUARD="off"
        )
        api = stack.enter_context(ServiceProcess("services.interface.main", env=env))
        results: dict[str, Any] = {}
        with httpx.Client(base_url=api.url, headers={"X-API-Key": KEY}, timeout=300) as client:
            for route in routes:
                body = {
                    "message": "a walk along the beach at sunset",
                    "persona": stack_env.PERSONA,
                    "width": args.size,
                    "height": args.size,
                    "steps": args.steps,
                }
                client.post(ROUTES[route], json={**body, "seed": 0}).raise_for_status()  # warm-up
                stages: dict[str, list[float]] = {}
                for i in range(args.calls):
                    started = time.perf_counter()
                    resp = client.post(ROUTES[route], json={**body, "seed": i + 1})
                    resp.raise_for_status()
                    stages.setdefault("client end to end", []).append((time.perf_counter() - started) * 1000)
                    for name, ms in resp.json()["timings_ms"].items():
                        stages.setdefault(name, []).append(float(ms))
                results[route] = {name: round(statistics.median(v), 1) for name, v in stages.items()}
    for route, medians in results.items():
        print_table(
            f"chat {route}: median ms per stage, {args.size}x{args.size}, {args.steps} steps, "
            f"{args.calls} calls (tiny models, CPU)",
            ["stage", "p50 ms"],
            [[name, ms] for name, ms in medians.items()],
        )
    write_results("bench_chat_stages", {"calls": args.calls, "size": args.size, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
