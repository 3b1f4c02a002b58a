"""The Prometheus endpoint, `apnsd health` (full and --liveness), and certificate expiry at start and on reload."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from cryptography import x509

from apnsd import __version__
from apnsd.store.queue import JobQueue
from apnsd.testing.redis_server import free_port
from tests.support.daemons import events_since, health, log_mark, sample, scrape
from tests.support.jobs import inflight_keys, job, push_all
from tests.support.wait import wait_for


def not_after(pem: str) -> float:
    """A PEM certificate's expiry as a unix timestamp."""
    return x509.load_pem_x509_certificate(Path(pem).read_bytes()).not_valid_after_utc.timestamp()


def test_metrics_endpoint_exports_deliveries_failures_connection_and_certificate(
    app_env, start_daemon, binary_mock, pki, jq: JobQueue, rdb, capsys
) -> None:
    """After delivered, unregistered and dead jobs, /metrics holds every documented metric with matching values."""
    mock = binary_mock(fail_prefixes=(("bad0", 8), ("dead", 7)))
    port = free_port()
    start_daemon(app_env("metrics", mock.host, mock.port, pki.client_pem, METRICS_LISTEN=f"127.0.0.1:{port}"))
    good = [os.urandom(32).hex() for _ in range(20)]
    gone, broken = "bad0" + os.urandom(30).hex(), "dead" + os.urandom(30).hex()
    push_all(
        jq,
        [job(t, app="metrics", enqueued_at=time.time()) for t in [*good[:10], gone, broken, *good[10:]]],
        queue="metrics:queue",
    )

    wait_for(
        lambda: (
            set(good) == set(mock.record.accepted_tokens())
            and len(jq.dead_entries(5)) == 1
            and jq.unregistered()
            and not inflight_keys(rdb)
        ),
        20,
        "every job resolved",
    )
    s = wait_for(
        lambda: (
            (m := scrape(port))
            and sample(m, "apnsd_in_flight", queue="metrics:queue") == 0
            and sample(m, "apnsd_queue_depth", queue="metrics:queue") == 0
            and sample(m, "apnsd_connection_up", app="metrics") == 1  # refreshed with the heartbeat
            and m
        ),
        10,
        "gauges settled",
    )

    assert 20 == sample(s, "apnsd_notifications_total", app="metrics", outcome="delivered")
    assert 1 == sample(s, "apnsd_notifications_total", app="metrics", outcome="unregistered")
    assert 1 == sample(s, "apnsd_notifications_total", app="metrics", outcome="dead")
    assert 1 == sample(s, "apnsd_notifications_failed_total", app="metrics", reason="InvalidToken")
    assert 1 == sample(s, "apnsd_notifications_failed_total", app="metrics", reason="InvalidPayloadSize")
    assert 22 == sample(s, "apnsd_jobs_taken_total", queue="metrics:queue")
    assert mock.record.connections == sample(s, "apnsd_connects_total", app="metrics")
    assert 1 == sample(s, "apnsd_connection_up", app="metrics")
    assert not_after(pki.client_pem) == sample(s, "apnsd_certificate_expiry_timestamp_seconds", app="metrics")
    assert 20 == sample(s, "apnsd_delivery_latency_seconds_count", app="metrics")
    assert 0 <= sample(s, "apnsd_delivery_latency_seconds_sum", app="metrics") < 20 * 60  # type: ignore[operator]
    assert 1 == sample(s, "apnsd_build_info", version=__version__)
    assert 0 == health(capsys)[0]


def test_metrics_endpoint_closes_when_the_daemon_stops(app_env, start_daemon, binary_mock, pki) -> None:
    """A stopped daemon no longer serves (stale) metrics and frees its port."""
    mock = binary_mock()
    port = free_port()
    r = start_daemon(app_env("closing", mock.host, mock.port, pki.client_pem, METRICS_LISTEN=f"127.0.0.1:{port}"))
    assert 1 == sample(scrape(port), "apnsd_build_info", version=__version__)

    assert 0 == r.stop()

    with pytest.raises(OSError):
        scrape(port)


def test_health_is_1_without_a_worker_and_0_while_one_runs(app_env, start_daemon, binary_mock, pki, capsys) -> None:
    """Before start and after a stop `apnsd health` (and --liveness) exit 1 with a reason; while running, 0."""
    mock = binary_mock()
    env = app_env("healthy", mock.host, mock.port, pki.client_pem)

    before = health(capsys)
    assert (1, 1) == (before[0], before[1].count("\n"))
    assert before[1].startswith("unhealthy: no worker has written a fresh status")
    assert 1 == health(capsys, "--liveness")[0]

    r = start_daemon(env)
    assert (0, "healthy: 1 worker(s) alive\n") == health(capsys)
    assert 0 == health(capsys, "--liveness")[0]

    assert 0 == r.stop()
    after = health(capsys)
    assert (1, 1) == (after[0], after[1].count("\n"))
    assert 1 == health(capsys, "--liveness")[0]


def test_health_fails_on_gateway_connect_failures_but_liveness_passes(
    app_env, start_daemon, pki, jq: JobQueue, capsys
) -> None:
    """With the gateway unreachable, readiness health exits 1 naming the failure; --liveness stays 0."""
    mark = log_mark()
    start_daemon(app_env("unreachable", "127.0.0.1", free_port(), pki.client_pem, WORKER_GRACE_PERIOD="0.5"))
    push_all(jq, [job(os.urandom(32).hex(), app="unreachable")], queue="unreachable:queue")

    _code, out = wait_for(lambda: (h := health(capsys))[0] == 1 and h, 10, "health to report the failed connects")

    assert out.startswith("unhealthy: app unreachable: last connection attempt failed: ")
    assert 1 == out.count("\n")
    assert (0, "healthy: 1 worker(s) alive\n") == health(capsys, "--liveness")
    assert 1 == len(events_since(mark, "connect_failed", app="unreachable"))


def test_expired_certificate_at_start_disables_the_app_and_dead_letters_its_jobs(
    app_env, start_daemon, binary_mock, pki, jq: JobQueue, rdb, capsys
) -> None:
    """An expired certificate: app_disabled logged, jobs dead-lettered as app_disabled, no connection, health 1."""
    mock = binary_mock()
    mark = log_mark()
    start_daemon(app_env("expired", mock.host, mock.port, pki.expired_pem))
    push_all(jq, [job(os.urandom(32).hex(), app="expired") for _ in range(3)], queue="expired:queue")

    dead = wait_for(lambda: len(d := jq.dead_entries(10)) == 3 and d, 10, "three dead letters")

    assert [True] * 3 == [e["reason"].startswith("app_disabled: certificate ") for e in dead]
    assert ["error"] == [e["level"] for e in events_since(mark, "app_disabled", app="expired")]
    assert 0 == mock.record.connections
    assert [] == inflight_keys(rdb)
    code, out = health(capsys)
    assert 1 == code
    assert out.startswith("unhealthy: app expired is disabled: certificate ")
    assert 0 == health(capsys, "--liveness")[0]


def test_certificate_expiring_soon_is_logged_and_exported_and_still_used(
    app_env, start_daemon, binary_mock, pki, jq: JobQueue, capsys
) -> None:
    """A certificate with 10 days left: certificate_expires_soon warning, expiry metric set, jobs delivered."""
    mock = binary_mock()
    port = free_port()
    mark = log_mark()
    start_daemon(app_env("expiring", mock.host, mock.port, pki.expiring_pem, METRICS_LISTEN=f"127.0.0.1:{port}"))
    token = os.urandom(32).hex()
    push_all(jq, [job(token, app="expiring")], queue="expiring:queue")

    wait_for(lambda: token in mock.record.accepted_tokens(), 10, "the job delivered")

    (warning,) = events_since(mark, "certificate_expires_soon", app="expiring")
    assert ("warning", 10) == (warning["level"], round(warning["days_left"]))
    assert not_after(pki.expiring_pem) == sample(
        scrape(port), "apnsd_certificate_expiry_timestamp_seconds", app="expiring"
    )
    assert 0 == health(capsys)[0]


def test_reload_keeps_an_expired_app_disabled_and_enables_it_once_renewed(
    app_env, start_daemon, binary_mock, pki, jq: JobQueue, monkeypatch, capsys
) -> None:
    """A reload with the certificate still expired keeps the app disabled; a reload with a renewed one delivers."""
    mock = binary_mock()
    r = start_daemon(app_env("renewed", mock.host, mock.port, pki.expired_pem))
    mark = log_mark()

    r.daemon.request_reload()
    wait_for(lambda: events_since(mark, "reloaded"), 10, "the first reload")
    (rejected,) = events_since(mark, "reload_rejected", app="renewed")
    assert rejected["error"].startswith(f"certificate {pki.expired_pem} expired on ")
    push_all(jq, [job(os.urandom(32).hex(), app="renewed")], queue="renewed:queue")
    wait_for(lambda: len(jq.dead_entries(10)) == 1, 10, "the job dead-lettered")
    assert 0 == mock.record.connections

    monkeypatch.setenv("APNSD_APP_RENEWED_CERT", pki.client_pem)
    mark = log_mark()
    r.daemon.request_reload()
    wait_for(lambda: events_since(mark, "reloaded"), 10, "the second reload")
    assert [] == events_since(mark, "reload_rejected")
    token = os.urandom(32).hex()
    push_all(jq, [job(token, app="renewed")], queue="renewed:queue")

    wait_for(lambda: token in mock.record.accepted_tokens(), 10, "delivery with the renewed certificate")
    wait_for(lambda: health(capsys)[0] == 0, 10, "health back to 0")
    assert ["app_disabled"] == [e["reason"].split(":")[0] for e in jq.dead_entries(10)]


def test_metrics_listener_closes_a_connection_that_sends_no_request(monkeypatch) -> None:
    """A client that connects and sends nothing (or half a request) is disconnected after IDLE_TIMEOUT."""
    import socket

    from apnsd import metrics

    monkeypatch.setattr(metrics, "IDLE_TIMEOUT", 0.5)
    port = free_port()
    stop = metrics.serve(f"127.0.0.1:{port}")
    try:
        idle = socket.create_connection(("127.0.0.1", port))
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: the request never ends
        for s in (idle, half):
            s.settimeout(10)
        closed = [s.recv(1024) for s in (idle, half)]  # b"": the listener hung up
    finally:
        stop()
    assert [b"", b""] == closed
