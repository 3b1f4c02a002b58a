"""apnsd against independent gateways on Node's http2 and tls modules: real redis-server, real TLS, the daemon.

Each case makes the gateway behave in a way an HTTP/2 or binary server other than our mocks legitimately may,
and checks the exact outcomes in Redis and what the gateway received: every token accepted exactly once.
"""

from __future__ import annotations

import threading
from collections import Counter

import msgspec
import pytest

from apnsd.worker.daemon import Daemon
from tests.support.daemons import events_since
from tests.support.jobs import LOG, good_tokens, inflight_keys, job, push_all, run_drained
from tests.support.pki import token_auth_env
from tests.support.wait import wait_for

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
    assert dict.fromkeys(ruled[GONE], "Unregistered") == {t: v["reason"] for t, v in jq.unregistered().items()}
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
    """HEADERS (20 KB of them: continued in CONTINUATION frames) alone, then an error body in 3-byte DATA frames, or
    an empty DATA frame with END_STREAM for a 200."""
    gateway = node_gateway("http2", rules=HTTP2_RULES, split=3, filler=20_000)
    tokens, ruled = mixed(200, seed=103)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert_mixed_outcomes(jq, gateway, tokens, ruled)
    assert [] == inflight_keys(rdb)


@pytest.mark.parametrize(("limit", "later"), [(1, 7), (7, 1)])
def test_http2_low_stream_limit_changed_mid_connection(jq, rdb, node_gateway, make_config, limit, later):
    """SETTINGS_MAX_CONCURRENT_STREAMS below ours (and a header table of 0), changed after the 50th request: each
    limit is used in full and never exceeded, on one connection, and everything arrives once."""
    gateway = node_gateway(
        "http2",
        settings={"maxConcurrentStreams": limit, "headerTableSize": 0},
        settingsAt=[50, {"maxConcurrentStreams": later}],
    )
    tokens = good_tokens(300, seed=104)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    opens = [e["open"] for e in gateway.of("req")]
    assert (limit, later) == (max(opens[:50]), max(opens[100:]))
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


@pytest.mark.parametrize("notice", [False, True])
def test_http2_graceful_goaway_resends_only_the_unprocessed_streams(jq, rdb, node_gateway, make_config, notice):
    """GOAWAY naming the 8th of 20 held streams (with or without a shutdown notice naming 2^31-1 first): those up
    to it are answered there, the others are sent again on a new connection, uncounted, none accepted twice."""
    gateway = node_gateway("http2", goawayAt=[20, 8, notice], settings={"maxConcurrentStreams": 50})
    tokens = good_tokens(200, seed=106)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    (note,) = gateway.of("note", what="goaway")
    assert 12 <= len(note["dropped"])
    assert 8 == len(gateway.of("ans", conn=0))
    assert set(note["dropped"]) <= {e["token"] for e in gateway.of("ans", conn=1)}
    assert (200, 0) == (jq.counts()["total_delivered"], jq.counts().get("total_retry", 0))
    assert [] == inflight_keys(rdb)


def test_http2_gateway_capping_requests_per_connection(jq, rdb, node_gateway, make_config):
    """A gateway that closes every connection gracefully after 500 requests (GOAWAY naming the last one it took, as
    nginx's keepalive_requests does): the requests beyond it on each connection are resent, none accepted twice."""
    gateway = node_gateway("http2", maxRequests=500, settings={"maxConcurrentStreams": 100})
    tokens = good_tokens(3000, seed=118)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    assert 5 <= len(gateway.of("note", what="max_requests"))  # 500 each (and the streams it had taken by then)
    assert (3000, 0) == (jq.counts()["total_delivered"], jq.counts().get("total_retry", 0))
    assert [] == inflight_keys(rdb)


def test_http2_goaway_with_an_error_leaves_suspects_that_are_sent_alone(jq, rdb, node_gateway, make_config):
    """GOAWAY(ENHANCE_YOUR_CALM, "TooManyRequests") naming the 8th of 20 held streams, none answered, then the close:
    the 8 may have been processed, so each is sent again alone (a suspect); the 12 above it are plainly resent."""
    gateway = node_gateway(
        "http2", goawayAt=[20, 8], goawayError=[11, "TooManyRequests"], settings={"maxConcurrentStreams": 50}
    )
    tokens = good_tokens(200, seed=115)
    push_all(jq, [job(t) for t in tokens])
    mark = len(LOG.getvalue())

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    assert [] == gateway.of("ans", conn=0)
    (goaway,) = events_since(mark, "goaway")
    assert ("TooManyRequests", 11) == (goaway["reason"], goaway["error_code"])
    suspects = {e["token"] for e in gateway.of("req", conn=0)[:8]}
    assert {1} == {e["open"] for e in gateway.of("req", conn=1) if e["token"] in suspects}  # each alone
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


def test_http2_padded_frames_informational_answers_and_trailers(jq, rdb, node_gateway, make_config):
    """Every HEADERS and DATA frame padded to the maximum, a 103 before every answer, and answers that end with
    trailers: outcomes unchanged."""
    gateway = node_gateway("http2", rules=HTTP2_RULES, padding=True, trailers=True, informational=True)
    tokens, ruled = mixed(200, seed=110)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert_mixed_outcomes(jq, gateway, tokens, ruled)
    assert [] == inflight_keys(rdb)


def test_http2_window_shrunk_mid_connection(jq, rdb, node_gateway, make_config):
    """SETTINGS_INITIAL_WINDOW_SIZE cut from 65,535 to 50 bytes after the 10th request, while 3 KB bodies are
    being sent: stream windows go negative and recover, and every body arrives whole, once."""
    gateway = node_gateway("http2", settings={"maxConcurrentStreams": 30}, settingsAt=[10, {"initialWindowSize": 50}])
    tokens = good_tokens(60, seed=111)
    body = {"aps": {"alert": "y" * 3000}}
    push_all(jq, [job(t, payload=body) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    assert {len(msgspec.json.encode(body))} == {e["len"] for e in gateway.of("req")}
    assert [] == inflight_keys(rdb)


# Binary: token prefix -> (error status, reason in Redis, times; 0 = every time)
BINARY_RULES = [
    ["b008", 8, "InvalidToken", 0],
    ["b007", 7, "InvalidPayloadSize", 0],
    ["c001", 1, "ProcessingError", 1],
    ["c010", 10, "Shutdown", 1],  # names the last frame processed: delivered, the rest written again
]


def binary_mixed(n: int, seed: int) -> tuple[list[str], dict[str, list[str]]]:
    """``n`` good tokens with two of each binary rule's prefix spread among them."""
    good = good_tokens(n + 2 * len(BINARY_RULES), seed=seed)
    ruled = {
        prefix: [prefix + good[n + 2 * i][4:], prefix + good[n + 2 * i + 1][4:]]
        for i, (prefix, *_r) in enumerate(BINARY_RULES)
    }
    tokens = good[:n]
    for i, t in enumerate(t for ts in ruled.values() for t in ts):
        tokens.insert((i + 1) * n // (2 * len(BINARY_RULES) + 1), t)
    return tokens, ruled


def assert_binary_outcomes(jq, tokens: list[str], ruled: dict[str, list[str]]) -> None:
    """Redis holds exactly the outcomes BINARY_RULES ask for."""
    assert dict.fromkeys(ruled["b008"], "InvalidToken") == {t: v["reason"] for t, v in jq.unregistered().items()}
    assert {("InvalidPayloadSize", 7, t) for t in ruled["b007"]} == {
        (e["reason"], e["status"], e["token"]) for e in jq.dead_entries(100)
    }
    counts = jq.counts()
    assert (len(tokens) - 4, 2, 2, 2) == (
        counts["total_delivered"],
        counts["total_unregistered"],
        counts["total_dead"],
        counts["total_retry"],
    )


@pytest.mark.parametrize(
    ("on_error", "delay_ms"), [("fin", 0), ("fin-only", 0), ("delay", 100), ("reset", 0), ("reset", 20), ("split", 30)]
)
def test_binary_error_responses_then_close(jq, rdb, node_gateway, make_config, on_error, delay_ms):
    """The 6-byte error response written with the close (TLS close_notify and FIN in the same event-loop turn, or
    the FIN alone), followed by the close 100 ms later, followed by a TCP reset (at once or 20 ms later), or split
    in two writes 30 ms apart: the named frame gets its outcome, the frames after it are written again, and every
    accepted token reached the gateway exactly once."""
    gateway = node_gateway("binary", rules=BINARY_RULES, onError=on_error, delayMs=delay_ms)
    tokens, ruled = binary_mixed(700, seed=201)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert_binary_outcomes(jq, tokens, ruled)
    final = set(ruled["b008"] + ruled["b007"])
    assert dict.fromkeys([t for t in tokens if t not in final], 1) == dict(gateway.accepted())
    assert 9 == len({e["conn"] for e in gateway.of("ans")})  # eight errors end eight connections (standbys aside)
    assert [] == inflight_keys(rdb)


def test_binary_close_without_error_response(jq, rdb, node_gateway, make_config):
    """A gateway that drops the connection without a word on a frame it cannot take (once): every job still gets
    one outcome, delivered. The frames it had accepted on that connection but apnsd had not yet confirmed are
    written again: the only duplicates, which the binary protocol cannot avoid (no acknowledgement exists)."""
    gateway = node_gateway("binary", rules=[["e000", 255, "Unknown", 1]], onError="silent")
    good = good_tokens(600, seed=202)
    tokens = [*good[:300], "e000" + good[300][4:], *good[301:]]
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    accepted = gateway.accepted()
    assert set(tokens) == set(accepted)
    unconfirmed_at_drop = {e["token"] for e in gateway.of("ans", conn=0, status=0)}
    assert {t for t, c in accepted.items() if c > 1} <= unconfirmed_at_drop
    assert max(accepted.values()) <= 2
    counts = jq.counts()
    assert (600, 0, 0) == (counts["total_delivered"], counts["dead"], counts["unregistered"])
    assert [] == inflight_keys(rdb)


def test_binary_error_naming_a_frame_confirmed_long_ago(jq, rdb, node_gateway, make_config):
    """An error response (status 8) naming the connection's first frame, 400 ms after the last one (confirm_delay
    is 0.2 s): nothing is undone or sent twice, the late answer is logged, and delivery goes on."""
    gateway = node_gateway("binary", lateAt=[50, 400])
    tokens, later = good_tokens(50, seed=203), good_tokens(50, seed=204)
    mark = len(LOG.getvalue())
    daemon = Daemon(make_config(gateway))
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        push_all(jq, [job(t) for t in tokens])
        wait_for(lambda: gateway.of("note", what="late"), 10, "the late error response")
        push_all(jq, [job(t) for t in later])
        wait_for(lambda: jq.counts().get("total_delivered") == 100, 10, "100 deliveries")
    finally:
        daemon.request_stop()
        thread.join(10)

    assert dict.fromkeys(tokens + later, 1) == dict(gateway.accepted())
    assert "error_response_late" in LOG.getvalue()[mark:]
    counts = jq.counts()
    assert (100, 0, 0) == (counts["total_delivered"], counts["dead"], counts["unregistered"])
    assert [] == inflight_keys(rdb)


def test_http2_answer_before_the_body_then_reset_no_error(jq, rdb, node_gateway, make_config):
    """A gateway that answers 413 as soon as the headers arrive, then resets the stream with NO_ERROR while the body
    waits for its window (RFC 9113 8.1): that answer is the outcome, and the other requests are not disturbed."""
    gateway = node_gateway(
        "http2", early=["b413", 413, "PayloadTooLarge"], settings={"initialWindowSize": 100}, extensions=True
    )
    good = good_tokens(43, seed=112)
    big = ["b413" + t[4:] for t in good[40:]]
    body = {"aps": {"alert": "z" * 3000}}
    push_all(jq, [job(t, payload=body) for t in good[:40] + big])

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(good[:40], 1) == dict(gateway.accepted())
    assert {("PayloadTooLarge", 413, t) for t in big} == {
        (e["reason"], e["status"], e["token"]) for e in jq.dead_entries(10)
    }
    assert (40, 3) == (jq.counts()["total_delivered"], jq.counts()["total_dead"])
    assert [] == inflight_keys(rdb)


def test_http2_no_stream_allowed_until_the_gateway_raises_its_limit(jq, rdb, node_gateway, make_config):
    """SETTINGS_MAX_CONCURRENT_STREAMS 0 at first (a request sent before our client saw it is refused), raised to
    5 after 300 ms on the same connection: everything waits, then arrives once, without a reconnect."""
    gateway = node_gateway("http2", settings={"maxConcurrentStreams": 0}, settingsIn=[300, {"maxConcurrentStreams": 5}])
    tokens = good_tokens(100, seed=113)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    assert 5 == max(e["open"] for e in gateway.of("req"))
    assert (1, 100, 0) == (len(gateway.of("conn")), jq.counts()["total_delivered"], jq.counts().get("total_retry", 0))
    assert [] == inflight_keys(rdb)


def test_http2_request_the_gateway_never_answers_is_cancelled_and_retried(jq, rdb, node_gateway, make_config):
    """A request the gateway leaves unanswered on a connection that answers everything else (and our PINGs) is
    cancelled with RST_STREAM(CANCEL) after stall_timeout + ping_timeout and retried, counted: it does not wait
    for as long as the connection lives."""
    gateway = node_gateway("http2", silence="e5")
    good = good_tokens(100, seed=114)
    tokens = [*good[:50], "e5" + good[50][2:], *good[51:]]
    push_all(jq, [job(t) for t in tokens])
    mark = len(LOG.getvalue())

    assert 0 == run_drained(make_config(gateway, APP_DEFAULT_STALL_TIMEOUT="0.3", APP_DEFAULT_PING_TIMEOUT="0.3"))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    assert [8] == [e["code"] for e in gateway.of("note", what="closed")]  # CANCEL
    assert (100, 1, 1) == (jq.counts()["total_delivered"], jq.counts()["total_retry"], len(gateway.of("conn")))
    assert 1 == len(events_since(mark, "requests_unanswered", cancelled=1))
    assert [] == inflight_keys(rdb)


def test_binary_gateway_reading_slower_than_usual_under_a_longer_confirm_delay(jq, rdb, node_gateway, make_config):
    """A gateway that stops reading for 300 ms (frames wait in socket buffers) and then rejects a token: with
    confirm_delay above that lag nothing was confirmed early, so the rejection and the resend come out exact."""
    gateway = node_gateway("binary", rules=[["b008", 8, "InvalidToken", 0]], pauseAt=[10, 300])
    good = good_tokens(400, seed=205)
    gone = "b008" + good[200][4:]
    tokens = [*good[:200], gone, *good[201:]]
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway, APP_DEFAULT_CONFIRM_DELAY="1.0"))

    assert dict.fromkeys([t for t in tokens if t != gone], 1) == dict(gateway.accepted())
    assert {gone: "InvalidToken"} == {t: v["reason"] for t, v in jq.unregistered().items()}
    assert 1 == len(gateway.of("note", what="pause"))
    assert (399, 1) == (jq.counts()["total_delivered"], jq.counts()["total_unregistered"])
    assert [] == inflight_keys(rdb)


def test_http2_sandbox_receipts_carry_the_ids_the_gateway_sent(jq, rdb, node_gateway, make_config, pki):
    """In the development environment every answer is read for apns-id and apns-unique-id (nghttp2's HPACK, padded
    frames): each receipt holds exactly the ids this gateway sent for that token."""
    gateway = node_gateway("http2", rules=HTTP2_RULES, uniqueId=True, padding=True)
    tokens, _ = mixed(100, seed=116)
    push_all(jq, [job(t) for t in tokens])

    config = make_config(
        gateway, APP_DEFAULT_ENVIRONMENT="sandbox", APP_DEFAULT_CERT=pki.sandbox_pem, REDIS_RESULTS_STREAM="true"
    )
    assert 0 == run_drained(config)

    receipts = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rdb.xrange("apnsd:results")]
    sent = {(e["token"], e["apnsId"], e["unique"]) for e in gateway.of("ans")}
    final = [r for r in receipts if r["outcome"] != "retry"]
    assert len(tokens) == len(final)
    assert {(r["token"], r["apns_id"], r["apns_unique_id"]) for r in receipts} <= sent


def test_http2_token_auth_requests_decode_on_nghttp2(jq, rdb, node_gateway, make_config, pki):
    """Under token auth (.p8) every request carries its bearer token through nghttp2's HPACK decoder, and arrives."""
    gateway = node_gateway("http2", clientCert=False, settings={"maxConcurrentStreams": 20})
    tokens = good_tokens(300, seed=117)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(gateway, **token_auth_env(pki)))

    assert dict.fromkeys(tokens, 1) == dict(gateway.accepted())
    assert {"bearer"} == {e["auth"] for e in gateway.of("req")}
    assert [] == inflight_keys(rdb)
