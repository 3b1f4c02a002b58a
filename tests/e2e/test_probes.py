"""The metrics listener's probes (/healthz, /readyz, 404 elsewhere) and the gauges added for operators."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

from apnsd.store.queue import JobQueue
from apnsd.testing.redis_server import RedisServer, free_port
from tests.support.daemons import events_since, health, log_mark, sample, scrape
from tests.support.jobs import job, push_all, run_drained
from tests.support.supervised import VENV_BIN, clean_env, stop_by_pid
from tests.support.wait import wait_for


def get(port: int, path: str) -> tuple[int, str]:
    """GET a path on the metrics listener; returns the status and the body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# Where no gateway listens. Not a free ephemeral port: connecting to one of those on loopback can pick
# it as its own source port and connect to itself (TCP simultaneous open), then hang in the handshake.
NOWHERE = 1


def test_probes_pass_while_delivering_and_other_paths_are_404(app_env, start_daemon, binary_mock, pki, jq) -> None:
    """A delivering worker answers 200 on /healthz and /readyz, and 404 on any other path."""
    mock = binary_mock()
    port = free_port()
    start_daemon(app_env("probed", mock.host, mock.port, pki.client_pem, METRICS_LISTEN=f"127.0.0.1:{port}"))
    token = os.urandom(32).hex()
    push_all(jq, [job(token, app="probed")], queue="probed:queue")
    wait_for(lambda: token in mock.record.accepted_tokens(), 10, "the job delivered")

    assert (200, "alive: 1 delivery loop(s) running\n") == wait_for(
        lambda: (r := get(port, "/healthz"))[0] == 200 and r, 10, "liveness"
    )
    assert (200, "ready\n") == wait_for(lambda: (r := get(port, "/readyz"))[0] == 200 and r, 10, "readiness")
    assert [404, 404, 404] == [get(port, p)[0] for p in ("/", "/health", "/metrics/x")]


def test_gateway_outage_fails_readiness_but_not_liveness(app_env, start_daemon, pki, jq) -> None:
    """With the gateway unreachable, /readyz is 503 naming the failing connects while /healthz stays 200."""
    port = free_port()
    start_daemon(app_env("nogateway", "127.0.0.1", NOWHERE, pki.client_pem, METRICS_LISTEN=f"127.0.0.1:{port}"))
    push_all(jq, [job(os.urandom(32).hex(), app="nogateway")], queue="nogateway:queue")

    _, body = wait_for(
        lambda: (r := get(port, "/readyz"))[1].startswith("not ready: app") and r, 15, "readiness to fail"
    )

    assert re.fullmatch(r"not ready: app nogateway: \d+ connection attempts failed: cannot reach .*\n", body), body
    assert 200 == get(port, "/healthz")[0]


def test_redis_outage_fails_readiness_but_not_liveness(app_env, start_daemon, binary_mock, pki, capsys) -> None:
    """With Redis stopped, /readyz (and `apnsd health`) fail naming Redis while /healthz (and --liveness) pass."""
    mock = binary_mock()
    port = free_port()
    own = RedisServer().start()
    again = RedisServer(own.port)  # the same port, started again once the outage has been seen
    try:
        env = app_env(
            "noredis", mock.host, mock.port, pki.client_pem, METRICS_LISTEN=f"127.0.0.1:{port}", REDIS_URL=own.url
        )
        r = start_daemon(env)
        wait_for(lambda: get(port, "/readyz")[0] == 200, 10, "readiness")
        own.stop()

        _, body = wait_for(
            lambda: (resp := get(port, "/readyz"))[1].startswith("not ready: Redis") and resp, 15, "readiness to fail"
        )

        assert body.startswith("not ready: Redis: ")
        assert 200 == get(port, "/healthz")[0]
        wait_for(
            lambda: json.loads(r.daemon.health_path.read_text())["redis"] is False, 10, "a heartbeat without Redis"
        )
        assert (0, "healthy: 1 worker(s) alive\n") == health(capsys, "--liveness")  # the exec form agrees
        assert 1 == health(capsys)[0]
        again.start()
        wait_for(lambda: get(port, "/readyz")[0] == 200, 15, "readiness after Redis is back")
    finally:
        own.stop()
        again.stop()


def test_queue_gauges_show_depth_oldest_age_dead_letters_and_unregistered(
    app_env, start_daemon, binary_mock, pki, jq: JobQueue, rdb: Any
) -> None:
    """Jobs behind an unreachable gateway show as depth, backlog and oldest age; dead/unregistered sizes match Redis."""
    port = free_port()
    rdb.lpush("apnsd:dead", b"{}", b"{}")
    rdb.hset("apnsd:unregistered", mapping={"aa": b"{}", "bb": b"{}", "cc": b"{}"})
    env = app_env(
        "stuck",
        "127.0.0.1",
        NOWHERE,
        pki.client_pem,
        METRICS_LISTEN=f"127.0.0.1:{port}",
        WORKER_BATCH_SIZE="1",
        WORKER_MAX_IN_FLIGHT="1",
    )
    start_daemon(env)
    push_all(
        jq, [job(os.urandom(32).hex(), app="stuck", enqueued_at=time.time() - 100) for _ in range(10)], "stuck:queue"
    )

    s = wait_for(
        lambda: (
            (m := scrape(port))
            and sample(m, "apnsd_queue_depth", queue="stuck:queue")
            and sample(m, "apnsd_gateway_backlog", app="stuck")
            and m
        ),
        10,
        "jobs waiting in the queue, the others held for the gateway",
    )

    assert 100 <= sample(s, "apnsd_queue_oldest_job_age_seconds", queue="stuck:queue") < 160  # type: ignore[operator]
    assert (2, 3) == (sample(s, "apnsd_dead_letters"), sample(s, "apnsd_unregistered_tokens"))
    assert (0, 0) == (sample(s, "apnsd_connection_up", app="stuck"), sample(s, "apnsd_connections_open", app="stuck"))
    assert 0 < sample(s, "process_resident_memory_bytes")  # type: ignore[operator]
    assert 0 < sample(s, "process_cpu_seconds_total")  # type: ignore[operator]


def test_http2_round_trip_histogram_times_one_request_in_64(app_env, start_daemon, http2_mock, pki, jq) -> None:
    """129 notifications on one HTTP/2 connection: 3 round trips timed (streams 1, 129, 257), each under 10 s."""
    mock = http2_mock()
    port = free_port()
    env = app_env(
        "rtt", mock.host, mock.port, pki.client_pem, METRICS_LISTEN=f"127.0.0.1:{port}", APP_RTT_PROTOCOL="http2"
    )
    start_daemon(env)
    tokens = [os.urandom(32).hex() for _ in range(129)]
    push_all(jq, [job(t, app="rtt") for t in tokens], queue="rtt:queue")
    wait_for(lambda: set(tokens) <= set(mock.record.accepted_tokens()), 20, "every notification delivered")

    s = wait_for(
        lambda: (
            (m := scrape(port)) and sample(m, "apnsd_notifications_total", app="rtt", outcome="delivered") == 129 and m
        ),
        10,
        "every answer read",
    )

    assert 1 == sample(s, "apnsd_connects_total", app="rtt")
    assert 3 == sample(s, "apnsd_gateway_round_trip_seconds_count", app="rtt")
    assert 3 == sample(s, "apnsd_gateway_round_trip_seconds_bucket", app="rtt", le="10.0")


def test_drain_ends_with_one_summary_event(make_config, binary_mock, jq: JobQueue) -> None:
    """`run --drain` (JSON logs, no terminal) logs one drain_summary with the counts, duration and rate."""
    mock = binary_mock(fail_prefixes=(("dead", 7),))
    push_all(jq, [job(os.urandom(32).hex()) for _ in range(30)] + [job("dead" + os.urandom(30).hex())])
    mark = log_mark()

    assert 0 == run_drained(make_config(mock))

    (summary,) = events_since(mark, "drain_summary")
    assert ({"dead": 1, "delivered": 30}, 31) == (summary["outcomes"], summary["notifications"])
    assert 0 < summary["duration_seconds"] and 0 < summary["per_second"]


def test_drain_on_a_terminal_shows_progress_and_a_summary_line(redis_server, binary_mock, pki, jq, tmp_path) -> None:
    """`apnsd run --drain` on a terminal draws a progress line in place and ends with a summary line."""
    mock = binary_mock()
    push_all(jq, [job(os.urandom(32).hex()) for _ in range(20)])
    env = clean_env(
        APNSD_REDIS_URL=redis_server.url,
        APNSD_APP_DEFAULT_HOST=mock.host,
        APNSD_APP_DEFAULT_PORT=str(mock.port),
        APNSD_APP_DEFAULT_CA_FILE=pki.ca_cert,
        APNSD_APP_DEFAULT_CERT=pki.client_pem,
        APNSD_APP_DEFAULT_PROTOCOL="binary",
        APNSD_APP_DEFAULT_CONFIRM_DELAY="0.2",
        APNSD_WORKER_STATE_DIR=str(tmp_path / "state"),
        APNSD_WORKER_BLOCK_TIMEOUT="0.2",
        APNSD_METRICS_LISTEN="",
    )
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [str(VENV_BIN / "apnsd"), "run", "--drain"], stdin=child, stdout=child, stderr=child, env=env
    )
    os.close(child)
    output = bytearray()
    try:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert 0 == proc.wait(30)
    finally:
        stop_by_pid(proc)
        os.close(main)

    text = output.decode("utf-8", "replace")
    assert "\r\x1b[Kdraining: " in text
    assert re.search(r"\r\x1b\[Kdrained: 20 notifications in [0-9.]+s \([0-9,]+/s\): delivered 20\r?\n", text), text


def test_stats_watch_shows_rates_depth_age_in_flight_and_connections(
    app_env, start_daemon, binary_mock, pki, jq
) -> None:
    """`stats --watch --json`: the first refresh has no rates yet; after deliveries and a heartbeat, it has them."""
    from apnsd.cli.watch import watch

    mock = binary_mock()
    r = start_daemon(app_env("watched", mock.host, mock.port, pki.client_pem))
    out = io.StringIO()
    tokens = [os.urandom(32).hex() for _ in range(20)]

    def between_refreshes(_seconds: float) -> None:
        push_all(jq, [job(t, app="watched") for t in tokens], queue="watched:queue")
        wait_for(lambda: set(tokens) <= set(mock.record.accepted_tokens()), 10, "the jobs delivered")
        wait_for(lambda: jq.heartbeat_of(r.daemon.worker_id)["outcomes"]["watched"]["delivered"] >= 20, 10, "heartbeat")

    assert 0 == watch(r.config, jq, 1.0, True, out, refreshes=2, sleep=between_refreshes)

    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert {"delivered": None, "dead": None, "unregistered": None, "retried": None} == first["apps"]["watched"][
        "per_second"
    ]
    rates = second["apps"]["watched"]["per_second"]
    assert (0, 0, 0) == (rates["dead"], rates["unregistered"], rates["retried"])
    assert 0 < rates["delivered"]
    assert {"apps": ["watched"], "depth": 0, "scheduled": 0, "oldest_age": 0.0, "in_flight": 0} == second["queues"][
        "watched:queue"
    ]
    assert ({"alive": 1, "dead": 0}, 1) == (second["workers"], second["apps"]["watched"]["connections"])


def test_stats_watch_table_on_a_terminal_redraws_in_place(app_env, start_daemon, binary_mock, pki, jq) -> None:
    """On a terminal each refresh moves home and clears before the table: a line per queue and per app."""
    from apnsd.cli.watch import watch

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    mock = binary_mock()
    r = start_daemon(app_env("table", mock.host, mock.port, pki.client_pem))
    out = Terminal()

    assert 0 == watch(r.config, jq, 2.0, False, out, refreshes=2, sleep=lambda _s: None)

    screens = out.getvalue().split("\x1b[H\x1b[J")
    assert ["", 2] == [screens[0], len(screens) - 1]
    lines = screens[2].splitlines()
    assert lines[0].startswith("apnsd stats  ") and "every 2s  workers 1 alive, 0 dead" in lines[0]
    assert ["QUEUE", "WAITING", "SCHEDULED", "OLDEST", "IN", "FLIGHT"] == lines[2].split()
    assert ["table:queue", "0", "0", "-", "0"] == lines[3].split()
    assert ["APP", "CONN", "DELIVERED/s", "DEAD/s", "UNREG/s", "RETRIED/s"] == lines[5].split()
    assert "table" == lines[6].split()[0] and "0/1" == lines[6].split()[1]
