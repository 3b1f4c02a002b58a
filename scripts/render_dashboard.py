"""Render docs/dashboard.png: the Grafana dashboard's main panels, drawn from real scrapes of a running daemon.

Runs a throwaway redis-server, the HTTP/2 mock gateway and apnsd in this process, pushes a varying load
(steady traffic, a burst, a few bad tokens), scrapes /metrics every second and plots what the panels of
deploy/grafana/apnsd.json would show. Needs matplotlib:  .venv/bin/pip install -e '.[docs]'

    .venv/bin/python scripts/render_dashboard.py [--seconds 40] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from apnsd import logs
from apnsd.config import load_config
from apnsd.store.queue import JobQueue, connect
from apnsd.testing.daemon_env import mock_app_env
from apnsd.testing.devpki import make_dev_pki
from apnsd.testing.http2_mock import Http2Faults
from apnsd.testing.mock import MockGateway
from apnsd.testing.redis_server import RedisServer, free_port
from apnsd.worker.daemon import Daemon

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Scrape:
    """One /metrics scrape, indexed by sample name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def push_load(q: JobQueue, seconds: float, stop: threading.Event) -> None:
    """Steady traffic with a burst a third of the way in; one token in 50 unregistered, one in 50 dead-lettered."""
    start = time.monotonic()
    n = 0
    while not stop.is_set() and (t := time.monotonic() - start) < seconds:
        rate = 1500 if t < seconds / 3 else 600
        batch = 20_000 if abs(t - seconds / 3) < 0.05 else int(rate / 10)
        jobs = []
        for _ in range(batch):
            n += 1
            prefix = "900d" if n % 50 == 0 else "dead" if n % 50 == 25 else ""
            token = prefix + os.urandom(32 - len(prefix) // 2).hex()
            jobs.append(
                msgspec.json.encode(
                    {"token": token, "payload": {"aps": {"alert": f"#{n}"}}, "enqueued_at": time.time()}
                )
            )
        for i in range(0, len(jobs), 1000):
            q.push("apnsd:queue", jobs[i : i + 1000])
        stop.wait(0.1)


def counter_rate(scrapes: list[tuple[float, Scrape]], name: str, label: str) -> dict[str, list[float]]:
    """Per value of ``label``, the per-second increase between consecutive scrapes."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0] * (len(scrapes) - 1))
    for i in range(1, len(scrapes)):
        (t0, a), (t1, b) = scrapes[i - 1], scrapes[i]
        for (n, labels), v in b.items():
            if n == name:
                key = dict(labels)[label]
                out[key][i - 1] += max(0.0, v - a.get((n, labels), 0.0)) / (t1 - t0)
    return dict(out)


def quantile(scrapes: list[tuple[float, Scrape]], name: str, q: float, window: int = 3) -> list[float]:
    """histogram_quantile over the bucket increases of the last ``window`` scrapes (Prometheus' interpolation)."""
    out = []
    for i in range(1, len(scrapes)):
        a, b = scrapes[max(0, i - window)][1], scrapes[i][1]
        buckets: dict[float, float] = defaultdict(float)
        for (n, labels), v in b.items():
            if n == name + "_bucket":
                le = float(dict(labels)["le"])
                buckets[le] += v - a.get((n, labels), 0.0)
        bounds = sorted(buckets)
        total = buckets[math.inf] if bounds else 0.0
        if total <= 0:
            out.append(math.nan)
            continue
        rank, lower, below = q * total, 0.0, 0.0
        for le in bounds:
            if buckets[le] >= rank:
                out.append(
                    lower if le == math.inf else lower + (le - lower) * (rank - below) / max(buckets[le] - below, 1e-9)
                )
                break
            lower, below = le, buckets[le]
    return out


def gauge(scrapes: list[tuple[float, Scrape]], name: str) -> list[float]:
    """A gauge summed over its series, at each scrape after the first."""
    return [sum(v for (n, _), v in s.items() if n == name) for _, s in scrapes[1:]]


def render(scrapes: list[tuple[float, Scrape]], out: str) -> None:
    """Six panels in a Grafana-like dark style."""
    t0 = scrapes[0][0]
    xs = [t - t0 for t, _ in scrapes[1:]]
    plt.style.use("dark_background")
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), facecolor="#111217")
    for ax in axes.flat:
        ax.set_facecolor("#181b1f")
        ax.grid(color="#2c3235", linewidth=0.6)
        ax.set_xlabel("seconds", fontsize=8)
        ax.tick_params(labelsize=8)
    ax = axes[0][0]
    for outcome, ys in sorted(counter_rate(scrapes, "apnsd_notifications_total", "outcome").items()):
        if any(ys):
            ax.plot(xs, ys, label=outcome)
    ax.set_title("Throughput by outcome (notifications/s)", fontsize=10)
    ax = axes[0][1]
    ax.plot(xs, gauge(scrapes, "apnsd_queue_depth"), label="waiting jobs")
    ax.plot(xs, gauge(scrapes, "apnsd_in_flight"), label="in flight")
    ax.set_title("Queue depth / in flight", fontsize=10)
    twin = ax.twinx()
    twin.plot(xs, gauge(scrapes, "apnsd_queue_oldest_job_age_seconds"), color="#ff9830", label="oldest job age (s)")
    twin.tick_params(labelsize=8)
    twin.legend(fontsize=7, loc="upper right")
    for col, (name, title) in enumerate(
        (
            ("apnsd_gateway_round_trip_seconds", "Gateway round trip (ms)"),
            ("apnsd_delivery_latency_seconds", "Delivery latency (ms)"),
        )
    ):
        ax = axes[0][2] if col == 0 else axes[1][0]
        for q in (0.5, 0.95, 0.99):
            ax.plot(xs, [v * 1000 for v in quantile(scrapes, name, q)], label=f"p{int(q * 100)}")
        ax.set_title(title, fontsize=10)
    ax = axes[1][1]
    for reason, ys in sorted(counter_rate(scrapes, "apnsd_notifications_failed_total", "reason").items()):
        ax.plot(xs, ys, label=reason)
    ax.set_title("Dead letters / unregistered by reason (/s)", fontsize=10)
    ax = axes[1][2]
    ax.plot(xs, gauge(scrapes, "apnsd_connections_open"), label="open connections")
    ax.set_ylim(0, 2)
    twin = ax.twinx()
    twin.plot(xs, gauge(scrapes, "apnsd_dead_letters"), color="#ff9830", label="dead letters stored")
    twin.tick_params(labelsize=8)
    twin.legend(fontsize=7, loc="upper right")
    days = (gauge(scrapes, "apnsd_certificate_expiry_timestamp_seconds")[-1] - scrapes[-1][0]) / 86400
    ax.set_title(f"Connections, stored dead letters — certificate: {days:.0f} days left", fontsize=10)
    for ax in axes.flat:
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("apnsd — deploy/grafana/apnsd.json panels, from real scrapes of a local run", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())


def main() -> int:
    """Run the load, scrape once a second, render."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "dashboard.png"))
    args = p.parse_args()
    logs.configure("json", "warning")
    home = tempfile.mkdtemp(prefix="apnsd-dashboard-")
    pki = make_dev_pki(os.path.join(home, "pki"))
    faults = Http2Faults(reject_prefixes=(("900d", 410, "Unregistered"), ("dead", 400, "BadTopic")))
    with (
        RedisServer() as redis,
        MockGateway("http2", pki.server_cert, pki.server_key, pki.ca_cert, http2_faults=faults) as mock,
    ):
        port = free_port()
        env = mock_app_env(
            redis.url,
            mock,
            pki,
            os.path.join(home, "state"),
            APNSD_WORKER_HEARTBEAT_INTERVAL="0.5",
            APNSD_METRICS_LISTEN=f"127.0.0.1:{port}",
        )
        daemon = Daemon(load_config(None, env))
        runner = threading.Thread(target=daemon.run, daemon=True)
        runner.start()
        q = JobQueue(connect(redis.url), "apnsd", "dashboard")
        stop = threading.Event()
        pusher = threading.Thread(target=push_load, args=(q, args.seconds * 0.75, stop), daemon=True)
        time.sleep(1.0)
        pusher.start()
        scrapes = []
        end = time.time() + args.seconds
        while time.time() < end:
            scrapes.append((time.time(), scrape(port)))
            time.sleep(1.0)
        stop.set()
        daemon.request_stop()
        runner.join(30)
    render(scrapes, args.out)
    print(f"wrote {os.path.normpath(args.out)} from {len(scrapes)} scrapes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
