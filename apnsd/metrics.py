"""Every Prometheus metric apnsd exports, and the HTTP endpoint that serves them."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from apnsd import __version__

REGISTRY = CollectorRegistry()

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
CONNECTED = Gauge("apnsd_connection_up", "1 while the app's gateway connection is open.", ["app"], registry=REGISTRY)
SUSPENDED = Gauge(
    "apnsd_app_suspended",
    "1 while the app is suspended by the environment-mismatch guard (most answers BadDeviceToken).",
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


def serve(listen: str) -> Callable[[], None]:
    """Start the /metrics endpoint on host:port in a background thread; returns the function that stops it."""
    host, _, port = listen.rpartition(":")
    server, thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=REGISTRY)

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
