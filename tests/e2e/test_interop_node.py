"""apnsd against independent gateways on Node's http2 and tls modules: real redis-server, real TLS, the daemon.

Each case makes the gateway behave in a way an HTTP/2 or binary server other than our mocks legitimately may,
and checks the exact outcomes in Redis and what the gateway received: every token accepted exactly once.
"""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest

from tests.support.jobs import LOG, good_tokens, inflight_keys, job, push_all, run_drained

pytestmark = pytest.mark.timeout(30)

GONE, BAD, TOO_BIG, FORBIDDEN, BUSY, FAILING = "d410", "b400", "b413", "b403", "c429", "c500"
# token prefix -> (status, Apple's reason, how many times; 0 = every time)
HTTP2_RULES = [
    [GONE, 410, "Unregistered", 0],
    [BAD, 400, "BadDeviceToken", 0],
    [TOO_BIG, 413, "PayloadTooLarge", 0],
    [FORBIDDEN, 403, "Forbidden", 0],
    [BUSY, 429, "TooManyRequests", 1],
    [FAILING, 500, "InternalServerError", 1],
    ["c503", 503, "ServiceUnavailable", 1],
]


def mixed(n: int, seed: int) -> tuple[list[str], dict[str, list[str]]]:
    """``n`` good tokens plus two of each rule's prefix; returns all tokens and the ruled ones by prefix."""
    good = good_tokens(n + 2 * len(HTTP2_RULES), seed=seed)
    ruled: dict[str, list[str]] = {}
    for i, (prefix, *_rest) in enumerate(HTTP2_RULES):
        ruled[prefix] = [prefix + good[n + 2 * i][4:], prefix + good[n + 2 * i + 1][4:]]
    tokens = good[:n] + [t for ts in ruled.values() for t in ts]
    return tokens, ruled


def assert_mixed_outcomes(jq, gateway, tokens: list[str], ruled: dict[str, list[str]]) -> None:
    """Redis holds exactly the outcomes HTTP2_RULES ask for, and every deliverable token was accepted once."""
    final = {GONE, BAD, TOO_BIG, FORBIDDEN}
    deliverable = [t for t in tokens if t[:4] not in final]
    assert dict.fromkeys(deliverable, 1) == dict(gateway.accepted())
    assert {t: "Unregistered" for t in ruled[GONE]} == {t: v["reason"] for t, v in jq.unregistered().items()}
    dead = Counter((e["reason"], e["status"], e["token"]) for e in jq.dead_entries(100))
    expected = {
        (reason, status, t): 1
        for prefix, status, reason, _ in HTTP2_RULES
        if prefix in (BAD, TOO_BIG, FORBIDDEN)
        for t in ruled[prefix]
    }
    assert expected == dict(dead)
    counts = jq.counts()
    assert (len(deliverable), 2, 6, 6) == (
        counts["total_delivered"],
        counts["total_unregistered"],
        counts["total_dead"],
        counts["total_retry"],
    )


def test_http2_mixed_answers_land_in_the_right_stores(jq, rdb, node_gateway, make_config):
    """200, 400, 403, 410 (with timestamp), 413, and a 429/500/503 retried once: each token gets its one outcome."""
    gateway = node_gateway("http2", rules=HTTP2_RULES)
    tokens, ruled = mixed(200, seed=101)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert_mixed_outcomes(jq, gateway, tokens, ruled)
    assert all(isinstance(v["timestamp_ms"], int) for v in jq.unregistered().values())
    assert [] == inflight_keys(rdb)


def test_http2_answers_in_reverse_order_of_the_requests(jq, rdb, node_gateway, make_config):
    """A gateway that answers held requests newest first still gives every token its own outcome."""
    gateway = node_gateway("http2", rules=HTTP2_RULES, reverse=16, settings={"maxConcurrentStreams": 40})
    tokens, ruled = mixed(400, seed=102)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert_mixed_outcomes(jq, gateway, tokens, ruled)
    answers = [e["sid"] for e in gateway.of("ans", conn=0)]
    assert answers != sorted(answers)
    assert [] == inflight_keys(rdb)


def test_http2_headers_and_body_in_separate_frames(jq, rdb, node_gateway, make_config):
    """HEADERS alone, then an error body in 3-byte DATA frames, or an empty DATA frame with END_STREAM for a 200."""
    gateway = node_gateway("http2", rules=HTTP2_RULES, split=3)
    tokens, ruled = mixed(200, seed=103)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert_mixed_outcomes(jq, gateway, tokens, ruled)
    assert [] == inflight_keys(rdb)


@pytest.mark.parametrize("limit", [1, 7])
def test_http2_low_stream_limit_lowered_to_one_mid_connection(jq, rdb, node_gateway, make_config, limit):
    """SETTINGS_MAX_CONCURRENT_STREAMS below ours, then 1 from the 50th request on: never exceeded, all arrive."""
    gateway = node_gateway(
        "http2", settings={"maxConcurrentStreams": limit}, settingsAt=[50, {"maxConcurrentStreams": 1}]
    )
    tokens = good_tokens(300, seed=104)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    assert limit == max(e["open"] for e in gateway.of("req"))
    assert 1 == len(gateway.of("conn"))
    assert [] == inflight_keys(rdb)


def test_http2_small_window_splits_request_bodies(jq, rdb, node_gateway, make_config):
    """An initial window of 100 bytes and the smallest max frame size: 3 KB bodies go out in slices, all arrive."""
    gateway = node_gateway("http2", settings={"initialWindowSize": 100, "maxFrameSize": 16384})
    tokens = good_tokens(40, seed=105)
    body = {"aps": {"alert": "x" * 3000}}
    push_all(jq, [job(t, payload=body) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    assert {len(msgspec.json.encode(body))} == {e["len"] for e in gateway.of("req")}
    assert [] == inflight_keys(rdb)


def test_http2_graceful_goaway_resends_only_the_unprocessed_streams(jq, rdb, node_gateway, make_config):
    """GOAWAY naming the 8th of 20 held streams: those up to it are answered there, the 12 others are sent again
    on a new connection, uncounted, and nothing is accepted twice."""
    gateway = node_gateway("http2", goawayAt=[20, 8], settings={"maxConcurrentStreams": 50})
    tokens = good_tokens(200, seed=106)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    (note,) = gateway.of("note", what="goaway")
    assert 12 == len(note["dropped"])
    assert 8 == len(gateway.of("ans", conn=0))
    assert set(note["dropped"]) <= {e["token"] for e in gateway.of("ans", conn=1)}
    assert (200, 0) == (jq.counts()["total_delivered"], jq.counts().get("total_retry", 0))
    assert [] == inflight_keys(rdb)


def test_http2_reset_streams(jq, rdb, node_gateway, make_config):
    """RST_STREAM(REFUSED_STREAM) is sent again at once, uncounted; RST_STREAM(CANCEL) is a counted retry."""
    gateway = node_gateway("http2", rst=[["e7", 7], ["e8", 8]])
    good = good_tokens(106, seed=107)
    refused = ["e7" + t[2:] for t in good[100:103]]
    cancelled = ["e8" + t[2:] for t in good[103:]]
    tokens = good[:100] + refused + cancelled
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    assert 6 == len(gateway.of("note", what="rst"))
    assert (106, 3) == (jq.counts()["total_delivered"], jq.counts()["total_retry"])
    assert [] == inflight_keys(rdb)


def test_http2_pings_from_the_gateway_are_answered(jq, rdb, node_gateway, make_config):
    """A gateway that PINGs after every 10th request gets every PING acknowledged, and delivery goes on."""
    gateway = node_gateway("http2", ping=10)
    tokens = good_tokens(100, seed=108)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    assert 10 == len(gateway.of("pong"))
    assert [] == inflight_keys(rdb)


def test_http2_gateway_closing_the_socket_after_a_response(jq, rdb, node_gateway, make_config):
    """The gateway closes its socket right after its 30th answer: what was in flight is sent again, once."""
    gateway = node_gateway("http2", closeAt=30, settings={"maxConcurrentStreams": 20})
    tokens = good_tokens(300, seed=109)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    assert 30 == len(gateway.of("ans", conn=0))
    assert 2 == len(gateway.of("conn"))
    assert (300, 0) == (jq.counts()["total_delivered"], jq.counts().get("total_retry", 0))
    assert [] == inflight_keys(rdb)
