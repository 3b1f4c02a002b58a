"""End to end over HTTP/2: real redis-server, real TLS with ALPN h2, the HTTP/2 mock gateway."""

from __future__ import annotations

import json
import shutil
import subprocess

import msgspec
import pytest

from tests.support.jobs import LOG, good_tokens, inflight_keys, job, push_all, run_drained
from tests.support.pki import token_auth_env, token_mock_options


def test_ten_thousand_jobs_under_certificate_auth_arrive_exactly_once(jq, rdb, http2_mock, make_config):
    """Every job is accepted once, on one connection, without exceeding the advertised stream limit."""
    mock = http2_mock(max_concurrent_streams=500)
    tokens = good_tokens(10_000)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(mock))

    accepted = mock.record.accepted_tokens()
    assert set(tokens) == set(accepted)
    assert [1] == sorted(set(accepted.values()))
    assert (1, 0) == (mock.record.connections, mock.record.concurrency_violations)
    assert [] == inflight_keys(rdb)


def test_ten_thousand_jobs_under_token_auth_arrive_exactly_once(jq, rdb, http2_mock, make_config, pki):
    """With a .p8 key the daemon signs an ES256 provider token the gateway verifies, and everything arrives."""
    mock = http2_mock(**token_mock_options(pki))
    tokens = good_tokens(10_000, seed=7)
    push_all(jq, [job(t) for t in tokens])
    config = make_config(
        mock,
        **token_auth_env(pki),
    )

    assert 0 == run_drained(config)

    assert set(tokens) == set(mock.record.accepted_tokens())
    assert 10_000 == sum(mock.record.accepted_tokens().values())
    auth = {dict(r.headers).get("authorization", "")[:7] for r in mock.record.received}
    assert {"bearer "} == auth
    assert [] == inflight_keys(rdb)


def test_rejections_go_to_the_right_store_with_the_right_reason(jq, http2_mock, make_config):
    """Only 410 lands in the unregistered store; BadDeviceToken, BadTopic and other 4xx are dead letters."""
    mock = http2_mock(reject_prefixes=(("dead", 410, "Unregistered"), ("bad0", 400, "BadDeviceToken")))
    good = good_tokens(20)
    gone, bad = "dead" + good[0][4:], "bad0" + good[1][4:]
    wrong_topic = good[2]
    push_all(jq, [job(t) for t in good[3:]] + [job(gone), job(bad), job(wrong_topic, topic="com.other.app")])

    assert 0 == run_drained(make_config(mock))

    unregistered = jq.unregistered()
    assert {gone: "Unregistered"} == {t: v["reason"] for t, v in unregistered.items()}
    assert isinstance(unregistered[gone]["timestamp_ms"], int)
    dead = jq.dead_entries(10)
    expected = {("TopicDisallowed", 400, wrong_topic), ("BadDeviceToken", 400, bad)}
    assert expected == {(e["reason"], e["status"], e["token"]) for e in dead}
    assert set(good[3:]) == set(mock.record.accepted_tokens())


def test_transient_errors_are_retried_then_delivered(jq, http2_mock, make_config):
    """A burst of 503s is retried with backoff through the scheduled set and then delivered once."""
    mock = http2_mock(burst_status=(503, "ServiceUnavailable", 30))
    tokens = good_tokens(100, seed=3)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(mock))

    assert set(tokens) == set(mock.record.accepted_tokens())
    assert [1] == sorted(set(mock.record.accepted_tokens().values()))
    assert 0 == jq.counts()["dead"]
    assert 30 == jq.counts()["total_retry"]


def test_retries_stop_at_max_attempts_with_the_last_reason(jq, http2_mock, make_config):
    """A notification that keeps getting 500 is dead-lettered after max_attempts with that reason."""
    mock = http2_mock(burst_status=(500, "InternalServerError", 3))
    push_all(jq, [job(good_tokens(1)[0])])

    assert 0 == run_drained(make_config(mock, APP_DEFAULT_MAX_ATTEMPTS="3"))

    assert [("InternalServerError", 500, 3)] == [(e["reason"], e["status"], e["attempts"]) for e in jq.dead_entries(5)]
    assert 0 == len(mock.record.accepted_tokens())


def test_stream_limit_is_obeyed_and_kept_full(jq, http2_mock, make_config):
    """The client never opens more streams than advertised, starting from 1, and fills the window it is given."""
    mock = http2_mock(max_concurrent_streams=50)
    push_all(jq, [job(t) for t in good_tokens(3000, seed=4)])

    assert 0 == run_drained(make_config(mock))

    assert (0, 50) == (mock.record.concurrency_violations, mock.record.max_concurrent_seen)


def test_background_push_defaults_to_priority_five(jq, http2_mock, make_config):
    """Background pushes go out with apns-priority 5 (Apple rejects 10 for them) and their push type."""
    mock = http2_mock()
    push_all(
        jq,
        [
            msgspec.json.encode(
                {"token": good_tokens(1)[0], "push_type": "background", "payload": {"aps": {"content-available": 1}}}
            )
        ],
    )

    assert 0 == run_drained(make_config(mock))

    headers = dict(mock.record.received[0].headers)
    assert ("5", "background", 200) == (
        headers.get("apns-priority"),
        headers.get("apns-push-type"),
        mock.record.received[0].status,
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_a_client_certificate_gets_apple_answers(http2_mock, pki):
    """An independent HTTP/2 client (curl) gets 200 for a valid request and Apple's JSON reason otherwise."""
    mock = http2_mock()
    base = [
        "curl",
        "-s",
        "--http2",
        "--cacert",
        pki.ca_cert,
        "--cert",
        pki.client_pem,
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{http_version}",
        "-H",
        "apns-topic: com.example.app",
        "-d",
        '{"aps":{"alert":"hi"}}',
    ]
    url = f"https://127.0.0.1:{mock.port}/3/device/"

    ok = subprocess.run([*base, url + good_tokens(1)[0]], capture_output=True, text=True, timeout=30)
    bad = subprocess.run([*base, url + "nothex"], capture_output=True, text=True, timeout=30)

    assert "200 2" == ok.stdout.strip()
    body, status = bad.stdout.strip().rsplit("\n", 1)
    assert ("400 2", "BadDeviceToken") == (status, json.loads(body)["reason"])


def test_job_pushed_with_a_future_send_at_waits_in_the_scheduled_set(jq, http2_mock, make_config):
    """A job LPUSHed with send_at ahead is parked in apnsd:scheduled, not sent, and counted nowhere else."""
    import time

    mock = http2_mock()
    later = time.time() + 3600
    push_all(jq, [job(good_tokens(1)[0], send_at=later), job(good_tokens(2)[1])])

    assert 0 == run_drained(make_config(mock))

    assert 1 == len(mock.record.accepted_tokens())
    assert 1 == jq.scheduled_count("apnsd:queue")
    assert 0 == jq.scheduled_count("apnsd:queue", until=later - 1)


def test_an_app_with_several_connections_spreads_work_over_them(jq, rdb, http2_mock, make_config):
    """connections = 3 opens three TLS connections for one app, and each job still arrives exactly once."""
    mock = http2_mock(max_concurrent_streams=20)
    tokens = good_tokens(6000, seed=21)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(mock, APP_DEFAULT_CONNECTIONS="3"))

    assert dict.fromkeys(tokens, 1) == dict(mock.record.accepted_tokens())
    assert 3 == mock.record.connections
    assert [] == inflight_keys(rdb)


def test_scheduled_reconnect_is_make_before_break(jq, rdb, http2_mock, make_config):
    """When reconnect_interval is up, a second connection takes new work while the first finishes its
    streams: two handshakes in all, every job exactly once."""
    import threading
    import time

    from apnsd.worker.daemon import Daemon

    mock = http2_mock(max_concurrent_streams=50)
    tokens = good_tokens(20_000, seed=22)
    push_all(jq, [job(t) for t in tokens])
    daemon = Daemon(make_config(mock), drain=True)
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while len(mock.record.received) < 2000 and time.monotonic() < deadline:
        time.sleep(0.01)
    loop = daemon.loops[0]
    session = loop.sessions["default"]
    loop.post(lambda: setattr(session, "connected_at", session.connected_at - session.cfg.reconnect_interval))
    t.join(60)

    assert not t.is_alive()
    assert dict.fromkeys(tokens, 1) == dict(mock.record.accepted_tokens())
    assert 2 == mock.record.connections
    assert "connection_rotation_started" in LOG.getvalue()
    assert [] == inflight_keys(rdb)


def test_ipv6_loopback_gateway(jq, rdb, pki, make_config):
    """A gateway on [::1] is reached over IPv6, its certificate checked against the IP, :authority bracketed."""
    from apnsd.testing.http2_mock import Http2Faults
    from apnsd.testing.mock import MockGateway

    tokens = good_tokens(50, seed=23)
    push_all(jq, [job(t) for t in tokens])
    with MockGateway(
        "http2", pki.server_cert, pki.server_key, pki.ca_cert, host="::1", http2_faults=Http2Faults()
    ) as mock:
        assert 0 == run_drained(make_config(mock))
        authorities = {dict(r.headers).get(":authority") for r in mock.record.received}

    assert set(tokens) == set(mock.record.accepted_tokens())
    assert {f"[::1]:{mock.port}"} == authorities


def test_a_job_pushed_onto_another_apps_queue_is_dead_lettered_as_wrong_queue_and_requeued_to_its_own(
    jq, rdb, http2_mock, pki, make_config
):
    """A job naming a configured app that reads its own queue, LPUSHed onto the shared queue instead, is
    dead-lettered as wrong_queue (not unknown_app: the app exists), and requeue puts it on the app's queue."""
    mock = http2_mock()
    config = make_config(
        mock,
        APP_OTHER_QUEUE="apnsd:other",
        APP_OTHER_CERT=pki.client_pem,
        APP_OTHER_HOST=mock.host,
        APP_OTHER_PORT=str(mock.port),
        APP_OTHER_CA_FILE=pki.ca_cert,
    )
    stray = job(good_tokens(1, seed=71)[0], app="other")
    push_all(jq, [stray])

    assert 0 == run_drained(config)

    dead = jq.dead_entries(10)
    assert [("wrong_queue", "other", "apnsd:queue")] == [
        (e["reason"].split(":")[0], e["app"], e["queue"]) for e in dead
    ]
    assert 1 == jq.requeue_dead(
        {"default": "apnsd:queue", "other": "apnsd:other"},
        "apnsd:queue",
        None,
        None,
        lanes={"apnsd:queue", "apnsd:other"},
    )
    assert ([], [stray]) == (rdb.lrange("apnsd:queue", 0, -1), rdb.lrange("apnsd:other", 0, -1))
