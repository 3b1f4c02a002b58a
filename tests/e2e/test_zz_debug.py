import json
import pytest
from tests.e2e.test_interop_node import HTTP2_RULES, mixed, assert_mixed_outcomes
from tests.support.jobs import good_tokens, job, push_all, run_drained, LOG

@pytest.mark.parametrize("variant", range(6))
def test_dbg(jq, rdb, node_gateway, make_config, variant):
    opts = [
        dict(reverse=50, split=5, padding=True, settings={"maxConcurrentStreams": 100, "initialWindowSize": 200}),
        dict(reverse=7, trailers=True, settings={"maxConcurrentStreams": 13}, settingsAt=[500, {"maxConcurrentStreams": 3, "initialWindowSize": 30}]),
        dict(goawayAt=[90, 45, True], reverse=10, settings={"maxConcurrentStreams": 100}),
        dict(closeAt=1000, reverse=20, settings={"maxConcurrentStreams": 64}),
        dict(rst=[["e7", 7], ["e8", 8]], ping=3, split=1, settings={"maxConcurrentStreams": 33}),
        dict(early=["b413", 413, "PayloadTooLarge"], settings={"initialWindowSize": 10, "maxConcurrentStreams": 20}, extensions=True),
    ][variant]
    gateway = node_gateway("http2", rules=HTTP2_RULES, **opts)
    tokens, ruled = mixed(3000, seed=400 + variant)
    push_all(jq, [job(t) for t in tokens])
    assert 0 == run_drained(make_config(gateway), timeout=60)
    assert_mixed_outcomes(jq, gateway, tokens, ruled)
