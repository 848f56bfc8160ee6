"""Interface overhead: ``/v1/imagegen`` through the interface vs the upstream's ``/v1/generate`` directly.

Two upstreams:

- ``--upstream tiny`` (default): one tiny Z-Image worker on CPU (64x64, 1 step, so the model cost is small
  and the overhead shows), the interface in front of it.
- ``--upstream echo``: ``bench/echo_worker.py``, a real HTTP server that answers a fixed GenerateResponse
  after no work: the latency-measurement upstream for rates (300 req/s) that any model on a CPU would
  saturate. It measures what the interface adds per proxied call, not a model.

Closed loop: ``--calls`` sequential calls to each, interleaved, in the same run (median and p99). Open loop:
fixed request rates for ``--seconds`` each (a bounded count), direct and through the interface alternated for
``--rounds`` rounds, printed side by side with the added latency (interface minus direct) and the CPU time
per request of the interface process (psutil on its pid) and of the upstream.

    python -m bench.bench_interface_overhead [--calls 200] [--rates 2,5,10] [--seconds 4]
    python -m bench.bench_interface_overhead --upstream echo --calls 300 --rates 300 --seconds 5 --rounds 4 \
        --label before                                                 # about a minute
    python -m bench.bench_interface_overhead --compare before after   # a before/after table of two runs

``--server`` picks how the interface process is started (``bench/server_variants.py``; the upstream always
runs on the default launcher): ``guarded`` (default: ``python -m shared.serve``, uvicorn with the edge
bounds), ``uvicorn`` (plain uvicorn, httptools, uvloop: the launch before the bounds) or ``granian`` (Granian,
ASGI, one worker, uvloop, the bounds it has). The interface's CPU is that of its whole process tree (Granian
serves from a child process). The side by side of issue 19::

    python -m bench.bench_interface_overhead --upstream echo --calls 300 --rates 300 --seconds 5 --rounds 4 \
        --server uvicorn --label srv-uvicorn                           # then --server guarded / granian
    python -m bench.bench_interface_overhead --compare srv-uvicorn srv-guarded

Several servers, comma separated, start one interface each in front of the same upstream and measure them in
one run, their segments interleaved (the order rotates every round), so a machine that gets slower or busier
during the run weighs on all of them alike; separate runs on a small shared VM differ by more than the
servers do. One file per server, ``<label>-<server>``, so ``--compare`` works on them as on any run::

    python -m bench.bench_interface_overhead --upstream echo --calls 300 --rates 300 --seconds 5 --rounds 8 \
        --server uvicorn,guarded,granian --label side                  # about three minutes
    python -m bench.bench_interface_overhead --compare side-uvicorn side-guarded

The load generator is a lean keep-alive client (``bench.common.RawHttpClient``), so at 300 req/s it takes
~0.15 ms of CPU per call instead of httpx's 2-7 ms, and leaves the cores to the servers it measures. On a
small shared machine, check the ``others`` column (cores other processes kept busy during each path): a p99
measured while they took a core says more about them than about the interface.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from typing import Any

import httpx

from bench.common import (
    RESULTS_DIR,
    CpuMeter,
    Outcome,
    RawHttpClient,
    open_loop,
    percentile,
    print_table,
    run_async,
    summary_ms,
    tiny_model_dir,
    write_results,
)
from bench.server_variants import SERVERS, ProcessTreeCpuMeter
from bench.stack import AUTH, echo_and_interfaces, worker_and_interfaces

BODY = {"prompt": "a lighthouse on a cliff", "width": 64, "height": 64, "steps": 1, "seed": 7}
NAME = "bench_interface_overhead"
Meter = CpuMeter | ProcessTreeCpuMeter


def closed_loop(direct: str, vias: dict[str, str], calls: int) -> dict[str, dict[str, Any]]:
    """``calls`` sequential calls to the upstream and to each interface (keyed by server), interleaved call
    by call in a rotating order; one result per interface, all against the same direct calls."""
    paths = [("direct", direct, AUTH), *((server, url, {}) for server, url in vias.items())]
    lat: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    with httpx.Client(timeout=60) as http:
        for _ in range(5):  # warm connections and code paths
            for _, url, headers in paths:
                http.post(url, json=BODY, headers=headers)
        for n in range(calls):
            k = n % len(paths)
            for name, url, headers in paths[k:] + paths[:k]:
                started = time.perf_counter()
                resp = http.post(url, json=BODY, headers=headers)
                lat[name].append(time.perf_counter() - started)
                resp.raise_for_status()
    d = summary_ms(lat["direct"])
    out = {}
    for server in vias:
        i = summary_ms(lat[server])
        out[server] = {
            "direct": d,
            "interface": i,
            "added_p50_ms": round(i["p50_ms"] - d["p50_ms"], 2),
            "added_p99_ms": round(i["p99_ms"] - d["p99_ms"], 2),
        }
    return out


async def _rate_run(
    url: str, headers: dict[str, str], rate: float, count: int, meters: dict[str, Meter], warmup: int
) -> tuple[list[Outcome], float, dict[str, float]]:
    # A lean client, so the load generator leaves the cores to the servers; its keep-alive pool grows to
    # what the rate needs during the warm-up calls.
    client = RawHttpClient(url, json.dumps(BODY).encode(), headers)
    try:
        if warmup:
            await open_loop(client.call, rate, warmup)
        for meter in meters.values():
            meter.start()
        outcomes, wall = await open_loop(client.call, rate, count)
        cpu = {name: meter.stop() for name, meter in meters.items()}
    finally:
        await client.aclose()
    return outcomes, wall, cpu


def interface_meter(server: str) -> str:
    return f"interface:{server}"


def rate_rows(
    direct: str,
    vias: dict[str, str],
    rate: float,
    count: int,
    rounds: int,
    meters: dict[str, Meter],
    warmup: int,
) -> dict[str, dict[str, Any]]:
    """``rounds`` segments of ``count`` calls at ``rate`` to the upstream and to each interface (keyed by
    server), the order rotated every round (one interface: direct and interface alternate which goes first).
    One row per interface, all against the same direct segments; ``meters`` holds ``interface:<server>``
    for each, and its own is reported as ``interface``."""
    paths = [("direct", direct, AUTH), *((server, url, {}) for server, url in vias.items())]
    runs: dict[str, dict[str, Any]] = {
        name: {"outcomes": [], "wall": 0.0, "cpu": dict.fromkeys(meters, 0.0)} for name, _, _ in paths
    }
    for r in range(rounds):
        k = r % len(paths)
        for path, url, headers in paths[k:] + paths[:k]:
            outcomes, wall, cpu = run_async(_rate_run(url, headers, rate, count, meters, warmup))
            run = runs[path]
            run["outcomes"] += outcomes
            run["wall"] += wall
            for key, v in cpu.items():
                run["cpu"][key] += v
            time.sleep(0.3)
    summaries: dict[str, dict[str, Any]] = {}
    for path, run in runs.items():
        outcomes: list[Outcome] = run["outcomes"]
        ok = [o.seconds for o in outcomes if o.status == 200]
        summaries[path] = {
            **summary_ms(ok),
            "errors": sum(o.status != 200 for o in outcomes),
            "error_kinds": dict(Counter(str(o.status or o.error) for o in outcomes if o.status != 200)),
            "achieved_per_s": round(len(outcomes) / run["wall"], 1),
            "client_lag_p99_ms": round(percentile([o.lag * 1000 for o in outcomes], 99), 2),
            "cpu_ms_per_req": {k: round(v * 1000 / len(outcomes), 3) for k, v in run["cpu"].items()},
            # Cores kept busy by everything else on the machine while this path was measured: noise.
            "other_cores_busy": round(
                (run["cpu"]["machine"] - sum(v for k, v in run["cpu"].items() if k != "machine"))
                / run["wall"],
                2,
            ),
        }

    def own(summary: dict[str, Any], server: str) -> dict[str, Any]:
        """The summary with this server's interface meter as ``interface`` and the others' left out."""
        mine = interface_meter(server)
        cpu = {
            ("interface" if k == mine else k): v
            for k, v in summary["cpu_ms_per_req"].items()
            if k == mine or not k.startswith("interface:")
        }
        return {**summary, "cpu_ms_per_req": cpu}

    rows = {}
    for server in vias:
        row: dict[str, Any] = {"rate_per_s": rate, "count": count * rounds, "rounds": rounds}
        row["direct"] = own(summaries["direct"], server)
        row["interface"] = own(summaries[server], server)
        row["added_p50_ms"] = round(row["interface"]["p50_ms"] - row["direct"]["p50_ms"], 2)
        row["added_p99_ms"] = round(row["interface"]["p99_ms"] - row["direct"]["p99_ms"], 2)
        rows[server] = row
    return rows


def print_results(
    upstream: str, calls: int, closed: dict[str, Any] | None, rows: list[dict[str, Any]], server: str
) -> None:
    if closed is not None:
        print_table(
            f"Closed loop ({upstream}, interface on {server}), {calls} sequential calls each (interleaved),"
            " 64x64, 1 step",
            ["path", "n", "p50 ms", "p99 ms", "mean ms"],
            [
                [name, s["n"], s["p50_ms"], s["p99_ms"], s["mean_ms"]]
                for name, s in (("direct", closed["direct"]), ("interface", closed["interface"]))
            ]
            + [["added", "", closed["added_p50_ms"], closed["added_p99_ms"], ""]],
        )
    print_table(
        f"Open loop ({upstream}, interface on {server}), fixed rates: direct vs through the interface"
        " (CPU: ms per request)",
        [
            "req/s",
            "n",
            "direct p50",
            "direct p99",
            "iface p50",
            "iface p99",
            "added p50",
            "added p99",
            "iface CPU",
            "upstream CPU",
            "lag p99 d",
            "lag p99 i",
            "others",
            "errors",
        ],
        [
            [
                r["rate_per_s"],
                r["count"],
                r["direct"]["p50_ms"],
                r["direct"]["p99_ms"],
                r["interface"]["p50_ms"],
                r["interface"]["p99_ms"],
                r["added_p50_ms"],
                r["added_p99_ms"],
                r["interface"]["cpu_ms_per_req"].get("interface", float("nan")),
                r["direct"]["cpu_ms_per_req"].get("upstream", float("nan")),
                r["direct"]["client_lag_p99_ms"],
                r["interface"]["client_lag_p99_ms"],
                f"{r['direct']['other_cores_busy']}/{r['interface']['other_cores_busy']}",
                r["direct"]["errors"] + r["interface"]["errors"],
            ]
            for r in rows
        ],
    )
    print(
        "  added = interface minus direct; iface CPU = interface process CPU per proxied call; upstream CPU ="
        " upstream CPU per direct call;\n  lag p99 d/i = how late the load generator sent its calls (its own"
        " delay) in the direct / interface runs;\n  others = cores kept busy by other processes on the"
        " machine (direct/interface runs): noise"
    )


def compare(before: str, after: str) -> None:
    """Side by side: the open-loop rows of two labelled runs (``--label``), matched by rate."""

    def load(label: str) -> dict[str, Any]:
        path = RESULTS_DIR / f"{NAME}-{label}.json"
        return json.loads(path.read_text())

    b, a = load(before), load(after)
    rows = []
    for rb in b["open_loop"]:
        ra = next((r for r in a["open_loop"] if r["rate_per_s"] == rb["rate_per_s"]), None)
        if ra is None:
            continue
        for metric, get in (
            ("direct p50 ms", lambda r: r["direct"]["p50_ms"]),
            ("direct p99 ms", lambda r: r["direct"]["p99_ms"]),
            ("iface p50 ms", lambda r: r["interface"]["p50_ms"]),
            ("iface p99 ms", lambda r: r["interface"]["p99_ms"]),
            ("added p50 ms", lambda r: r["added_p50_ms"]),
            ("added p99 ms", lambda r: r["added_p99_ms"]),
            ("iface CPU ms/req", lambda r: r["interface"]["cpu_ms_per_req"]["interface"]),
            ("upstream CPU ms/req", lambda r: r["direct"]["cpu_ms_per_req"]["upstream"]),
        ):
            vb, va = get(rb), get(ra)
            rows.append([rb["rate_per_s"], metric, vb, va, round(va - vb, 2)])
    print_table(
        f"Before ({before}, {b.get('upstream')}, {b.get('server', 'guarded?')}) vs after ({after},"
        f" {a.get('upstream')}, {a.get('server', 'guarded?')})",
        ["req/s", "metric", before, after, "change"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", choices=("tiny", "echo"), default="tiny")
    parser.add_argument("--calls", type=int, default=200, help="closed-loop calls each way (0: skip)")
    parser.add_argument(
        "--rates", default=None, help="open-loop req/s, comma separated (tiny: 2,5,10; echo: 300)"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per open-loop segment (4; echo 5)"
    )
    parser.add_argument("--max-count", type=int, default=20_000, help="cap on calls per segment")
    parser.add_argument(
        "--rounds", type=int, default=None, help="direct/interface segments per rate (1; echo 4)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured calls before each segment")
    parser.add_argument(
        "--server",
        default="guarded",
        help=f"how the interface is started ({', '.join(SERVERS)}; bench/server_variants.py), the upstream"
        " stays on the default; several, comma separated: one interface each, measured interleaved",
    )
    parser.add_argument("--label", default=None, help="also write bench/results/<name>-<label>.json")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="print two labelled runs")
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    servers = list(dict.fromkeys(x.strip() for x in args.server.split(",") if x.strip()))
    if not servers or any(x not in SERVERS for x in servers):
        parser.error(f"--server: one or more of {', '.join(SERVERS)}, comma separated")
    echo = args.upstream == "echo"
    rates = [float(r) for r in (args.rates or ("300" if echo else "2,5,10")).split(",")]
    seconds = args.seconds if args.seconds is not None else (5.0 if echo else 4.0)
    rounds = args.rounds or (4 if echo else 1)

    stack = echo_and_interfaces(servers) if echo else worker_and_interfaces(tiny_model_dir(), servers)
    load_before = os.getloadavg()
    with stack as (worker, apis):
        direct = worker.url + "/v1/generate"
        vias = {server: api.url + "/v1/imagegen" for server, api in apis.items()}
        # The interface's whole process tree: Granian serves from a child of the process started here.
        iface_meters = {
            server: ProcessTreeCpuMeter(api.proc.pid)  # type: ignore[union-attr]
            for server, api in apis.items()
        }
        meters: dict[str, Meter] = {
            **{interface_meter(server): m for server, m in iface_meters.items()},
            "upstream": CpuMeter(worker.proc.pid),  # type: ignore[union-attr]
            "bench": CpuMeter(os.getpid()),
            "machine": CpuMeter(None),
        }
        interface_pids = {server: m.pids() for server, m in iface_meters.items()}
        commands = {server: api.command() for server, api in apis.items()}
        closed = closed_loop(direct, vias, args.calls) if args.calls > 0 else None
        open_rows: dict[str, list[dict[str, Any]]] = {server: [] for server in servers}
        for rate in rates:
            count = min(args.max_count, max(1, int(rate * seconds)))
            warmup = args.warmup if args.warmup is not None else min(count, int(rate))
            for server, row in rate_rows(direct, vias, rate, count, rounds, meters, warmup).items():
                open_rows[server].append(row)

    for server in servers:
        print_results(
            args.upstream, args.calls, closed[server] if closed else None, open_rows[server], server
        )
    if len(servers) > 1:
        print_table(
            f"Side by side ({args.upstream}), measured interleaved: what each server adds per proxied call",
            ["server", "req/s", "added p50", "added p99", "iface CPU", "others", "errors"],
            [
                [
                    server,
                    r["rate_per_s"],
                    r["added_p50_ms"],
                    r["added_p99_ms"],
                    r["interface"]["cpu_ms_per_req"]["interface"],
                    r["interface"]["other_cores_busy"],
                    r["interface"]["errors"],
                ]
                for server in servers
                for r in open_rows[server]
            ],
        )
    load = [round(v, 2) for v in (*load_before, *os.getloadavg())]
    print(
        f"  machine load average (1/5/15 min) before: {load[:3]}, after: {load[3:]}, cores: {os.cpu_count()}"
    )
    for server in servers:
        data = {
            "upstream": args.upstream,
            "server": server,
            "interface_command": commands[server],
            "interface_processes": len(interface_pids[server]),
            # Servers measured in the same run, their segments interleaved (this one included).
            "interleaved_with": servers,
            "body": BODY,
            "closed_loop": closed[server] if closed else None,
            "open_loop": open_rows[server],
            "loadavg_before_after": load,
        }
        # Several servers: one file each, the server's name after the label.
        suffix = f"-{server}" if len(servers) > 1 else ""
        if args.label:
            write_results(f"{NAME}-{args.label}{suffix}", data)
        elif suffix:
            write_results(f"{NAME}-{args.upstream}{suffix}", data)
        else:  # bench_all reads the tiny run's closed loop from the plain name
            write_results(NAME if args.upstream == "tiny" else f"{NAME}-echo", data)


if __name__ == "__main__":
    main()
