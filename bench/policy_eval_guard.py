"""The policy evaluation set through both layers: the word rules, then the guard as the interface enforces it.

``python -m bench.policy_eval_guard [--limit N]`` starts the LLM service with the tiny Qwen3Guard (random
weights, the production code path: ``from_pretrained``, the chat template, generation, the output parser,
``POST /v1/moderate``) and sends it every case the word rules let through, then applies the interface's own
rule (``services.interface.guard.decide`` in ``enforce``: an answer out of format is a refusal, 503).

What it measures is the plumbing on real text in every language (each call answered, parsed or refused,
and how long a check takes), not judgement: a random-weight guard answers noise, so nearly every case the
rules pass is refused as ``unparsed``. That is the fail-closed rule at work; with the real guard the same
column shows its verdicts. ``python -m bench.policy_eval`` is the rules alone.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.policy_eval import LABELS, Case, load_cases
from devtools import stack_env
from devtools.service_process import ServiceProcess
from services.interface.guard import decide
from shared.models import ModerateResponse
from shared.policy import evaluate_private_chat, sanitize_general

TOKEN = "bench-policy-eval-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def both_layers(case: Case, http: httpx.Client, url: str, seconds: list[float]) -> tuple[str, str | None]:
    """(outcome, guard verdict): outcome is ``rules`` (refused by the word rules on both routes), ``guard``
    (the guard's verdict refused it on both), ``503`` (the check failed: refused), or ``passed``."""
    private, general = evaluate_private_chat(case.text), sanitize_general(case.text)
    if private.blocked and general.blocked:
        return "rules", None
    started = time.perf_counter()
    resp = http.post(url, json={"text": case.text, "kind": "prompt"}, headers=AUTH)
    seconds.append(time.perf_counter() - started)
    if resp.status_code != 200:
        return "503", f"http {resp.status_code}"
    answer = ModerateResponse.model_validate(resp.json())
    if answer.verdict == "unparsed":
        return "503", "unparsed"
    refused = [
        decide(answer, case.text, moderated=moderated).blocked or rules.blocked
        for moderated, rules in ((False, private), (True, general))
    ]
    return ("guard" if all(refused) else "passed"), answer.verdict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--limit", type=int, default=0, help="at most this many cases per label (0: all)")
    args = parser.parse_args(argv)
    cases = load_cases()
    if args.limit:
        per_label: Counter[str] = Counter()
        kept = []
        for case in cases:
            per_label[case.label] += 1
            if per_label[case.label] <= args.limit:
                kept.append(case)
        cases = kept

    from bench.soak_stack import model_paths

    models = model_paths()
    with tempfile.TemporaryDirectory(prefix="imgpod-policy-eval-") as tmp:
        env = stack_env.llm_env(models, TOKEN, LLM_LOG_LEVEL="warning")
        with ServiceProcess("services.llm_service.main", env=env, log_dir=Path(tmp)) as llm:
            seconds: list[float] = []
            results: dict[str, Counter[str]] = {label: Counter() for label in LABELS}
            verdicts: Counter[str | None] = Counter()
            with httpx.Client(timeout=60) as http:
                for case in cases:
                    outcome, verdict = both_layers(case, http, llm.url + "/v1/moderate", seconds)
                    results[case.label][outcome] += 1
                    verdicts[verdict] += 1

    print(f"{len(cases)} cases; word rules first, then the tiny guard through /v1/moderate (enforce rule)\n")
    print(f"{'label':<8}{'cases':>7}{'rules':>8}{'guard':>8}{'503':>8}{'passed':>8}")
    for label in LABELS:
        row = results[label]
        print(
            f"{label:<8}{sum(row.values()):>7}"
            + "".join(f"{row[k]:>8}" for k in ("rules", "guard", "503", "passed"))
        )
    asked = {k or "-": v for k, v in verdicts.items() if k is not None}
    print(f"\nguard answers: {dict(sorted(asked.items()))}")
    if seconds:
        ms = sorted(s * 1000 for s in seconds)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        print(f"guard check: {len(ms)} calls, p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms")


if __name__ == "__main__":
    main()
