"""Every Prometheus metric apnsd exports, and the HTTP listener that serves them with the health probes."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from apnsd import __version__

REGISTRY = CollectorRegistry()
# process_* (CPU, memory, open fds, start time), python_info and python_gc_*: what every Prometheus user expects.
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

JOBS_TAKEN = Counter(
    "apnsd_jobs_taken", "Jobs moved from a queue into in-flight storage.", ["queue"], registry=REGISTRY
)
NOTIFICATIONS = Counter("apnsd_notifications", "Notifications by final outcome.", ["app", "outcome"], registry=REGISTRY)
FAILED = Counter(
    "apnsd_notifications_failed",
    "Notifications dead-lettered or unregistered, by reason.",
    ["app", "reason"],
    registry=REGISTRY,
)
RETRIED = Counter(
    "apnsd_notifications_retried", "Notifications scheduled for another attempt.", ["app", "reason"], registry=REGISTRY
)
RESENT = Counter(
    "apnsd_notifications_resent",
    "Notifications sent again on a new connection (not counted as attempts).",
    ["app"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("apnsd_queue_depth", "Jobs waiting in a queue.", ["queue"], registry=REGISTRY)
SCHEDULED = Gauge("apnsd_scheduled_jobs", "Jobs waiting for their send_at.", ["queue"], registry=REGISTRY)
IN_FLIGHT = Gauge(
    "apnsd_in_flight", "Notifications taken and not yet resolved by this worker.", ["queue"], registry=REGISTRY
)
OLDEST_AGE = Gauge(
    "apnsd_queue_oldest_job_age_seconds",
    "Age of the next job to be taken (its enqueued_at, else how long it has been seen at the head); 0 when empty.",
    ["queue"],
    registry=REGISTRY,
)
DEAD_LETTERS = Gauge("apnsd_dead_letters", "Entries in the dead-letter list.", registry=REGISTRY)
UNREGISTERED = Gauge("apnsd_unregistered_tokens", "Tokens in the unregistered-token store.", registry=REGISTRY)
CONNECTED = Gauge(
    "apnsd_connection_up", "1 while at least one of the app's gateway connections is open.", ["app"], registry=REGISTRY
)
OPEN_CONNECTIONS = Gauge(
    "apnsd_connections_open", "Gateway connections open for the app in this worker.", ["app"], registry=REGISTRY
)
BACKLOG = Gauge(
    "apnsd_gateway_backlog",
    "Notifications waiting to be written to the app's gateway connections.",
    ["app"],
    registry=REGISTRY,
)
SUSPENDED = Gauge(
    "apnsd_app_suspended",
    "1 while the app sends nothing: suspended (credential breaker, environment-mismatch guard, certificate that "
    "does not fit the config; jobs kept) or disabled (expired certificate).",
    ["app"],
    registry=REGISTRY,
)
CONNECTS = Counter("apnsd_connects", "TLS connections opened to the gateway.", ["app"], registry=REGISTRY)
CONNECT_FAILURES = Counter("apnsd_connect_failures", "Failed connection attempts.", ["app"], registry=REGISTRY)
DISCONNECTS = Counter("apnsd_disconnects", "Connections closed, by cause.", ["app", "cause"], registry=REGISTRY)
BATCH_SIZE = Histogram(
    "apnsd_batch_size",
    "Jobs per batch taken from Redis.",
    ["queue"],
    registry=REGISTRY,
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
LATENCY = Histogram(
    "apnsd_delivery_latency_seconds",
    "From enqueue (job's enqueued_at) to the gateway's answer.",
    ["app"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ROUND_TRIP = Histogram(
    "apnsd_gateway_round_trip_seconds",
    "HTTP/2: from a request written to its answer read (one request in 64 is timed).",
    ["app"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CERT_EXPIRY = Gauge(
    "apnsd_certificate_expiry_timestamp_seconds",
    "When the app's client certificate expires.",
    ["app"],
    registry=REGISTRY,
)
TOKEN_EXPIRY = Gauge(
    "apnsd_provider_token_expiry_timestamp_seconds",
    "When the current provider token (JWT) stops being accepted.",
    ["app"],
    registry=REGISTRY,
)
BUILD = Info("apnsd_build", "apnsd version.", registry=REGISTRY)
BUILD.info({"version": __version__})


def declare(apps: list[str], queues: list[str]) -> None:
    """Create the per-app and per-queue series at 0, so that rates and alerts have data before the first event."""
    for app in apps:
        for outcome in ("delivered", "dead", "unregistered"):
            NOTIFICATIONS.labels(app, outcome)
        for metric in (CONNECTS, CONNECT_FAILURES, RESENT):
            metric.labels(app)
    for queue in queues:
        JOBS_TAKEN.labels(queue)


MAX_REASONS = 200  # distinct reason label values per process; later ones are counted as "other"
_REASON_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
_reasons: set[str] = set()


def reason_label(reason: str) -> str:
    """A bounded label value for an outcome reason.

    Reasons come from apnsd's own tables and from the gateway's answers; the part before a colon is kept
    (details such as a certificate path stay in logs and dead letters), and an odd or overflowing value
    becomes "other", so that no answer can grow the series without bound.
    """
    head = reason.split(":", 1)[0].strip()
    if head in _reasons:
        return head
    if not _REASON_SHAPE.fullmatch(head) or len(_reasons) >= MAX_REASONS:
        return "other"
    _reasons.add(head)
    return head


# How a connection ended, as a closed set of label values: the free text of a cause (the peer's address,
# a GOAWAY's debug data, the gateway's reason) stays in the disconnected log line.
_CAUSES = (
    ("connection to ", "connection_lost"),
    ("GOAWAY", "goaway"),
    ("HTTP/2 protocol error", "protocol_error"),
    ("PING unanswered", "ping_unanswered"),
    ("error response", "error_response"),
    ("unreadable answer", "unreadable_answer"),
    ("starved", "starved"),
    ("gateway closed", "gateway_closed"),
)


def cause_label(cause: str) -> str:
    """A bounded label value for why a connection ended (apnsd_disconnects_total's cause)."""
    for prefix, label in _CAUSES:
        if cause.startswith(prefix):
            return label
    return reason_label(cause)  # apnsd's own one-word causes (shutdown, suspended, ...); anything else: other


def totals(metric: Counter, by: str) -> dict[str, dict[str, float]]:
    """A counter's values summed per app and per value of label ``by`` (for heartbeats and live stats)."""
    out: dict[str, dict[str, float]] = {}
    family: Metric
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                per_app = out.setdefault(s.labels["app"], {})
                per_app[s.labels[by]] = per_app.get(s.labels[by], 0.0) + s.value
    return out


Probe = Callable[[], tuple[bool, str]]


# A connection that sends no complete request within this many seconds is closed: without it, each idle
# (or slowloris) client of the listener held a thread for ever.
IDLE_TIMEOUT = 10.0


def serve(listen: str, probes: dict[str, Probe] | None = None) -> Callable[[], None]:
    """Serve /metrics and the probes (path → check) on host:port in a background thread; returns the stop function.

    A probe answers 200 with its message when it passes and 503 when it does not; every other path is 404.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    routes = dict(probes or {})

    class Handler(BaseHTTPRequestHandler):
        timeout = IDLE_TIMEOUT

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                return
            probe = routes.get(path)
            if probe is None:
                self._answer(404, b"not found: try /metrics, " + ", ".join(routes).encode() + b"\n")
                return
            try:
                ok, message = probe()
            except Exception as exc:  # a probe that breaks says so; the listener keeps serving
                ok, message = False, f"probe failed: {type(exc).__name__}: {exc}"
            self._answer(200 if ok else 503, (message + "\n").encode())

        def _answer(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes and probes every few seconds are not worth a log line."""

    family = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
    server = server_class((host, int(port)), Handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


THROTTLED = Counter(
    "apnsd_throttled_seconds",
    "Time a queue's feeder waited because its throttle (max_rate, lane_max_rate) held queued jobs back.",
    ["queue"],
    registry=REGISTRY,
)
