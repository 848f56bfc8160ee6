"""The soak's tables on stdout: one per load level as it finishes, and a summary of every level at the end."""

from __future__ import annotations

from bench.common import print_table
from bench.soak_invariants import LevelResult, SoakResult
from bench.soak_stack import VICTIM


def print_level(lv: LevelResult, capacity: float) -> None:
    kill = ""
    if lv.killed_at_s is not None:
        busy = "?" if lv.victim_in_flight_at_kill is None else f"{lv.victim_in_flight_at_kill:g}"
        kill = f", {VICTIM} killed at {lv.killed_at_s:g} s with {busy} in flight"
    title = (
        f"Load {lv.load:g}x (capacity {capacity:.2f} ok/s): {lv.offered_per_s:g} req/s offered, "
        f"{lv.sent} sent in {lv.wall_s:g} s{kill}"
    )
    print_table(
        title,
        ["invariant", "value", "limit", "result"],
        [[i.name + (" [speed]" if i.speed else ""), i.value, i.limit, i.verdict] for i in lv.invariants],
    )
    codes = sorted({k for row in lv.by_flow.values() for k in row}, key=lambda k: (not k.isdigit(), k))
    print_table(
        "  answers per flow",
        ["flow", *codes, "ok p50 ms", "ok p99 ms"],
        [
            [
                flow,
                *(row.get(c, 0) for c in codes),
                lv.admitted_by_flow.get(flow, {}).get("p50_ms", "-"),
                lv.admitted_by_flow.get(flow, {}).get("p99_ms", "-"),
            ]
            for flow, row in sorted(lv.by_flow.items())
        ],
    )
    print(
        f"  admitted p50/p99 {lv.admitted.get('p50_ms', '-')}/{lv.admitted.get('p99_ms', '-')} ms; "
        f"429 p50/p99 {lv.refused_429.get('p50_ms', '-')}/{lv.refused_429.get('p99_ms', '-')} ms; "
        f"client lag p99 {lv.client_lag_p99_ms} ms"
    )
    peaks = [
        f"{n} {'-' if p['peak'] is None else format(p['peak'], 'g')}/{p['limit']}"
        for n, p in lv.peaks.items()
    ]
    print("  peaks in flight: " + ", ".join(peaks))
    print("  /healthz p99 ms: " + ", ".join(f"{n} {v:g}" for n, v in lv.health_p99_ms.items()))
    if lv.health_failures:
        print(f"  /healthz not 200: {lv.health_failures}")
    rss = [
        f"{n} {'restarted' if g is None else format(g * 100, '+.1f') + '%'}" for n, g in lv.rss_growth.items()
    ]
    print("  RSS growth: " + ", ".join(rss))
    print("  RSS MB at end: " + ", ".join(f"{n} {v:g}" for n, v in lv.rss_mb.items()))
    print("  CPU s during the level: " + ", ".join(f"{n} {v:g}" for n, v in lv.cpu_s.items()))
    if lv.interface_counters:
        print("  interface: " + ", ".join(f"{k} {v:g}" for k, v in sorted(lv.interface_counters.items())))
    if lv.bad_responses:
        print_table(
            "  answers outside the allowed statuses",
            ["flow", "status", "code", "stage", "when", "n", "detail"],
            [
                [b["flow"], b["status"], b["code"], b["stage"], b["when"], b["count"], b["detail"]]
                for b in lv.bad_responses
            ],
        )


def print_summary(result: SoakResult) -> None:
    print(f"\nSummary (capacity {result.capacity_per_s:g} ok/s; victim restarts: {result.restart_s} s)")
    print(f"  capacity run answers: {result.capacity_sample}; warm-up burst answers: {result.warmup_sample}")
    for when, rss in result.rss_mb.items():
        print(f"  RSS MB {when}: " + ", ".join(f"{n} {v:g}" for n, v in rss.items()))
    names = [i.name for i in result.levels[0].invariants] if result.levels else []
    print_table(
        "invariants per load level",
        ["invariant", *(f"{lv.load:g}x" for lv in result.levels)],
        [[name, *(lv.invariants[k].verdict for lv in result.levels)] for k, name in enumerate(names)],
    )
