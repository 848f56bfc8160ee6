"""The soak's verdicts: one level's records and observations judged against each invariant, and the results.

The invariants themselves are listed in ``bench/soak.py``'s docstring; ``speed`` marks those that depend on
the machine's speed, which only the benchmark run asserts.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.common import percentile
from bench.soak_observers import Peak, Probe
from bench.soak_traffic import PhaseRun

DECLARED_4XX = frozenset({401, 413, 415, 422})
ALLOWED = frozenset({200, 429, 503, 504}) | DECLARED_4XX
T429_P99_LIMIT_MS = 20.0
HEALTH_P99_LIMIT_MS = 50.0
RSS_GROWTH_LIMIT = 0.10


@dataclass(slots=True)
class Invariant:
    name: str
    value: str
    limit: str
    passed: bool | None  # None: not measurable
    speed: bool = False  # speed-dependent: judged in the bench, printed only in the test

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else ("PASS" if self.passed else "FAIL")


@dataclass(slots=True)
class LevelResult:
    load: float
    offered_per_s: float
    sent: int
    wall_s: float
    killed_at_s: float | None
    victim_in_flight_at_kill: float | None
    status_counts: dict[str, int]
    by_flow: dict[str, dict[str, int]]
    bad_responses: list[dict[str, Any]]
    admitted: dict[str, float]
    admitted_by_flow: dict[str, dict[str, float]]
    refused_429: dict[str, float]
    health_p99_ms: dict[str, float]
    health_failures: dict[str, int]
    peaks: dict[str, dict[str, Any]]
    rss_growth: dict[str, float | None]
    rss_mb: dict[str, float]
    cpu_s: dict[str, float]
    client_lag_p99_ms: float
    interface_counters: dict[str, float]
    invariants: list[Invariant]

    def failed(self, *, include_speed: bool) -> list[Invariant]:
        return [i for i in self.invariants if i.passed is False and (include_speed or not i.speed)]


def _p99_ms(seconds: list[float]) -> float:
    return round(percentile([s * 1000 for s in seconds], 99), 1) if seconds else float("nan")


def _dist(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(percentile(ms, 99), 1)}


def judge(
    load: float,
    rate: float,
    run: PhaseRun,
    sla_ms: float,
    served_delta: int | None,
    probes: list[Probe],
    peaks: dict[str, Peak],
    rss_start: dict[str, int],
    rss_end: dict[str, int],
    restarted: set[str],
    counters: dict[str, float],
    cpu_s: dict[str, float],
) -> LevelResult:
    recs = run.records
    statuses = Counter("transport" if r.status is None else str(r.status) for r in recs)
    by_flow: dict[str, dict[str, int]] = {}
    for r in recs:
        row = by_flow.setdefault(r.flow, {})
        key = r.error if r.status is None else str(r.status)
        row[key or "transport"] = row.get(key or "transport", 0) + 1

    # 1. Exactly one response each.
    transport = [r for r in recs if r.status is None]
    no_echo = [r for r in recs if r.status is not None and not r.id_echoed]
    counted = "not measurable" if served_delta is None else str(served_delta)
    one_ok = not transport and not no_echo and (served_delta is None or served_delta == len(recs))
    one_value = (
        f"{len(recs) - len(transport)}/{len(recs)} answered, {run.hung} hung, "
        f"{len(no_echo)} wrong id, interface counted {counted}"
    )
    if transport:
        one_value += (
            " (" + ", ".join(f"{k} x{v}" for k, v in Counter(r.error for r in transport).items()) + ")"
        )

    # 2. Only allowed statuses; group the others for evidence.
    bad = [r for r in recs if r.status is not None and r.status not in ALLOWED]
    kill = run.kill_s
    groups: Counter[tuple[Any, ...]] = Counter()
    for r in bad:
        in_flight_at_kill = kill is not None and r.sent_s <= kill <= r.sent_s + r.latency_s
        after_kill = kill is not None and r.sent_s > kill
        when = "in flight at kill" if in_flight_at_kill else ("after kill" if after_kill else "before kill")
        groups[(r.flow, r.status, r.code, r.stage, when, r.detail)] += 1
    bad_responses = [
        {"flow": f, "status": s, "code": c, "stage": st, "when": w, "detail": d, "count": n}
        for (f, s, c, st, w, d), n in groups.most_common()
    ]
    bad_value = ", ".join(f"{s} x{n}" for s, n in Counter(r.status for r in bad).most_common()) or "none"

    # 3. 429: Retry-After on each, and fast.
    refused = [r for r in recs if r.status == 429]
    no_retry_after = [r for r in refused if not r.retry_after]
    t429 = _p99_ms([r.latency_s for r in refused])

    # 4. Admitted latency within the SLA.
    admitted = [r.latency_s for r in recs if r.status == 200]
    adm_p99 = _p99_ms(admitted)

    # 5. Peaks.
    measurable = {n: p for n, p in peaks.items() if p.peak is not None}
    over = {n: p for n, p in measurable.items() if p.peak is not None and p.peak > p.limit}
    if not measurable:
        peak_value, peak_ok = "not measurable (imgpod_http_in_flight_max absent)", None
    else:
        worst = max(measurable.items(), key=lambda kv: (kv[1].peak or 0) / kv[1].limit)
        shown = over or dict([worst])
        peak_value = ", ".join(f"{n} {p.peak:g}/{p.limit}" for n, p in shown.items())
        peak_ok = not over

    # 6. Health.
    health: dict[str, list[float]] = {}
    health_failures: Counter[str] = Counter()
    for p in probes:
        health.setdefault(p.service, []).append(p.ms / 1000)
        if p.status != 200:
            health_failures[p.service] += 1
    health_p99 = {name: _p99_ms(v) for name, v in sorted(health.items())}
    worst_health = max(health_p99.items(), key=lambda kv: kv[1], default=("none", float("nan")))

    # 7. RSS.
    growth: dict[str, float | None] = {}
    for name, before in rss_start.items():
        after = rss_end.get(name)
        growth[name] = None if name in restarted or after is None else round(after / before - 1, 4)
    judged = {n: g for n, g in growth.items() if g is not None}
    worst_rss = max(judged.items(), key=lambda kv: kv[1], default=("none", float("nan")))

    invariants = [
        Invariant("exactly one response each", one_value, "all answered, own id", one_ok),
        Invariant("statuses outside 200/4xx/429/503/504", bad_value, "none", not bad),
        Invariant(
            "429 without Retry-After", f"{len(no_retry_after)} of {len(refused)}", "0", not no_retry_after
        ),
        Invariant(
            "429 latency p99",
            f"{t429:.1f} ms (n={len(refused)})" if refused else "no 429",
            f"<= {T429_P99_LIMIT_MS:g} ms",
            None if not refused else t429 <= T429_P99_LIMIT_MS,
            speed=True,
        ),
        Invariant(
            "admitted (200) latency p99",
            f"{adm_p99:.0f} ms (n={len(admitted)})" if admitted else "no 200",
            f"<= SLA {sla_ms:g} ms",
            None if not admitted else adm_p99 <= sla_ms,
            speed=True,
        ),
        Invariant("per-worker peak in flight", peak_value, "<= advertised/setting", peak_ok),
        Invariant(
            "/healthz p99 (worst service)",
            f"{worst_health[0]} {worst_health[1]:.1f} ms",
            f"< {HEALTH_P99_LIMIT_MS:g} ms",
            None if not health_p99 else all(v < HEALTH_P99_LIMIT_MS for v in health_p99.values()),
            speed=True,
        ),
        Invariant(
            "RSS growth since warm-up (worst)",
            f"{worst_rss[0]} {worst_rss[1] * 100:+.1f} %",
            f"< {RSS_GROWTH_LIMIT * 100:g} %",
            None if not judged else all(g < RSS_GROWTH_LIMIT for g in judged.values()),
        ),
    ]
    lag = _p99_ms([r.lag_s for r in recs])
    return LevelResult(
        load=load,
        offered_per_s=round(rate, 2),
        sent=len(recs),
        wall_s=round(run.wall_s, 2),
        killed_at_s=None if kill is None else round(kill, 2),
        victim_in_flight_at_kill=run.victim_in_flight,
        status_counts=dict(statuses.most_common()),
        by_flow=by_flow,
        bad_responses=bad_responses,
        admitted=_dist(admitted),
        admitted_by_flow={
            flow: _dist([r.latency_s for r in recs if r.flow == flow and r.status == 200]) for flow in by_flow
        },
        refused_429=_dist([r.latency_s for r in refused]),
        health_p99_ms=health_p99,
        health_failures=dict(health_failures),
        peaks={n: dataclasses.asdict(p) for n, p in peaks.items()},
        rss_growth=growth,
        rss_mb={name: round(v / 2**20, 1) for name, v in rss_end.items()},
        cpu_s=cpu_s,
        client_lag_p99_ms=lag,
        interface_counters=counters,
        invariants=invariants,
    )


@dataclass(slots=True)
class SoakResult:
    capacity_per_s: float
    capacity_sample: dict[str, int]
    warmup_sample: dict[str, int]
    rss_mb: dict[str, dict[str, float]]  # after the capacity run, and at the baseline after the warm-up
    levels: list[LevelResult]
    restart_s: list[float]
    config: dict[str, Any]

    def failed(self, *, include_speed: bool) -> list[tuple[float, Invariant]]:
        return [(lv.load, inv) for lv in self.levels for inv in lv.failed(include_speed=include_speed)]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
