"""Hostile input end to end: jobs, Redis state and config values an attacker or a mistake could produce."""

from __future__ import annotations

import pytest

from tests.support.faultkit import DaemonThread, LogTap
from tests.support.jobs import good_tokens, inflight_keys, job, push_all
from tests.support.supervised import wait_for


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", ["apnsd:dead", "apnsd:stats"])
def test_wrong_typed_shared_key_keeps_the_batch_in_flight_until_fixed_then_commits_once(
    key, jq, rdb, http2_mock, make_config
):
    """A shared key holding a string stops commits (logged once, naming the key) without losing an outcome."""
    mock = http2_mock()
    rdb.set(key, "not what apnsd writes here")
    tokens = good_tokens(20, seed=7)
    push_all(jq, [job(t) for t in tokens] + [job("nothex"), b"{not json"])
    tap = LogTap()
    d = DaemonThread(make_config(mock)).start()
    try:
        wait_for(lambda: tap.events("redis_key_wrong_type"), 20, "redis_key_wrong_type")
        assert 1 == len(inflight_keys(rdb))
        rdb.delete(key)
        wait_for(lambda: not inflight_keys(rdb), 20, "the batch to be committed")
    finally:
        d.stop()
        assert 0 == d.join(30)
    events = tap.events("redis_key_wrong_type")
    print(f"case=wrong_type_{key} events={len(events)} dead={rdb.llen('apnsd:dead')}")
    assert [key] == [e["key"] for e in events]
    assert "redis_unavailable_for_outcomes" not in {e["event"] for e in tap.events()}
    assert 2 == rdb.llen("apnsd:dead")
    assert (set(tokens), 20) == (set(mock.record.accepted_tokens()), sum(mock.record.accepted_tokens().values()))
    if key == "apnsd:stats":
        assert {b"delivered": b"20", b"dead": b"2"} == rdb.hgetall("apnsd:stats")
