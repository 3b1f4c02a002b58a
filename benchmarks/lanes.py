"""Priority lanes and throttles, measured end to end against the nginx HTTP/2 sink.

    .venv/bin/python -m benchmarks.lanes [--only latency,throttle,far,drain,takes] [--bulk 1000000] [--seconds 20]
                                         [--repeat 3] [--urgent-rate 100] [--max-rate 5000] [--workers 3]
                                         [--daemon-env K=V]

latency:  urgent jobs pushed at --urgent-rate onto the urgent lane, enqueue → answer p50/p99 (receipt time minus
          enqueued_at), with nothing else queued and while --bulk jobs preloaded on the bulk lane drain
          (the issue's million: it outlasts the window here, so every urgent job meets the campaign), alternately,
          --repeat times each (medians reported; the 20 slowest jobs of each run with their send times).
throttle: max_rate = --max-rate on one app, --workers worker processes, a backlog larger than the window can
          drain; the delivered rate over the --seconds window (after a 2 s warm-up), against the cap.
far:      a campaign alone against a sink that answers 50 ms late, with and without lanes: delivered/s over
          --far-seconds (lower lanes go out a window at a time; this checks it opens up for a far gateway).
drain:    --bulk jobs alone against the loopback sink, on the bulk lane and without lanes, alternately, --repeat
          times: delivered/s over --far-seconds when no urgent job comes (lower lanes are then taken full size),
          and Redis's CPU per 10,000 jobs over that window (far reports it too).
takes:    the take path alone, no daemon: --take-jobs on the bulk lane (the lanes script) and on a queue without
          lanes (the plain take), alternately, --repeat times; taken 1,000 at a time, each batch committed as
          delivered; Redis's CPU and the jobs/s of that loop.
Prints the figures with the load average and writes benchmarks/results/lanes-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from apnsd.store.layout import Commit
from apnsd.store.queue import JobQueue, connect
from apnsd.testing.devpki import make_dev_pki
from apnsd.testing.redis_server import RedisServer
from benchmarks import workload
from benchmarks.sinks import LOCATIONS_50MS, NginxSink, proc_cpu, python_for

REPO = str(Path(__file__).resolve().parent.parent)
URGENT, BULK = f"{workload.QUEUE}:urgent", f"{workload.QUEUE}:bulk"
LANES = {"APNSD_APP_DEFAULT_LANES": "urgent,default,bulk"}


def log(msg: str) -> None:
    print(msg, flush=True)


class LaneBench:
    """One nginx sink and dev PKI shared by every scenario of the run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.python = python_for(REPO)
        self.workdir = tempfile.mkdtemp(prefix="apnsd-lanes-")
        self.pki = make_dev_pki(os.path.join(self.workdir, "pki"))
        self.nginx = NginxSink(self.workdir, self.pki).start()
        self.far_nginx: NginxSink | None = None

    def env(self, url: str, extra: dict[str, str], worker_id: str = "") -> dict[str, str]:
        return workload.daemon_env(
            url,
            os.path.join(self.workdir, "state"),
            protocol="http2",
            port=self.nginx.cert_port,
            ca_file=self.pki.ca_cert,
            cert=self.pki.client_pem,
            worker_id=worker_id,
            extra={**extra, **dict(kv.split("=", 1) for kv in self.args.daemon_env)},
        )

    # --- urgent latency with and without a campaign ----------------------------------------------

    def latency(self, bulk: int) -> dict[str, Any]:
        """Urgent jobs at the configured rate; ``bulk`` jobs on the bulk lane draining meanwhile (0: none)."""
        a = self.args
        with RedisServer() as rs:
            r = redis.Redis.from_url(rs.url)
            urgent_total = int(a.urgent_rate * a.seconds)
            env = self.env(
                rs.url,
                {
                    **LANES,
                    "APNSD_REDIS_RESULTS_STREAM": "true",
                    "APNSD_REDIS_RESULTS_MAXLEN": str(bulk + urgent_total + 10_000),
                },
            )
            child = workload.start_daemon(
                workload.DaemonSpec(f"lat-{bulk}", env, drain=False), self.python, REPO, self.workdir
            )
            try:
                warm = 200
                r.lpush(URGENT, *[workload.job(i, "W") for i in range(warm)])
                if not workload.wait_resolved(r, warm, 60, alive=lambda: not child.reap()):
                    return {"ok": False, "error": f"warm-up did not finish\n{child.stderr_tail()}"}
                if bulk:
                    workload.preload(r, bulk, "B", queue=BULK)
                    # the campaign is draining before the first urgent job is pushed
                    while workload.resolved(workload.outcomes(r)) < warm + 1000:
                        time.sleep(0.01)
                bulk_left_start = r.llen(BULK)
                load0 = os.getloadavg()[0]
                t0 = time.monotonic()
                sent = workload.load_generator(r, a.urgent_rate, a.seconds, "U", queue=URGENT)
                offered = time.monotonic() - t0
                bulk_left_end = r.llen(BULK)
                deadline = time.monotonic() + 60
                ids = set(sent)
                answered: dict[str, float] = {}
                while time.monotonic() < deadline and len(answered) < len(ids):
                    answered = self._receipts(r, ids)
                    if len(answered) < len(ids):
                        time.sleep(0.2)
                load1 = os.getloadavg()[0]
            finally:
                child.stop()
        t_first = min(sent.values()) if sent else 0.0
        worst = sorted(((answered[j] - sent[j]) * 1000, sent[j] - t_first) for j in answered)[-20:]
        lat = sorted((answered[j] - sent[j]) * 1000 for j in answered)
        return {
            "ok": len(lat) == len(sent),
            "bulk_jobs": bulk,
            "urgent_jobs": len(sent),
            "urgent_rate_offered": len(sent) / offered,
            "answered": len(lat),
            "p50_ms": workload.percentile(lat, 50) if lat else None,
            "p99_ms": workload.percentile(lat, 99) if lat else None,
            "max_ms": lat[-1] if lat else None,
            "bulk_waiting_at_start": bulk_left_start,
            "bulk_waiting_at_end": bulk_left_end,
            "bulk_drained_per_s": (bulk_left_start - bulk_left_end) / offered if bulk else 0.0,
            "load_average": [round(load0, 2), round(load1, 2)],
            "worst_ms_at_s": [(round(ms, 1), round(at, 2)) for ms, at in worst],
        }

    def _receipts(self, r: redis.Redis, ids: set[str]) -> dict[str, float]:
        """Receipt time of each urgent job answered so far (results stream)."""
        out: dict[str, float] = {}
        for _eid, fields in workload.iter_results(r):
            jid = fields.get(b"id", b"").decode()
            if jid in ids:
                out[jid] = float(fields[b"time"])
        return out

    # --- throttle -----------------------------------------------------------------------------------

    def throttle(self) -> dict[str, Any]:
        """``workers`` processes on one app with max_rate: the delivered rate over the measured window."""
        a = self.args
        backlog = int(a.max_rate * (a.seconds + 6) * 1.5)
        with RedisServer() as rs:
            r = redis.Redis.from_url(rs.url)
            workload.preload(r, backlog, "T")
            extra = {"APNSD_APP_DEFAULT_MAX_RATE": str(a.max_rate)}
            children = [
                workload.start_daemon(
                    workload.DaemonSpec(f"thr-{k}", self.env(rs.url, extra, f"bench-thr-{k}"), drain=False),
                    self.python,
                    REPO,
                    self.workdir,
                )
                for k in range(a.workers)
            ]
            try:
                while workload.resolved(workload.outcomes(r)) == 0:
                    time.sleep(0.01)
                time.sleep(2.0)  # warm-up: every worker connected and taking
                load0 = os.getloadavg()[0]
                d0, t0 = workload.resolved(workload.outcomes(r)), time.monotonic()
                time.sleep(a.seconds)
                d1, t1 = workload.resolved(workload.outcomes(r)), time.monotonic()
                load1 = os.getloadavg()[0]
                left = r.llen(workload.QUEUE)
                dead = workload.outcomes(r).get("dead", 0)
            finally:
                for c in children:
                    c.stop()
        rate = (d1 - d0) / (t1 - t0)
        return {
            "ok": left > 0 and dead == 0,
            "max_rate": a.max_rate,
            "workers": a.workers,
            "window_s": round(t1 - t0, 3),
            "delivered_in_window": d1 - d0,
            "rate": rate,
            "deviation": rate / a.max_rate - 1,
            "still_queued": left,
            "dead": dead,
            "load_average": [round(load0, 2), round(load1, 2)],
        }

    # --- campaign throughput against a far gateway ------------------------------------------------

    def far(self, lanes: bool, near: bool = False) -> dict[str, Any]:
        """Bulk-only drain against a sink answering 50 ms late (``near``: the loopback sink, --bulk jobs), with or
        without lanes: delivered/s over the window.

        Lower lanes go out a window at a time; this shows whether that window opens up far enough when the
        gateway, not the worker, is what takes time.
        """
        a = self.args
        if self.far_nginx is None and not near:
            self.far_nginx = NginxSink(os.path.join(self.workdir, "far"), self.pki, LOCATIONS_50MS).start()
        sink = self.nginx if near else self.far_nginx
        assert sink is not None
        with RedisServer() as rs:
            r = redis.Redis.from_url(rs.url)
            queue = BULK if lanes else workload.QUEUE
            workload.preload(r, a.bulk if near else a.far_jobs, "F", queue=queue)
            env = self.env(rs.url, LANES if lanes else {})
            env["APNSD_APP_DEFAULT_PORT"] = str(sink.cert_port)
            child = workload.start_daemon(
                workload.DaemonSpec(f"far-{lanes}-{near}", env, drain=False), self.python, REPO, self.workdir
            )
            try:
                while workload.resolved(workload.outcomes(r)) == 0:
                    time.sleep(0.01)
                time.sleep(2.0)
                assert rs.proc
                d0, t0, cpu0 = workload.resolved(workload.outcomes(r)), time.monotonic(), proc_cpu(rs.proc.pid)
                time.sleep(a.far_seconds)
                d1, t1, cpu1 = workload.resolved(workload.outcomes(r)), time.monotonic(), proc_cpu(rs.proc.pid)
                left = r.llen(queue)
            finally:
                child.stop()
        load = round(os.getloadavg()[0], 2)
        # Redis's CPU over the window per 10,000 jobs resolved in it: the take, the commits and the harness's polls
        redis_cpu = (cpu1 - cpu0) / max(1, d1 - d0) * 10_000
        rate = (d1 - d0) / (t1 - t0)
        return {
            "lanes": lanes,
            "rate": rate,
            "redis_cpu_per_10k": redis_cpu,
            "still_queued": left,
            "ok": left > 0,
            "load": load,
        }

    def takes(self, lanes: bool) -> dict[str, Any]:
        """--take-jobs taken from the bulk lane (``lanes``) or a plain queue and committed, by this process."""
        n, lane_keys = self.args.take_jobs, [URGENT, workload.QUEUE, BULK]
        with RedisServer() as rs:
            assert rs.proc
            jq = JobQueue(connect(rs.url), "apnsd", "bench-takes")
            workload.preload(jq.client, n, "K", queue=BULK if lanes else workload.QUEUE)  # type: ignore[arg-type]
            cpu0, t0, taken = proc_cpu(rs.proc.pid), time.perf_counter(), 0
            while True:
                batch_id = jq.next_batch_id()
                if lanes:
                    lane, jobs, _ = jq.take_lanes(workload.QUEUE, lane_keys, 1000, batch_id, 0, (0.0, [0.0] * 3))
                    key = lane_keys[lane]
                else:
                    key, (_, jobs) = workload.QUEUE, jq.take(workload.QUEUE, 1000, batch_id)
                if not jobs:
                    break
                taken += len(jobs)
                jq.commit(Commit(key, batch_id))
            cpu, wall = proc_cpu(rs.proc.pid) - cpu0, time.perf_counter() - t0
        return {
            "lanes": lanes,
            "jobs": taken,
            "rate": taken / wall,
            "redis_cpu_per_10k": cpu / n * 10_000,
            "ok": taken == n,
        }

    def close(self) -> None:
        """Stop the sinks by their PIDs and remove the work directory (PKI, nginx files, daemon state)."""
        self.nginx.stop()
        if self.far_nginx is not None:
            self.far_nginx.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="latency,throttle,far")
    p.add_argument("--far-jobs", type=int, default=300_000, help="far: bulk jobs preloaded")
    p.add_argument("--far-seconds", type=float, default=10.0, help="far: measured window")
    p.add_argument("--take-jobs", type=int, default=500_000, help="takes: jobs taken per run")
    p.add_argument("--bulk", type=int, default=1_000_000, help="campaign jobs preloaded on the bulk lane")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window of each scenario")
    p.add_argument("--urgent-rate", type=float, default=100.0)
    p.add_argument("--max-rate", type=float, default=5000.0)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3, help="latency: alternating runs without and with the campaign")
    p.add_argument("--daemon-env", action="append", default=[], help="extra APNSD_*=value for every daemon")
    p.add_argument("--results-dir", default=os.path.join(REPO, "benchmarks", "results"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = args.only.split(",")
    report: dict[str, Any] = {"args": vars(args), "cpus": os.cpu_count(), "load_average_start": os.getloadavg()}
    bench = LaneBench(args)
    try:
        if "latency" in only:
            runs: dict[str, list[dict[str, Any]]] = {"quiet": [], "campaign": []}
            for _ in range(args.repeat):  # alternated, so that both see the same spells of machine load
                runs["quiet"].append(bench.latency(0))
                log(f"urgent @{args.urgent_rate:g}/s, no campaign: {runs['quiet'][-1]}")
                runs["campaign"].append(bench.latency(args.bulk))
                log(f"urgent @{args.urgent_rate:g}/s, {args.bulk:,} bulk draining: {runs['campaign'][-1]}")
            report["latency"] = runs
            med = {
                name: {q: statistics.median(r[q] for r in rs if r.get(q) is not None) for q in ("p50_ms", "p99_ms")}
                for name, rs in runs.items()
            }
            report["latency_medians"] = med
            ratio = med["campaign"]["p99_ms"] / med["quiet"]["p99_ms"]
            per_run = {
                name: [round(r["p99_ms"], 1) for r in rs if r.get("p99_ms") is not None] for name, rs in runs.items()
            }
            log(
                f"medians of {args.repeat}: p99 with campaign {med['campaign']['p99_ms']:.1f} ms vs "
                f"{med['quiet']['p99_ms']:.1f} ms without (×{ratio:.2f}; targets ≤ ×2 and ≤ 50 ms); "
                f"p50 {med['campaign']['p50_ms']:.1f} vs {med['quiet']['p50_ms']:.1f} ms; per run p99: "
                f"{per_run['campaign']} vs {per_run['quiet']}; campaign drained "
                f"{[round(r['bulk_drained_per_s']) for r in runs['campaign']]}/s, still queued at the end "
                f"{[r['bulk_waiting_at_end'] for r in runs['campaign']]} (0: it ended inside the window)"
            )
        if "far" in only:
            report["far"] = [bench.far(lanes) for lanes in (False, True)]
            log(
                "bulk against a 50 ms gateway: "
                + ", ".join(f"{'with' if f['lanes'] else 'without'} lanes {f['rate']:.0f}/s" for f in report["far"])
            )
        if "drain" in only:
            report["drain"] = [bench.far(lanes, near=True) for _ in range(args.repeat) for lanes in (True, False)]
            log(
                "campaign alone on the loopback sink, delivered/s (Redis CPU s per 10k jobs): "
                + ", ".join(
                    f"{'bulk lane' if f['lanes'] else 'no lanes'} {f['rate']:.0f} ({f['redis_cpu_per_10k']:.3f})"
                    for f in report["drain"]
                )
            )
        if "takes" in only:
            report["takes"] = [bench.takes(lanes) for _ in range(args.repeat) for lanes in (True, False)]
            log(
                f"{args.take_jobs:,} jobs taken and committed, no daemon, jobs/s (Redis CPU s per 10k jobs): "
                + ", ".join(
                    f"{'bulk lane' if f['lanes'] else 'no lanes'} {f['rate']:.0f} ({f['redis_cpu_per_10k']:.4f})"
                    for f in report["takes"]
                )
            )
        if "throttle" in only:
            thr = bench.throttle()
            report["throttle"] = thr
            log(
                f"max_rate {args.max_rate:g} with {args.workers} workers: {thr['rate']:.0f}/s over "
                f"{thr['window_s']:.1f} s ({thr['deviation'] * 100:+.2f} %), {thr['still_queued']:,} still queued, "
                f"{thr['dead']} dead"
            )
    finally:
        bench.close()
    report["load_average_end"] = os.getloadavg()
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, f"lanes-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json")
    Path(path).write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"results: {os.path.relpath(path, REPO)}")
    ok = all(r.get("ok") for rs in report.get("latency", {}).values() for r in rs)
    ok = ok and all(f["ok"] for f in report.get("far", []) + report.get("drain", []) + report.get("takes", []))
    return 0 if ok and report.get("throttle", {}).get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
