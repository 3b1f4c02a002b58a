"""End to end over HTTP/2 against the mock gateway: Apple's rules on push types, topics, retries and tokens."""

from __future__ import annotations

import threading

import msgspec
import pytest

from apnsd.client import Client
from apnsd.errors import JobError
from apnsd.gateway.credentials import load_public_key
from apnsd.testing.devpki import BUNDLE_ID, TOPICS
from apnsd.testing.http2_mock import APPLE_REASONS
from apnsd.worker.daemon import Daemon
from tests.support.jobs import LOG, good_tokens, push_all, run_drained
from tests.support.pki import token_auth_env
from tests.support.wait import wait_for


def encode(token: str, payload: dict, **fields: object) -> bytes:
    """One job as an application would LPUSH it."""
    return msgspec.json.encode({"token": token, "payload": payload, **fields})


def test_push_type_priority_and_topic_are_sent_by_default(jq, http2_mock, make_config):
    """Jobs without push_type go out typed (alert, background at priority 5, voip on the bundle id + .voip)."""
    mock = http2_mock(allowed_topics=tuple(t for t, _ in TOPICS))
    alert, silent, voip = good_tokens(3, seed=170)
    push_all(
        jq,
        [
            encode(alert, {"aps": {"alert": "hi"}}),
            encode(silent, {"aps": {"content-available": 1}}),
            encode(voip, {"aps": {}}, push_type="voip"),
        ],
    )

    assert 0 == run_drained(make_config(mock))

    sent = {r.token: dict(r.headers) for r in mock.record.received}
    assert {
        alert: ("alert", None, BUNDLE_ID, 200),
        silent: ("background", "5", BUNDLE_ID, 200),
        voip: ("voip", None, f"{BUNDLE_ID}.voip", 200),
    } == {
        r.token: (
            sent[r.token].get("apns-push-type"),
            sent[r.token].get("apns-priority"),
            sent[r.token].get("apns-topic"),
            r.status,
        )
        for r in mock.record.received
    }


def test_the_client_refuses_a_background_push_at_priority_ten_and_a_topic_without_its_suffix(jq, redis_server):
    """apnsd.client applies the daemon's push-type rules: bad_priority and bad_topic before Redis."""
    client = Client(redis_server.url)
    token = good_tokens(1, seed=171)[0]
    with pytest.raises(JobError) as priority:
        client.enqueue(token, {"aps": {"content-available": 1}}, priority=10)
    with pytest.raises(JobError) as topic:
        client.enqueue(token, {"aps": {}}, push_type="liveactivity", topic=BUNDLE_ID)
    assert ("bad_priority", "bad_topic") == (priority.value.reason, topic.value.reason)
    assert 0 == jq.depth("apnsd:queue")


@pytest.mark.timeout(60)
def test_an_outage_longer_than_the_old_attempt_count_dead_letters_nothing(jq, http2_mock, make_config):
    """Seven 503s per notification (more than any fixed count of quick tries) end in delivery, with no dead letter."""
    tokens = good_tokens(10, seed=172)
    mock = http2_mock(burst_status=(503, "ServiceUnavailable", 70))
    push_all(jq, [encode(t, {"aps": {"alert": "x"}}) for t in tokens])

    assert 0 == run_drained(make_config(mock))

    assert (set(tokens), 0) == (set(mock.record.accepted_tokens()), jq.counts()["dead"])
    assert 70 == jq.counts()["total_retry"]


@pytest.mark.timeout(60)
def test_a_connection_that_goes_silent_under_load_is_detected_and_its_requests_resent(jq, http2_mock, make_config):
    """A gateway that stops answering mid-stream is PINGed, dropped when the PING goes unanswered, and every
    notification still arrives exactly once over a new connection."""
    tokens = good_tokens(300, seed=173)
    mock = http2_mock(stall_after=50)
    push_all(jq, [encode(t, {"aps": {"alert": "x"}}) for t in tokens])

    config = make_config(mock, APP_DEFAULT_STALL_TIMEOUT="0.5", APP_DEFAULT_PING_TIMEOUT="0.5")
    assert 0 == run_drained(config)

    accepted = mock.record.accepted_tokens()
    assert (set(tokens), {1}, 2) == (set(accepted), set(accepted.values()), mock.record.connections)
    assert 0 == jq.counts()["dead"]


def test_receipts_carry_apns_unique_id_in_the_development_environment(jq, rdb, http2_mock, make_config):
    """Against a sandbox gateway, each receipt records the answer's apns-unique-id beside its apns-id."""
    tokens = good_tokens(3, seed=174)
    mock = http2_mock(environment="sandbox")
    push_all(jq, [encode(t, {"aps": {"alert": "x"}}) for t in tokens])

    assert 0 == run_drained(make_config(mock, APP_DEFAULT_ENVIRONMENT="sandbox", REDIS_RESULTS_STREAM="true"))

    receipts = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rdb.xrange("apnsd:results")]
    assert [("delivered", 36, 36)] * 3 == [
        (r["outcome"], len(r["apns_id"]), len(r.get("apns_unique_id", ""))) for r in receipts
    ]


def token_auth(make_config, mock, pki, **env: str):
    """A config for token (.p8) auth against ``mock``."""
    return make_config(
        mock,
        **token_auth_env(pki),
        **env,
    )


@pytest.mark.timeout(60)
# TooManyProviderTokenUpdates parks sends until the token is 20 minutes old: tests/unit/test_http2_session_rules.py
@pytest.mark.parametrize("reason", ["ExpiredProviderToken", "UnrelatedKeyIdInToken"])
def test_provider_token_answers_spend_no_attempt_and_everything_arrives(reason, jq, http2_mock, make_config, pki):
    """Provider-token refusals under max_attempts = 1 dead-letter nothing: each is sent again, uncounted."""
    mock = http2_mock(
        client_ca=False,
        jwt_public_key=load_public_key(pki.p8_public),
        jwt_key_id=pki.key_id,
        jwt_team_id=pki.team_id,
        burst_status=(APPLE_REASONS[reason], reason, 3),
        burst_after=1,
    )
    tokens = good_tokens(20, seed=175)
    push_all(jq, [encode(t, {"aps": {"alert": "x"}}) for t in tokens])

    assert 0 == run_drained(token_auth(make_config, mock, pki, APP_DEFAULT_MAX_ATTEMPTS="1"))

    accepted = mock.record.accepted_tokens()
    assert (set(tokens), {1}, 0) == (set(accepted), set(accepted.values()), jq.counts()["dead"])
    assert 3 == sum(1 for r in mock.record.received if r.reason == reason)


@pytest.mark.timeout(60)
def test_too_many_requests_delays_the_token_and_then_delivers(jq, http2_mock, make_config):
    """429 TooManyRequests is retried after throttle_delay through the scheduled set, then delivered once."""
    tokens = good_tokens(10, seed=176)
    mock = http2_mock(burst_status=(429, "TooManyRequests", 10))
    push_all(jq, [encode(t, {"aps": {"alert": "x"}}) for t in tokens])

    assert 0 == run_drained(make_config(mock))

    accepted = mock.record.accepted_tokens()
    assert (set(tokens), {1}, 0, 10) == (
        set(accepted),
        set(accepted.values()),
        jq.counts()["dead"],
        jq.counts()["total_retry"],
    )


@pytest.mark.timeout(60)
def test_an_idle_timeout_goaway_is_followed_by_a_new_connection_for_the_next_job(jq, http2_mock, make_config):
    """After APNs ends an idle connection with GOAWAY IdleTimeout, the next job goes out on a new connection."""
    first, second = good_tokens(2, seed=177)
    mock = http2_mock(idle_timeout=0.3)
    daemon = Daemon(make_config(mock))
    thread = threading.Thread(target=daemon.run, daemon=True)
    mark = len(LOG.getvalue())
    push_all(jq, [encode(first, {"aps": {"alert": "x"}})])
    thread.start()
    try:
        wait_for(lambda: '"IdleTimeout"' in LOG.getvalue()[mark:], 10, "the IdleTimeout GOAWAY")
        push_all(jq, [encode(second, {"aps": {"alert": "x"}})])
        wait_for(lambda: second in mock.record.accepted_tokens(), 10, "the second job")
    finally:
        daemon.request_stop()
        thread.join(30)

    assert ({first: 1, second: 1}, 2) == (dict(mock.record.accepted_tokens()), mock.record.connections)
