"""apnsd benchmarks: end-to-end notifications/s from Redis to gateway answer, beside raw ceilings from the same run.

    .venv/bin/python -m benchmarks.run [--jobs 200000] [--repeat 3] [--quick]
                [--only http2-cert,http2-token,http2-2proc,binary,binary-2proc,binary-errors,latency,memory,rtt]
                [--procs-jobs 600000] [--rtt-delays 10,50,100,500] [--rtt-connections 1,2,4,8]

Sinks: nginx (HTTP/2 over TLS, client certificate required on one port, not on another) and a counting
binary TLS sink (or the project's mock), all child processes on free loopback ports, stopped by PID.
Prints a table (figure, ceiling, ratio) and writes benchmarks/results/<UTC timestamp>.json and latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from apnsd.testing.devpki import BUNDLE_ID, make_dev_pki
from apnsd.testing.redis_server import RedisServer
from benchmarks import ceilings, chart, peers, procs, rtt, workload
from benchmarks.sinks import CountingBinarySink, MockBinarySink, NginxSink, proc_cpu, python_for

REPO = str(Path(__file__).resolve().parent.parent)
FIGURES = (
    "http2-cert",
    "http2-token",
    "http2-2proc",
    "binary",
    "binary-2proc",
    "binary-errors",
    "latency",
    "memory",
    "memory-binary",
    "rtt",
)
ERROR_EVERY = 100  # binary-errors: 1 % of tokens invalid
HTTP2 = ("http2-cert", "http2-token", "http2-2proc")


def log(msg: str) -> None:
    print(msg, flush=True)


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --- machine -------------------------------------------------------------------------------------


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "unavailable"


def machine_info(python: str, nginx: NginxSink | None) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass
    commit = _cmd(["git", "-C", REPO, "rev-parse", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", REPO, "status", "--porcelain", "--", "apnsd"], capture_output=True, text=True
    ).stdout
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total": mem,
        "kernel": platform.release(),
        "python": _cmd([python, "-c", "import sys; print(sys.version.split()[0])"]),
        "redis": _cmd(["redis-server", "--version"]),
        "nginx": nginx.version() if nginx else _cmd(["nginx", "-v"]),
        "h2load": ceilings.h2load_version() if shutil.which("h2load") else "unavailable",
        "apnsd_commit": commit,
        "apnsd_tree_dirty": bool(dirty.strip()),
        "apnsd_dirty_files": [line[3:] for line in dirty.splitlines()],
    }


# --- the bench -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n = args.jobs
        self.python = python_for(REPO)
        self.workdir = tempfile.mkdtemp(prefix="apnsd-bench-")
        self.pki = make_dev_pki(os.path.join(self.workdir, "pki"))
        self.token = (self.pki.p8_key, self.pki.key_id, self.pki.team_id, BUNDLE_ID)
        self.nginx: NginxSink | None = None
        self.binsink: CountingBinarySink | None = None
        self.errsink: CountingBinarySink | None = None
        self.csink: CountingBinarySink | None = None  # binary-2proc: the C counting sink
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.ceil: dict[str, list[dict[str, Any]]] = {}
        self.notes: list[str] = []
        self.binary_sink_choice: dict[str, Any] = {}
        self.error_sink_used = ""
        self._frames: tuple[bytes, int] | None = None
        self.rtt_runs: list[dict[str, Any]] = []

    def log_line(self, msg: str) -> None:
        log(msg)

    def add(self, table: dict[str, list[dict[str, Any]]], name: str, value: dict[str, Any]) -> None:
        table.setdefault(name, []).append(value)

    # --- HTTP/2 ----------------------------------------------------------------------------------

    def h2load(self, connections: int) -> dict[str, Any]:
        assert self.nginx
        requests = max(self.n, self.args.min_ceiling_requests)
        before = self.nginx.connections(self.nginx.open_port)
        res = ceilings.run_h2load(self.nginx.open_port, requests, self.workdir, connections=connections)
        res["handshakes"] = self.nginx.connections(self.nginx.open_port) - before
        return res

    def http2_drain(self, name: str, processes: int, token_auth: bool) -> dict[str, Any]:
        assert self.nginx
        port = self.nginx.open_port if token_auth else self.nginx.cert_port
        specs = []
        with RedisServer() as rs:
            for k in range(processes):
                env = workload.daemon_env(
                    rs.url,
                    os.path.join(self.workdir, "state"),
                    protocol="http2",
                    port=port,
                    ca_file=self.pki.ca_cert,
                    cert="" if token_auth else self.pki.client_pem,
                    token=self.token if token_auth else None,
                    worker_id=f"bench-{name}-{k}" if processes > 1 else "",
                    extra=self.args.daemon_env,
                )
                specs.append(workload.DaemonSpec(f"{name}-{k}", env))
            return self._drain(rs, specs, lambda: self.nginx.connections(port), nginx=True)

    def _drain(
        self,
        rs: RedisServer,
        specs: list[workload.DaemonSpec],
        handshakes: Any,
        nginx: bool = False,
        jobs: int | None = None,
        sample_memory: bool = False,
        bad_every: int = 0,
        sink: CountingBinarySink | None = None,
    ) -> dict[str, Any]:
        n = jobs or self.n
        r = redis.Redis.from_url(rs.url)
        load_s = workload.preload(r, n, bad_every=bad_every)
        before = handshakes()
        counters0 = self.nginx.counters() if nginx and self.nginx else (0, 0)
        cpu0 = self.nginx.cpu() if nginx and self.nginx else 0.0
        # around the drain only (not the preload): where the machine's cores went besides the daemons
        assert rs.proc
        redis_cpu0, sink_cpu0 = proc_cpu(rs.proc.pid), sink.cpu() if sink else 0.0
        harness0 = time.process_time()
        res = workload.drain(
            r,
            n,
            specs,
            self.python,
            REPO,
            self.workdir,
            stall_timeout=self.args.stall_timeout,
            sample_memory=sample_memory,
            invalid=n // bad_every if bad_every else 0,
        )
        redis_cpu = proc_cpu(rs.proc.pid) - redis_cpu0
        harness_cpu = time.process_time() - harness0
        out: dict[str, Any] = {
            "jobs": n,
            "ok": res.ok,
            "rate": res.rate,
            "steady_rate": res.steady_rate,
            "answer_rate": res.answer_rate(),
            "middle_rate": res.middle_rate(),
            "seconds": res.seconds,
            "exit_seconds": res.exit_seconds,
            "cpu_seconds": res.cpu,
            "cpu_per_10k": res.cpu / n * 10_000,
            "cpu_user": sum(c.cpu_user for c in res.children),
            "cpu_sys": sum(c.cpu_sys for c in res.children),
            "cpu_wait_seconds": sum(c.cpu_wait for c in res.children),
            "redis_cpu_seconds": redis_cpu,
            "redis_cpu_per_10k": redis_cpu / n * 10_000,
            "harness_cpu_seconds": harness_cpu,
            "peak_rss_mb": max(c.hwm_kb for c in res.children) / 1024,
            "ru_maxrss_kb": max(c.maxrss_kb for c in res.children),  # polluted by the fork image: not reported
            "handshakes": handshakes() - before,
            "stats": res.stats,
            "exit_codes": [c.status for c in res.children],
            "stalled": res.stalled,
            "preload_seconds": load_s,
            "processes": len(specs),
        }
        if nginx and self.nginx:
            accepts, requests = self.nginx.counters()
            # minus the stub_status query itself (one connection, one request)
            out["tcp_connections"] = accepts - counters0[0] - 1
            out["sink_requests"] = requests - counters0[1] - 1
            out["sink_cpu_seconds"] = self.nginx.cpu() - cpu0
        if sink:
            out["sink_cpu_seconds"] = sink.cpu() - sink_cpu0
        if sample_memory:
            out["_samples"] = res.samples
        if not res.ok:
            tails = "\n".join(f"--- {c.spec.name} (exit {c.status}):\n{c.stderr_tail()}" for c in res.children)
            out["error"] = f"stats={res.stats} stalled={res.stalled} exit={out['exit_codes']}\n{tails}"
        return out

    # --- binary ----------------------------------------------------------------------------------

    def frames(self) -> tuple[bytes, int]:
        if self._frames is None:
            count = min(100_000, max(self.n, self.args.min_ceiling_requests))
            self._frames = (ceilings.prebuilt_frames(count), count)
        return self._frames

    def binary_raw(self, port: int) -> dict[str, Any]:
        """Raw ceiling; against the counting sink, also check that it counted every frame."""
        block, count = self.frames()
        frames = max(self.n, self.args.min_ceiling_requests * 4)
        counting = self.binsink is not None and port == self.binsink.port
        before = self.binsink.connections() if counting and self.binsink else 0
        res = ceilings.raw_binary_ceiling(port, self.pki, frames, block, count)
        if counting and self.binsink:
            res["sink_frames"] = self.binsink.wait_closed(before)["frames"]
            if res["sink_frames"] != frames:
                raise RuntimeError(f"counting sink saw {res['sink_frames']} frames of {frames}")
        return res

    def measure_mock_intake(self) -> dict[str, Any]:
        """How fast the project's mock (separate process) can read raw frames, vs the counting sink."""
        mock = MockBinarySink(REPO, self.python, self.pki.dir)
        try:
            block, count = self.frames()
            res = ceilings.raw_binary_ceiling(
                mock.port, self.pki, min(200_000, max(self.n, 100_000)), block, count, timeout=300
            )
        finally:
            res_summary = mock.summary()
        res["mock_summary"] = res_summary
        return res

    def _binary_env(self, redis_url: str, port: int) -> dict[str, str]:
        """The daemon's environment for a binary app sending to a sink on ``port``."""
        return workload.daemon_env(
            redis_url,
            os.path.join(self.workdir, "state"),
            protocol="binary",
            port=port,
            ca_file=self.pki.ca_cert,
            cert=self.pki.client_pem,
            extra=self.args.daemon_env,
        )

    def binary_drain(self) -> dict[str, Any]:
        with RedisServer() as rs:
            if self.binary_sink_choice.get("used") == "mock":
                mock = MockBinarySink(REPO, self.python, self.pki.dir)
                env = self._binary_env(rs.url, mock.port)
                try:
                    out = self._drain(rs, [workload.DaemonSpec("binary", env)], lambda: 0)
                finally:
                    summary = mock.summary()
                out["handshakes"] = summary.get("connections")
                out["sink_summary"] = summary
                return out
            assert self.binsink
            sink = self.binsink
            env = self._binary_env(rs.url, sink.port)
            return self._drain(rs, [workload.DaemonSpec("binary", env)], sink.connections, sink=sink)

    def binary_errors_drain(self, bad_every: int) -> dict[str, Any]:
        """Binary into the sink that rejects invalid tokens as APNs did (status 8, then an immediate close),
        with every ``bad_every``-th token invalid (0: none, the error-free figure of the same run)."""
        assert self.errsink
        sink = self.errsink
        with RedisServer() as rs:
            env = self._binary_env(rs.url, sink.port)
            seen = sink.connections()
            out = self._drain(
                rs, [workload.DaemonSpec("binary", env)], sink.connections, bad_every=bad_every, sink=sink
            )
            out["resumed"] = sum(1 for e in sink.events("connected")[seen:] if e.get("resumed"))
        out["invalid_tokens"] = self.n // bad_every if bad_every else 0
        return out

    # --- latency ---------------------------------------------------------------------------------

    def latency(self) -> dict[str, Any]:
        assert self.nginx
        rate, seconds = self.args.latency_rate, self.args.latency_seconds
        total = int(rate * seconds)
        port = self.nginx.cert_port
        with RedisServer() as rs:
            r = redis.Redis.from_url(rs.url)
            env = workload.daemon_env(
                rs.url,
                os.path.join(self.workdir, "state"),
                protocol="http2",
                port=port,
                ca_file=self.pki.ca_cert,
                cert=self.pki.client_pem,
                extra={
                    "APNSD_REDIS_RESULTS_STREAM": "true",
                    "APNSD_REDIS_RESULTS_MAXLEN": str(total + 10_000),
                    **self.args.daemon_env,
                },
            )
            before = self.nginx.connections(port)
            child = workload.start_daemon(
                workload.DaemonSpec("latency", env, drain=False), self.python, REPO, self.workdir
            )
            try:
                warm = 200
                r.lpush(workload.QUEUE, *[workload.job(i, "W") for i in range(warm)])
                if not workload.wait_resolved(r, warm, self.args.stall_timeout, alive=lambda: not child.reap()):
                    return {
                        "ok": False,
                        "error": f"warm-up did not finish: {workload.outcomes(r)}\n{child.stderr_tail()}",
                    }
                last = r.xrevrange(workload.RESULTS, count=1)
                watcher = workload.ResultsWatcher(rs.url, last[0][0] if last else "0-0")
                watcher.start()
                t0 = time.monotonic()
                sent = workload.load_generator(r, rate, seconds)
                offered_s = time.monotonic() - t0
                finished = workload.wait_resolved(
                    r, warm + len(sent), self.args.stall_timeout, alive=lambda: not child.reap()
                )
                time.sleep(0.3)
                watcher.stop()
            finally:
                child.stop()
            lat: list[float] = []
            vis: list[float] = []
            outcomes: dict[str, int] = {}
            for _id, fields in workload.iter_results(r):
                jid = fields.get(b"id", b"").decode()
                if jid in sent:
                    kind = fields.get(b"outcome", b"").decode()
                    outcomes[kind] = outcomes.get(kind, 0) + 1
                    lat.append(float(fields[b"time"]) - sent[jid])
                    if jid in watcher.seen:
                        vis.append(watcher.seen[jid] - sent[jid])
            stats = workload.outcomes(r)
        out: dict[str, Any] = {
            "ok": finished and len(lat) == len(sent),
            "offered_rate": rate,
            "seconds": seconds,
            "jobs": len(sent),
            "achieved_offer_rate": len(sent) / offered_s,
            "answered": len(lat),
            "outcomes": outcomes,
            "stats": stats,
            "handshakes": self.nginx.connections(port) - before,
            "cpu_seconds": child.cpu_user + child.cpu_sys,
        }
        if lat:
            ms = [x * 1000 for x in lat]
            out.update(
                {
                    "p50_ms": workload.percentile(ms, 50),
                    "p90_ms": workload.percentile(ms, 90),
                    "p99_ms": workload.percentile(ms, 99),
                    "max_ms": max(ms),
                    "min_ms": min(ms),
                    "mean_ms": statistics.fmean(ms),
                }
            )
        if vis:
            ms = [x * 1000 for x in vis]
            out.update(
                {
                    "visible_count": len(vis),
                    "visible_p50_ms": workload.percentile(ms, 50),
                    "visible_p99_ms": workload.percentile(ms, 99),
                    "visible_max_ms": max(ms),
                }
            )
        if not out["ok"]:
            out["error"] = f"answered {len(lat)} of {len(sent)}; stats={stats}\n{child.stderr_tail()}"
        return out

    # --- memory ----------------------------------------------------------------------------------

    def memory(self, protocol: str = "http2") -> dict[str, Any]:
        m = self.args.memory_jobs
        if protocol == "http2":
            assert self.nginx
            nginx = self.nginx
            port = nginx.cert_port
            handshakes = lambda: nginx.connections(port)  # noqa: E731
        else:
            assert self.binsink
            port, handshakes = self.binsink.port, self.binsink.connections
        with RedisServer() as rs:
            env = workload.daemon_env(
                rs.url,
                os.path.join(self.workdir, "state"),
                protocol=protocol,
                port=port,
                ca_file=self.pki.ca_cert,
                cert=self.pki.client_pem,
                extra=self.args.daemon_env,
            )
            out = self._drain(
                rs,
                [workload.DaemonSpec(f"memory-{protocol}", env)],
                handshakes,
                nginx=protocol == "http2",
                jobs=m,
                sample_memory=True,
            )
        samples = out.pop("_samples")
        marks: dict[str, float | None] = {}
        for pct in (25, 50, 75):
            hit = next((s for s in samples if s[1] >= m * pct / 100 and s[2]), None)
            marks[f"rss_{pct}_mb"] = hit[2] / 1024 if hit else None
        live = [s[2] for s in samples if s[2]]
        out.update(marks)
        out["rss_first_mb"] = live[0] / 1024 if live else None
        out["rss_max_sampled_mb"] = max(live) / 1024 if live else None
        out["samples"] = len(samples)
        return out

    # --- orchestration ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a = self.args
        only = a.only
        need_nginx = any(f in only for f in (*HTTP2, "latency", "memory", "rtt"))
        started = time.time()
        load_start = os.getloadavg()
        if load_start[0] > (os.cpu_count() or 1):
            self.notes.append(
                f"machine busy at start: load average {load_start[0]:.1f} on {os.cpu_count()} CPUs "
                "(other processes compete with the daemon and the sinks: expect wide run-to-run spread)"
            )
        try:
            if need_nginx:
                delays = tuple(d / 1000 for d in a.rtt_delays) if "rtt" in only else ()
                self.nginx = NginxSink(self.workdir, self.pki, delays).start()
                log(
                    f"nginx sink: pid {self.nginx.proc.pid}, client-cert port {self.nginx.cert_port}, "
                    f"no-client-cert port {self.nginx.open_port}"
                )
                if "latency" in only:
                    self.notes.append(
                        "latency = receipt 'time' (apnsd:results, recorded when the daemon processes the "
                        "gateway's answer, millisecond resolution) minus the job's enqueued_at "
                        "(time.time() at LPUSH); 'visible in Redis' = when the harness's XREAD BLOCK on "
                        "apnsd:results saw the "
                        "receipt (µs clock; includes the batch's commit). Arrivals: one LPUSH per job, "
                        "evenly spaced with random jitter inside each slot; 200 warm-up jobs first, not counted."
                    )
                if not ceilings.h2load_can_present_client_cert():
                    self.notes.append(
                        f"h2load ({ceilings.h2load_version().split()[-1]}) has no client-certificate option: "
                        "the HTTP/2 ceiling runs "
                        "against nginx's server block without client verification (same nginx, same "
                        "locations); the cert-auth figure runs against the block that requires one."
                    )
            if "binary" in only or "memory-binary" in only:
                self.binsink = CountingBinarySink(REPO, self.python, self.pki.dir)
                log(f"binary counting sink: pid {self.binsink.pid}, port {self.binsink.port}")
            if "binary" in only:
                self.choose_binary_sink()
            if "binary-2proc" in only:
                self.csink = CountingBinarySink(REPO, self.python, self.pki.dir, native=True)
                if "binsink.py" in self.csink.name:
                    self.notes.append(
                        "binary-2proc: the C sink (benchmarks/binsink.c) could not be built (gcc, libssl-dev: "
                        "benchmarks/setup.sh); the Python sink's own CPU competes with the daemons for the cores"
                    )
                log(f"binary-2proc sink: {self.csink.name}, pid {self.csink.pid}, port {self.csink.port}")
            if "binary-errors" in only:
                native = a.error_sink == "c"
                self.errsink = CountingBinarySink(
                    REPO, self.python, self.pki.dir, fail_prefix=workload.BAD_PREFIX, native=native
                )
                self.error_sink_used = self.errsink.name
                if native and "binsink.py" in self.errsink.name:
                    self.notes.append(
                        "binary-errors: the C sink (benchmarks/binsink.c) could not be built (gcc, libssl-dev: "
                        "benchmarks/setup.sh); the Python sink answered instead, and its own CPU per connection "
                        "weighs on the 1 % invalid figure"
                    )
                log(
                    f"binary error-answering sink: {self.errsink.name}, pid {self.errsink.pid}, "
                    f"port {self.errsink.port}"
                )
            for rep in range(a.repeat):
                tag = f"[{rep + 1}/{a.repeat}]"
                if any(f in only for f in HTTP2):
                    c = self.h2load(1)
                    self.add(self.ceil, "h2load-c1", c)
                    log(
                        f"{tag} ceiling h2load -c1 -m1000: {c['rate']:,.0f} req/s "
                        f"({c['succeeded']:,}/{c['requests']:,} ok)"
                    )
                for name, nprocs, token in (
                    ("http2-cert", 1, False),
                    ("http2-token", 1, True),
                    ("http2-2proc", 2, False),
                ):
                    if name not in only:
                        continue
                    if nprocs == 2:
                        c = self.h2load(2)
                        self.add(self.ceil, "h2load-c2", c)
                        log(f"{tag} ceiling h2load -c2 -m1000: {c['rate']:,.0f} req/s")
                    res = self.http2_drain(name, nprocs, token)
                    self.add(self.runs, name, res)
                    self.report_drain(tag, name, res)
                if "binary" in only:
                    if self.binary_sink_choice.get("used") == "mock":
                        mock = MockBinarySink(REPO, self.python, self.pki.dir)
                        try:
                            c = self.binary_raw(mock.port)
                        finally:
                            mock.summary()
                    else:
                        assert self.binsink
                        c = self.binary_raw(self.binsink.port)
                    self.add(self.ceil, "binary-raw", c)
                    log(f"{tag} ceiling raw binary frames: {c['rate']:,.0f} frames/s ({c['frames']:,} frames)")
                    res = self.binary_drain()
                    self.add(self.runs, "binary", res)
                    self.report_drain(tag, "binary", res)
                    if a.peers and peers.available("apn") and self.binsink:
                        p = peers.node_apn_binary(self.binsink.port, min(self.n, a.peer_jobs), self.pki)
                        self.add(self.ceil, "apn-1.7", p)
                        log(
                            f"{tag} peer node apn 1.7 (binary, from memory): {p['rate']:,.0f} notif/s "
                            f"({p['sent']:,} written), CPU {p['cpu_per_10k']:.2f} s/10k"
                        )
                if "binary-2proc" in only:
                    one, two = procs.measure(self, tag)
                    self.add(self.runs, "binary-2proc-1", one)
                    self.add(self.runs, "binary-2proc", two)
                if "binary-errors" in only:
                    clean = self.binary_errors_drain(0)
                    self.add(self.runs, "binary-errors-clean", clean)
                    self.report_drain(tag, "binary, error-answering sink, no invalid tokens", clean)
                    res = self.binary_errors_drain(ERROR_EVERY)
                    self.add(self.runs, "binary-errors", res)
                    self.report_drain(tag, f"binary, 1 in {ERROR_EVERY} tokens invalid", res)
                    if clean["ok"] and res["ok"]:
                        log(f"{tag} 1 % invalid / error-free: {res['rate'] / clean['rate']:.2f}")
                if "latency" in only:
                    res = self.latency()
                    self.add(self.runs, "latency", res)
                    if "p50_ms" in res:
                        log(
                            f"{tag} latency @{a.latency_rate:g}/s for {a.latency_seconds:g} s: "
                            f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, max {res['max_ms']:.1f} ms "
                            f"({res['answered']:,} answered); visible in Redis: "
                            f"p50 {res.get('visible_p50_ms', 0):.2f} ms, p99 {res.get('visible_p99_ms', 0):.1f} ms"
                            + ("" if res["ok"] else "  FAILED: " + res.get("error", "")[:500])
                        )
                    else:
                        log(f"{tag} latency FAILED: {res.get('error', '')[:1000]}")
            if "rtt" in only:
                for rep in range(a.rtt_repeat):
                    for d in a.rtt_delays:
                        for conns in a.rtt_connections:
                            self.rtt_runs.append(rtt.measure(self, d / 1000, conns, f"[{rep + 1}/{a.rtt_repeat}]"))
            for name, protocol in (("memory", "http2"), ("memory-binary", "binary")):
                if name not in only:
                    continue
                res = self.memory(protocol)
                self.add(self.runs, name, res)
                log(
                    f"{name}: {a.memory_jobs:,} jobs ({protocol}): peak RSS {res['peak_rss_mb']:.1f} MB; "
                    "RSS at 25/50/75%: "
                    + " / ".join(_mb(res.get(f"rss_{p}_mb")) for p in (25, 50, 75))
                    + f"; {res['rate']:,.0f} notif/s, CPU {res['cpu_per_10k']:.2f} s/10k"
                    + ("" if res["ok"] else "  FAILED: " + res.get("error", "")[:1000])
                )
        finally:
            info = machine_info(self.python, self.nginx)
            info["loadavg_start"] = [round(x, 2) for x in load_start]
            info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
            if self.binsink:
                self.binsink.stop()
            if self.errsink:
                self.errsink.stop()
            if self.csink:
                self.csink.stop()
            if self.nginx:
                self.nginx.stop()
            if not a.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                log(f"work directory kept: {self.workdir}")
        return {
            "started_utc": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "duration_seconds": round(time.time() - started, 1),
            "machine": info,
            "args": dict(vars(a).items()),
            "binary_sink": self.binary_sink_choice,
            "error_sink": self.error_sink_used,
            "notes": self.notes,
            "ceilings": self.ceil,
            "runs": self.runs,
            "rtt": self.rtt_runs,
        }

    def choose_binary_sink(self) -> None:
        """Measure the project's mock's raw intake beside the counting sink's; use the mock only if it keeps up."""
        assert self.binsink
        choice: dict[str, Any] = {"requested": self.args.binary_sink}
        counting = self.binary_raw(self.binsink.port)
        choice["counting_sink_raw_rate"] = counting["rate"]
        if self.args.binary_sink in ("auto", "mock"):
            mock = self.measure_mock_intake()
            choice["mock_raw_rate"] = mock["rate"]
            choice["mock_summary"] = mock.get("mock_summary")
            log(
                f"binary sink intake (raw writer, one connection): mock {mock['rate']:,.0f} frames/s, "
                f"counting sink {counting['rate']:,.0f} frames/s"
            )
        if self.args.binary_sink == "mock" or (
            self.args.binary_sink == "auto" and choice["mock_raw_rate"] >= 0.9 * counting["rate"]
        ):
            choice["used"] = "mock"
            choice["why"] = "requested" if self.args.binary_sink == "mock" else "the mock keeps up with the raw writer"
        else:
            choice["used"] = "counting"
            choice["why"] = (
                "requested"
                if self.args.binary_sink == "count"
                else f"the mock reads {choice['mock_raw_rate']:,.0f} frames/s, under the raw writer's "
                f"{counting['rate']:,.0f}/s into the counting sink: it would cap the ceiling"
            )
        self.binary_sink_choice = choice
        log(f"binary sink used: {choice['used']} ({choice['why']})")

    def report_drain(self, tag: str, name: str, res: dict[str, Any]) -> None:
        steady = f", steady {res['steady_rate']:,.0f}/s" if res.get("steady_rate") else ""
        log(
            f"{tag} {name}: {res['rate']:,.0f} notif/s ({res['jobs']:,} in {res['seconds']:.2f} s{steady}), "
            f"CPU {res['cpu_per_10k']:.2f} s/10k, handshakes {res['handshakes']}"
            + (f", Redis CPU {res['redis_cpu_seconds']:.2f} s" if "redis_cpu_seconds" in res else "")
            + (f", sink CPU {res['sink_cpu_seconds']:.2f} s" if "sink_cpu_seconds" in res else "")
            + (f", resumed {res['resumed']}" if "resumed" in res else "")
            + ("" if res["ok"] else "  FAILED: " + res.get("error", "")[:1500])
        )


def _mb(v: float | None) -> str:
    return f"{v:.1f} MB" if v is not None else "n/a"


# --- summary -------------------------------------------------------------------------------------


LABELS = {
    "http2-cert": "HTTP/2, certificate auth, 1 process",
    "http2-token": "HTTP/2, token (JWT) auth, 1 process",
    "http2-2proc": "HTTP/2, certificate auth, 2 processes",
    "binary": "binary, certificate auth, 1 process",
}
CEILING_OF = {"http2-cert": "h2load-c1", "http2-token": "h2load-c1", "http2-2proc": "h2load-c2", "binary": "binary-raw"}


def summarize(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    runs, ceil = report["runs"], report["ceilings"]
    for name in ("http2-cert", "http2-token", "http2-2proc", "binary"):
        if name not in runs:
            continue
        rs = runs[name]
        good = [r for r in rs if r["ok"]]
        cs = ceil.get(CEILING_OF[name], [])
        value = median([r["rate"] for r in good])
        ceiling = median([c["rate"] for c in cs])
        ratios = (
            [r["rate"] / c["rate"] for r, c in zip(rs, cs, strict=False) if r["ok"] and c["rate"]]
            if len(cs) == len(rs)
            else []
        )
        rows.append(
            {
                "figure": name,
                "label": LABELS[name],
                "unit": "notifications/s",
                "value": value,
                "runs": [round(r["rate"]) for r in rs],
                "failed_runs": len(rs) - len(good),
                "steady_rate": median([r.get("steady_rate") for r in good]),
                "ceiling": ceiling,
                "ceiling_name": CEILING_OF[name],
                "ceiling_runs": [round(c["rate"]) for c in cs],
                "ceiling_cpu_per_10k": median([c.get("cpu_per_10k") for c in cs]),
                "ratio": median(ratios) if ratios else (value / ceiling if value and ceiling else None),
                "cpu_per_10k": median([r["cpu_per_10k"] for r in good]),
                "handshakes": sorted({r["handshakes"] for r in rs}),
                # requests the sink answered beyond one per job: a job delivered twice shows here
                "extra_requests": max(
                    (r["sink_requests"] - r["jobs"] for r in rs if "sink_requests" in r), default=None
                ),
            }
        )
    by = {r["figure"]: r for r in rows}
    if "http2-2proc" in by and "http2-cert" in by and by["http2-cert"]["value"] and by["http2-2proc"]["value"]:
        by["http2-2proc"]["x_one_process"] = by["http2-2proc"]["value"] / by["http2-cert"]["value"]
    if "http2-2proc" in by:
        by["http2-2proc"]["sink_bound"] = procs.sink_bound(
            ceil.get("h2load-c1", []), ceil.get("h2load-c2", []), runs["http2-2proc"]
        )
    if "binary-2proc" in runs:
        rows.append(procs.summarize(runs.get("binary-2proc-1", []), runs["binary-2proc"]))
    apn = ceil.get("apn-1.7", [])
    if "binary" in by and apn:
        b = by["binary"]
        b["answer_rate"] = median([r.get("answer_rate") for r in runs["binary"] if r["ok"]])
        b["peer"] = {
            "name": "node apn 1.7 (from memory)",
            "rate": median([p["rate"] for p in apn]),
            "cpu_per_10k": median([p["cpu_per_10k"] for p in apn]),
        }
        if b["answer_rate"] and b["peer"]["rate"]:
            b["x_peer"] = b["answer_rate"] / b["peer"]["rate"]
    if "binary-errors" in runs:
        rs, cs = runs["binary-errors"], runs.get("binary-errors-clean", [])
        good = [r for r in rs if r["ok"]]
        ratios = [r["rate"] / c["rate"] for r, c in zip(rs, cs, strict=False) if r["ok"] and c["ok"] and c["rate"]]
        rows.append(
            {
                "figure": "binary-errors",
                "label": f"binary, 1 in {ERROR_EVERY} tokens invalid",
                "unit": "notifications/s",
                "value": median([r["rate"] for r in good]),
                "runs": [round(r["rate"]) for r in rs],
                "failed_runs": len(rs) - len(good) + sum(1 for c in cs if not c["ok"]),
                "ceiling": median([c["rate"] for c in cs if c["ok"]]),
                "ceiling_runs": [round(c["rate"]) for c in cs],
                "ratio": median(ratios) if ratios else None,
                "cpu_per_10k": median([r["cpu_per_10k"] for r in good]),
                "handshakes": sorted({r["handshakes"] for r in rs}),
            }
        )
    if "latency" in runs:
        good = [r for r in runs["latency"] if r.get("ok")]
        rows.append(
            {
                "figure": "latency",
                "label": f"latency @ {report['args']['latency_rate']:g}/s, enqueue→answer",
                "p50_ms": median([r["p50_ms"] for r in good]),
                "p99_ms": median([r["p99_ms"] for r in good]),
                "max_ms": median([r["max_ms"] for r in good]),
                "visible_p50_ms": median([r.get("visible_p50_ms") for r in good]),
                "visible_p99_ms": median([r.get("visible_p99_ms") for r in good]),
                "runs_p99_ms": [round(r.get("p99_ms", 0), 1) for r in runs["latency"]],
                "failed_runs": len(runs["latency"]) - len(good),
                "handshakes": sorted({r.get("handshakes") for r in runs["latency"]}),
            }
        )
    for name, proto in (("memory", "HTTP/2"), ("memory-binary", "binary")):
        if name not in runs:
            continue
        m = runs[name][0]
        rows.append(
            {
                "figure": name,
                "label": f"peak RSS draining {m['jobs']:,} jobs ({proto})",
                "cpu_per_10k": m["cpu_per_10k"],
                "peak_rss_mb": m["peak_rss_mb"],
                "rss_25_mb": m.get("rss_25_mb"),
                "rss_50_mb": m.get("rss_50_mb"),
                "rss_75_mb": m.get("rss_75_mb"),
                "rate": m["rate"],
                "ok": m["ok"],
                "handshakes": [m["handshakes"]],
            }
        )
    return rows


def render(rows: list[dict[str, Any]], report: dict[str, Any]) -> str:
    lines = []
    hdr = f"{'figure':<42} {'value':>18} {'ceiling':>22} {'ratio':>6} {'CPU s/10k':>9} {'TLS conns':>9}"
    lines += [hdr, "-" * len(hdr)]
    for r in rows:
        if r["figure"] in LABELS:
            val = f"{r['value']:,.0f}/s" if r["value"] else "FAILED"
            cname = {"h2load-c1": "h2load c1", "h2load-c2": "h2load c2", "binary-raw": "raw frames"}[r["ceiling_name"]]
            ceiling = f"{r['ceiling']:,.0f}/s {cname}" if r["ceiling"] else "n/a"
            ratio = f"{r['ratio']:.2f}" if r["ratio"] else "n/a"
            cpu = f"{r['cpu_per_10k']:.2f}" if r["cpu_per_10k"] is not None else "n/a"
            hs = ",".join(str(h) for h in r["handshakes"])
            lines.append(f"{r['label']:<42} {val:>18} {ceiling:>22} {ratio:>6} {cpu:>9} {hs:>9}")
            if r.get("x_one_process"):
                lines.append(
                    f"{'  … 2 processes ÷ 1 process (same run)':<42} {r['x_one_process']:>17.2f}×"
                    f"   sink answered {r['extra_requests']} request(s) beyond one per job"
                )
            sb = r.get("sink_bound")
            if sb and sb["h2load_c2_over_c1"] and sb["nginx_cpu_per_daemon_cpu"]:
                lines.append(
                    f"{'  … sink-bound: h2load -c2 ÷ -c1':<42} {sb['h2load_c2_over_c1']:>17.2f}×"
                    f"   nginx CPU ÷ daemons' CPU {sb['nginx_cpu_per_daemon_cpu']:.2f} (2 cores in all)"
                )
            if r.get("peer"):
                pr = r["peer"]
                lines.append(
                    f"{'  … steady (first → last outcome)':<42} {r['answer_rate'] or 0:>16,.0f}/s "
                    f"{pr['rate']:>15,.0f}/s {pr['name'].split(' (')[0]} {r.get('x_peer') or 0:>5.2f}× "
                    f"{pr['cpu_per_10k']:>8.2f}"
                )
        elif r["figure"] == "binary-2proc":
            lines += procs.render(r)
        elif r["figure"] == "binary-errors":
            val = f"{r['value']:,.0f}/s" if r["value"] else "FAILED"
            ceiling = f"{r['ceiling']:,.0f}/s error-free" if r["ceiling"] else "n/a"
            ratio = f"{r['ratio']:.2f}" if r["ratio"] else "n/a"
            cpu = f"{r['cpu_per_10k']:.2f}" if r["cpu_per_10k"] is not None else "n/a"
            hs = f"{min(r['handshakes'])}-{max(r['handshakes'])}"
            lines.append(f"{r['label']:<42} {val:>18} {ceiling:>22} {ratio:>6} {cpu:>9} {hs:>9}")
        elif r["figure"] == "latency":
            val = (
                f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms"
                if r["p50_ms"] is not None
                else "FAILED"
            )
            lines.append(f"{r['label']:<42} {val}   (TLS conns {','.join(str(h) for h in r['handshakes'])})")
            if r.get("visible_p50_ms") is not None:
                lines.append(
                    f"{'  … outcome visible in Redis (XREAD)':<42} p50 {r['visible_p50_ms']:.1f} ms, "
                    f"p99 {r['visible_p99_ms']:.1f} ms"
                )
        elif r["figure"] in ("memory", "memory-binary"):
            val = (
                f"{r['peak_rss_mb']:.1f} MB peak; at 25/50/75%: "
                + " / ".join(_mb(r.get(f"rss_{p}_mb")) for p in (25, 50, 75))
                + f"; CPU {r['cpu_per_10k']:.2f} s/10k"
                + ("" if r["ok"] else "  (FAILED)")
            )
            lines.append(f"{r['label']:<42} {val}")
    lines.append("")
    lines.append(
        "value = median of runs (notifications/s from daemon start to the last outcome in Redis); ceiling = "
        "median raw rate into the same sink in the same session; ratio = median of per-repeat ratios. "
        "binary-errors: beside the error-free rate into the same error-answering sink in the same repeat."
    )
    for r in rows:
        if "runs" in r:
            lines.append(
                f"  {r['figure']}: runs {r['runs']}  ceiling runs {r['ceiling_runs']}"
                + (f"  steady {r['steady_rate']:,.0f}/s" if r.get("steady_rate") else "")
                + (f"  ceiling CPU {r['ceiling_cpu_per_10k']:.2f} s/10k" if r.get("ceiling_cpu_per_10k") else "")
                + (f"  ({r['failed_runs']} failed)" if r["failed_runs"] else "")
            )
    bs = report.get("binary_sink")
    if bs:
        lines.append(f"  binary sink: {bs.get('used')} — {bs.get('why')}")
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=None, help="jobs per end-to-end run (default 200,000; --quick 20,000)")
    p.add_argument("--only", default=",".join(FIGURES), help=f"comma list of: {', '.join(FIGURES)}")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (medians are reported)")
    p.add_argument(
        "--procs-jobs",
        type=int,
        default=None,
        help="binary-2proc: jobs per run, 1 and 2 processes alike (default 600,000: seconds of steady state; "
        "--quick 60,000)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 20,000 jobs, 5 s latency, 100,000-job memory run")
    p.add_argument("--latency-seconds", type=float, default=None, help="steady-load duration (default 30; --quick 5)")
    p.add_argument("--latency-rate", type=float, default=1000.0, help="offered jobs/s in the latency run")
    p.add_argument(
        "--memory-jobs", type=int, default=None, help="backlog for the memory run (default 1,000,000; --quick 100,000)"
    )
    p.add_argument(
        "--binary-sink",
        choices=["auto", "count", "mock"],
        default="auto",
        help="auto: measure the project's mock's intake and use it only if it keeps up with raw writes",
    )
    p.add_argument(
        "--error-sink",
        choices=["c", "python"],
        default="c",
        help="binary-errors: the error-answering sink (c: benchmarks/binsink.c, built when first used; python)",
    )
    p.add_argument(
        "--min-ceiling-requests", type=int, default=50_000, help="at least this many requests per ceiling run"
    )
    p.add_argument("--stall-timeout", type=float, default=60.0, help="give up a run after this long without progress")
    p.add_argument(
        "--daemon-env", action="append", default=[], metavar="APNSD_X=V", help="extra daemon setting (repeatable)"
    )
    p.add_argument(
        "--rtt-delays",
        default="10,50,100,500",
        help="rtt: round-trip delays of the sink, in ms (500: bounds low enough that CPU is not the limit)",
    )
    p.add_argument("--rtt-connections", default="1,2,4,8", help="rtt: connection counts")
    p.add_argument("--rtt-repeat", type=int, default=1, help="rtt: runs per cell (16 cells by default: ~5 min each)")
    p.add_argument(
        "--rtt-seconds", type=float, default=None, help="rtt: jobs per run = bound × this (default 3; --quick 1.5)"
    )
    p.add_argument("--rtt-max-jobs", type=int, default=None, help="rtt: at most this many jobs per run (200,000)")
    p.add_argument("--peer-jobs", type=int, default=50_000, help="at most this many notifications per peer run")
    p.add_argument("--no-peers", dest="peers", action="store_false", help="skip the npm peers (node-apn, apn 1.7)")
    p.add_argument("--results-dir", default=os.path.join(REPO, "benchmarks", "results"))
    p.add_argument("--no-save", action="store_true", help="print only, write no results file")
    p.add_argument("--keep-workdir", action="store_true")
    a = p.parse_args(argv)
    a.jobs = a.jobs or (20_000 if a.quick else 200_000)
    a.procs_jobs = a.procs_jobs or (60_000 if a.quick else 600_000)
    a.latency_seconds = a.latency_seconds or (5.0 if a.quick else 30.0)
    a.memory_jobs = a.memory_jobs or (100_000 if a.quick else 1_000_000)
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    a.rtt_seconds = a.rtt_seconds or (1.5 if a.quick else 3.0)
    a.rtt_max_jobs = a.rtt_max_jobs or (50_000 if a.quick else 200_000)
    try:
        a.rtt_delays = [int(x) for x in a.rtt_delays.split(",") if x.strip()]
        a.rtt_connections = [int(x) for x in a.rtt_connections.split(",") if x.strip()]
    except ValueError:
        p.error("--rtt-delays / --rtt-connections: comma-separated whole numbers")
    if not all(1 <= d <= 10_000 for d in a.rtt_delays) or not all(1 <= c <= 16 for c in a.rtt_connections):
        p.error("--rtt-delays: 1–10,000 ms; --rtt-connections: 1–16 (apnsd's limit per app)")
    bad = [x for x in a.only if x not in FIGURES]
    if bad:
        p.error(f"--only: unknown {', '.join(bad)} (choose from {', '.join(FIGURES)})")
    env: dict[str, str] = {}
    for item in a.daemon_env:
        k, sep, v = item.partition("=")
        if not sep or not k.startswith("APNSD_"):
            p.error(f"--daemon-env {item!r}: expected APNSD_KEY=VALUE")
        env[k] = v
    a.daemon_env = env
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log(f"apnsd benchmarks: {args.jobs:,} jobs per run, repeat {args.repeat}, figures {', '.join(args.only)}")
    bench = Bench(args)
    report = bench.run()
    rows = summarize(report)
    report["summary"] = rows
    report["rtt_summary"] = rtt.summarize(report["rtt"])
    few = [r["handshakes"] for r in report["runs"].get("http2-2proc", []) if r["handshakes"] < 2]
    if few:
        report["notes"].append(
            f"http2-2proc: {len(few)} run(s) saw fewer than 2 TLS connections: a daemon connects "
            "only when it has work, and one found the queue already empty (small --jobs)."
        )
    print()
    print(render(rows, report), flush=True)
    if report["rtt_summary"]:
        print("\n" + "\n".join(rtt.render(report["rtt_summary"])), flush=True)
    if not args.no_save:
        os.makedirs(args.results_dir, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = os.path.join(args.results_dir, f"{stamp}.json")
        text = json.dumps(report, indent=2, default=str) + "\n"
        tmp = path + ".tmp"
        Path(tmp).write_text(text)
        os.replace(tmp, path)
        Path(os.path.join(args.results_dir, "latest.json.tmp")).write_text(text)
        os.replace(os.path.join(args.results_dir, "latest.json.tmp"), os.path.join(args.results_dir, "latest.json"))
        print(f"\nresults: {os.path.relpath(path, REPO)} (and latest.json)")
        if report["rtt_summary"]:
            if chart.have_matplotlib():
                png = chart.draw(report, path.removesuffix(".json") + ".png")
                shutil.copyfile(png, os.path.join(args.results_dir, "latest.png"))
                print(f"chart: {os.path.relpath(png, REPO)} (and latest.png)")
            else:
                print("chart: skipped (matplotlib not installed: pip install -e '.[bench]')")
    failed = any(r.get("failed_runs") for r in rows) or any(r.get("ok") is False for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
