"""apnsd against independent gateways on Node's http2 and tls modules: real redis-server, real TLS, the daemon.

Each case makes the gateway behave in a way an HTTP/2 or binary server other than our mocks legitimately may,
and checks the exact outcomes in Redis and what the gateway received: every token accepted exactly once.
"""

from __future__ import annotations

from collections import Counter

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
