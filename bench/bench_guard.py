"""What the guard adds to a request on the local stack: the tiny Qwen3Guard, on CPU, in the LLM service.

    python -m bench.bench_guard [--calls 30]

Starts the LLM service (tiny chat model + tiny guard, as ``devtools/stack_env.py`` runs them), one image
worker (tiny Z-Image, 64x64, one step) and two interfaces in front of them, one with ``INTERFACE_GUARD=off``
and one with ``observe`` (which makes the same calls as ``enforce`` and waits for them; with the random guard,
``enforce`` would refuse its noise). Measures ``/v1/moderate`` directly, then the private image route (one
guard call before the image) and the 1:1 chat image route (one call beside the expansion, one on the
expanded prompt), alternating off and observe call by call so drift hits both alike.

The figures are the plumbing's cost on this machine, not a production estimate: the tiny guard never stops
early, so it writes all LLM_GUARD_MAX_NEW_TOKENS (48) tokens where the real one stops after about ten, and it
shares the CPU with everything else here. JSON in bench/results/bench_guard.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import httpx

from bench.common import print_table, summary_ms, tiny_model_dir, write_results
from devtools import stack_env
from devtools.service_process import ServiceProcess, all_running

TOKEN = "bench-guard-token-4e1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROMPT = "a lighthouse on a cliff at dusk, waves below"


def timed(call: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    resp = call()
    took = time.perf_counter() - started
    if resp.status_code != 200:
        raise SystemExit(f"unexpected {resp.status_code}: {resp.text[:300]}")
    return took


def guard_checks(client: httpx.Client, api: ServiceProcess) -> int:
    text = client.get(api.url + "/metrics").text
    lines = [ln for ln in text.splitlines() if ln.startswith("imgpod_guard_checks_total{")]
    return int(sum(float(ln.rsplit(" ", 1)[1]) for ln in lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=30, help="measured calls per route and mode")
    args = parser.parse_args()

    models = {name: tiny_model_dir(name) for name in ("qwen_lm", "qwen3_guard", "zimage")}
    quiet = {"LLM_LOG_LEVEL": "warning"}
    image_env = {
        "IMAGE_MODEL_ID": str(models["zimage"]),
        "IMAGE_DEFAULT_WIDTH": "64",
        "IMAGE_DEFAULT_HEIGHT": "64",
        "IMAGE_DEFAULT_STEPS": "1",
        "IMAGE_DEVICES": "cpu",
        "IMAGE_INTERNAL_TOKEN": TOKEN,
        "IMAGE_LOG_LEVEL": "warning",
    }
    llm = ServiceProcess("services.llm_service.main", env=stack_env.llm_env(models, TOKEN, **quiet))
    worker = ServiceProcess("services.chat1to1_worker.main", env=image_env)
    with all_running([llm, worker]):
        base = {
            "INTERFACE_INTERNAL_TOKEN": TOKEN,
            "INTERFACE_LLM_URLS": llm.url,
            "INTERFACE_CHAT1TO1_WORKER_URLS": worker.url,
            "INTERFACE_LOG_LEVEL": "warning",
        }
        apis = {
            mode: ServiceProcess("services.interface.main", env={**base, "INTERFACE_GUARD": mode})
            for mode in ("off", "observe")
        }
        with all_running(apis.values()), httpx.Client(timeout=120) as client:
            moderate = [
                timed(lambda: client.post(llm.url + "/v1/moderate", json={"text": PROMPT}, headers=AUTH))
                for _ in range(args.calls + 2)
            ][2:]  # the first calls pay one-off costs (allocations, lazy imports)
            routes = {
                "private image": ("/v1/chat/private/imagegen", {"prompt": PROMPT, "seed": 1}),
                "1:1 chat image": ("/v1/chat/1to1/imagegen", {"message": PROMPT, "seed": 1}),
            }
            times: dict[tuple[str, str], list[float]] = {}
            for route, (path, body) in routes.items():
                for api in apis.values():  # warm-up
                    timed(lambda api=api, path=path, body=body: client.post(api.url + path, json=body))
                for _ in range(args.calls):
                    for mode, api in apis.items():
                        took = timed(
                            lambda api=api, path=path, body=body: client.post(api.url + path, json=body)
                        )
                        times.setdefault((route, mode), []).append(took)
            # Proof that the observing interface asked the guard on every call, and the other never did.
            checks = {mode: guard_checks(client, api) for mode, api in apis.items()}

    direct = summary_ms(moderate)
    # The direct call's p50 sits in the "added" column: all of it is the guard.
    rows: list[list[object]] = [["/v1/moderate (direct)", "-", "-", direct["p50_ms"], direct["p99_ms"]]]
    results: dict[str, object] = {"calls": args.calls, "moderate_direct": direct, "guard_checks": checks}
    for route in routes:
        off, observe = summary_ms(times[(route, "off")]), summary_ms(times[(route, "observe")])
        # Calls alternate, so every observe call has an off call beside it: the median of those differences
        # is less swayed by the machine's load drifting than a difference of medians.
        paired = [o - f for o, f in zip(times[(route, "observe")], times[(route, "off")], strict=True)]
        added = round(statistics.median(paired) * 1000, 2)
        rows.append([route, off["p50_ms"], observe["p50_ms"], added, observe["p99_ms"]])
        results[route] = {"off": off, "observe": observe, "added_median_ms": added}
    print_table(
        f"guard latency on the local stack (tiny Qwen3Guard, CPU; {args.calls} calls each)",
        ["what", "off p50 ms", "observe p50 ms", "added median ms", "observe p99 ms"],
        rows,
    )
    print(f"\nguard checks counted by each interface: {checks}")
    write_results("bench_guard", results)


if __name__ == "__main__":
    main()
