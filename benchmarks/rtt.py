"""Real round-trip times: apnsd, h2load and @parse/node-apn against nginx answering each request after a delay.

On loopback an answer comes back in microseconds; Apple is 20–150 ms away. There, one connection's rate is
bounded by ``max_streams / round trip`` (1,000 streams at 50 ms = 20,000/s), and what decides the rate is
whether every stream slot is refilled the moment it frees, and whether more connections add linearly.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

from apnsd.testing.redis_server import RedisServer
from benchmarks import ceilings, peers, workload

STREAMS = 1000  # nginx's http2_max_concurrent_streams, as APNs announces
# Answers come in waves, one per round trip per connection: a run of a few waves cannot be measured to a few
# per cent whatever the method, so a run lasts at least this many round trips (8 s at 500 ms).
MIN_ROUND_TRIPS = 16


def bound(connections: int, delay: float, streams: int = STREAMS) -> float:
    """The most any sender can do: every stream of every connection busy, each for one round trip."""
    return connections * streams / delay


def jobs_for(limit: float, seconds: float, lowest: int, highest: int) -> int:
    """Enough jobs to keep a sender at `limit`/s busy for `seconds`, within [lowest, highest], in thousands."""
    return int(max(lowest, min(highest, limit * seconds)) // 1000 * 1000)


def apnsd_run(bench: Any, port: int, connections: int, jobs: int) -> dict[str, Any]:
    """One apnsd process, certificate auth, `connections` TLS connections, draining `jobs` preloaded jobs."""
    with RedisServer() as rs:
        env = workload.daemon_env(
            rs.url,
            os.path.join(bench.workdir, "state"),
            protocol="http2",
            port=port,
            ca_file=bench.pki.ca_cert,
            cert=bench.pki.client_pem,
            extra={"APNSD_APP_DEFAULT_CONNECTIONS": str(connections), **bench.args.daemon_env},
        )
        spec = workload.DaemonSpec(f"rtt-c{connections}", env)
        return bench._drain(rs, [spec], lambda: bench.nginx.connections(port), nginx=True, jobs=jobs)


def measure(bench: Any, delay: float, connections: int, tag: str) -> dict[str, Any]:
    """apnsd, h2load and (when installed) @parse/node-apn at one delay and connection count, side by side."""
    a = bench.args
    port = bench.nginx.delayed_port[delay]
    limit = bound(connections, delay)
    jobs = jobs_for(limit, max(a.rtt_seconds, MIN_ROUND_TRIPS * delay), 5_000, a.rtt_max_jobs)
    h2 = ceilings.run_h2load(port, jobs, bench.workdir, connections=connections, streams=STREAMS)
    res = apnsd_run(bench, port, connections, jobs)
    out: dict[str, Any] = {
        "delay_ms": round(delay * 1000),
        "connections": connections,
        "bound": limit,
        "jobs": jobs,
        "apnsd": res,
        "apnsd_rate": res.get("middle_rate") or res["rate"],
        "h2load": h2,
    }
    out["ratio_bound"] = out["apnsd_rate"] / limit
    out["ratio_h2load"] = out["apnsd_rate"] / h2["rate"] if h2["rate"] else None
    peer = ""
    if a.peers and peers.available("@parse/node-apn"):
        # node-apn sends a few thousand per second here: size its run for that, so the figure stays in minutes
        count = jobs_for(min(limit, 3_000), a.rtt_seconds, 2_000, a.rtt_max_jobs)
        try:
            out["node_apn"] = peers.node_apn_http2(port, count, connections, bench.pki)
            peer = f"; @parse/node-apn {out['node_apn']['rate']:,.0f}/s"
        except (RuntimeError, OSError) as exc:
            out["node_apn"] = {"error": str(exc)[:1000]}
            peer = "; @parse/node-apn FAILED"
    dup = res.get("sink_requests", jobs) - jobs
    bench.log_line(
        f"{tag} rtt {out['delay_ms']} ms × {connections} conn: apnsd {out['apnsd_rate']:,.0f}/s "
        f"({out['ratio_bound']:.2f} of bound {limit:,.0f}/s; CPU {res['cpu_per_10k']:.2f} s/10k; "
        f"busy: apnsd {res['cpu_seconds'] / res['seconds']:.0%}, "
        f"nginx {res.get('sink_cpu_seconds', 0) / res['seconds']:.0%} of a core; "
        f"apnsd waited for a CPU {res.get('cpu_wait_seconds', 0) / res['seconds']:.0%} of the run; "
        f"handshakes {res['handshakes']}); h2load {h2['rate']:,.0f}/s{peer}"
        + (f"; sink saw {dup:+,} requests beyond the jobs" if dup else "")
        + ("" if res["ok"] else "  FAILED: " + res.get("error", "")[:1500])
    )
    return out


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (delay, connections): medians over repeats, plus the scaling against one connection."""
    cells: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r["delay_ms"], r["connections"]), []).append(r)

    def med(xs: list[float | None]) -> float | None:
        vals = [x for x in xs if x is not None]
        return statistics.median(vals) if vals else None

    rows = []
    for (delay_ms, conns), rs in sorted(cells.items()):
        good = [r for r in rs if r["apnsd"]["ok"]]
        rows.append(
            {
                "delay_ms": delay_ms,
                "connections": conns,
                "bound": rs[0]["bound"],
                "apnsd": med([r["apnsd_rate"] for r in good]),
                "h2load": med([r["h2load"]["rate"] for r in rs]),
                "h2load_cpu_per_10k": med([r["h2load"].get("cpu_per_10k") for r in rs]),
                "node_apn": med([r.get("node_apn", {}).get("rate") for r in rs]),
                "node_apn_cpu_per_10k": med([r.get("node_apn", {}).get("cpu_per_10k") for r in rs]),
                "ratio_bound": med([r["ratio_bound"] for r in good]),
                "ratio_h2load": med([r["ratio_h2load"] for r in good]),
                "cpu_per_10k": med([r["apnsd"]["cpu_per_10k"] for r in good]),
                # share of the run apnsd was runnable but had no CPU: high on a shared, busy machine
                "cpu_wait_share": med([r["apnsd"].get("cpu_wait_seconds", 0) / r["apnsd"]["seconds"] for r in good]),
                "failed_runs": len(rs) - len(good),
            }
        )
    one = {r["delay_ms"]: r["apnsd"] for r in rows if r["connections"] == 1}
    for r in rows:
        base = one.get(r["delay_ms"])
        r["x_one"] = r["apnsd"] / base if r["apnsd"] and base else None
    return rows


def render(rows: list[dict[str, Any]]) -> list[str]:
    """The table: every apnsd figure beside its bound and h2load's rate against the same sink."""

    def f(v: float | None, fmt: str = "{:,.0f}") -> str:
        return fmt.format(v) if v is not None else "n/a"

    hdr = (
        f"{'round trip':>10} {'conns':>5} {'bound/s':>9} {'apnsd/s':>9} {'of bound':>8} {'× 1 conn':>8} "
        f"{'h2load/s':>9} {'of h2load':>9} {'node-apn/s':>10} {'CPU s/10k':>9} {'CPU wait':>8}"
    )
    lines = [hdr, "-" * len(hdr)]
    # bound = connections × 1,000 streams / round trip; apnsd = jobs answered after the first answer over the time
    # from then to the last; h2load = its own req/s (first round trip included); CPU wait = runnable, no CPU
    for r in rows:
        lines.append(
            f"{r['delay_ms']:>7} ms {r['connections']:>5} {f(r['bound']):>9} {f(r['apnsd']):>9} "
            f"{f(r['ratio_bound'], '{:.2f}'):>8} {f(r['x_one'], '{:.2f}'):>8} {f(r['h2load']):>9} "
            f"{f(r['ratio_h2load'], '{:.2f}'):>9} {f(r['node_apn']):>10} {f(r['cpu_per_10k'], '{:.2f}'):>9} "
            f"{f(r['cpu_wait_share'], '{:.0%}'):>8}" + (f"  ({r['failed_runs']} failed)" if r["failed_runs"] else "")
        )
    return lines
