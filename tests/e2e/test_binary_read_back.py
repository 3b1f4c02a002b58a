"""Binary windows hold written jobs by their position in Redis (core/slim.py): the daemon reads them back from their
in-flight lists when the gateway names one or they must be sent again, with real Redis, real TLS and a real daemon,
also when Redis refuses that read or the list is gone."""

from __future__ import annotations

import ssl
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from apnsd.wire import binary
from tests.support.binary_gateway import BinaryGateway, frames_from
from tests.support.jobs import good_tokens, inflight_keys, job, push_all, run_drained

BAD = "bad0"


class NamingGateway(BinaryGateway):
    """A binary gateway that reads every frame; the first frame whose token starts with BAD runs ``hook`` (the test's
    interference with Redis) and is then answered with error response 8 (InvalidToken), ending the connection. Later
    BAD frames are answered the same way without the hook. ``read`` counts the tokens read, BAD ones included."""

    def __init__(self, pki: Any, hook: Callable[[], None]) -> None:
        self.hook, self.read = hook, Counter[str]()
        self.hooked = threading.Event()
        self._lock = threading.Lock()
        super().__init__(pki)

    def serve(self, conn: ssl.SSLSocket, number: int) -> None:
        """Read frames until a BAD one, which is answered with error response 8 and ends the connection."""
        with conn:
            for f in frames_from(conn, self.stop):
                token = f.token.hex()
                with self._lock:
                    self.read[token] += 1
                if token.startswith(BAD):
                    if not self.hooked.is_set():
                        self.hook()
                        self.hooked.set()
                    conn.sendall(binary.encode_error_response(8, f.identifier))
                    return  # the gateway ends the connection; what followed on it is discarded


def refuse_clients(url: str, seconds: float) -> None:
    """Redis refuses every client for ``seconds``: a password set and every other connection killed (an outage that
    answers at once, unlike a blackholed one), then the password taken away again."""
    admin = redis.Redis.from_url(url)
    admin.config_set("requirepass", "not-apnsd")
    admin.execute_command("AUTH", "not-apnsd")
    admin.client_kill_filter(_type="normal", skipme=True)
    threading.Timer(seconds, lambda: admin.config_set("requirepass", "")).start()


def jobs_with_one_bad(count: int, bad_at: int, seed: int) -> list[str]:
    tokens = good_tokens(count, seed=seed)
    tokens[bad_at] = BAD + tokens[bad_at][len(BAD) :]
    return tokens


def drain(gateway: NamingGateway, make_config: Callable[..., Any]) -> None:
    try:
        assert 0 == run_drained(make_config(gateway, APP_DEFAULT_STANDBY_CONNECTIONS="0"), timeout=60)
    finally:
        gateway.close()


def test_the_named_job_and_those_after_it_are_read_back_from_redis_and_each_ends_once(jq, rdb, pki, make_config):
    """An error response names a job the window held by position only: its dead-letter-free unregistered record
    carries the right token, every other job reaches the gateway, and nothing is left in flight."""
    tokens = jobs_with_one_bad(5000, 3210, seed=41)
    gateway = NamingGateway(pki, lambda: None)
    push_all(jq, [job(t) for t in tokens])

    drain(gateway, make_config)

    assert {tokens[3210]} == set(jq.unregistered())
    assert set(tokens) == set(gateway.read)
    stats = {k.decode(): int(v) for k, v in rdb.hgetall("apnsd:stats").items()}
    assert (4999, 1) == (stats.get("delivered"), stats.get("unregistered"))
    assert ([], []) == (jq.dead_entries(10), inflight_keys(rdb))


def test_redis_refusing_the_read_back_delays_the_named_job_without_losing_any(jq, rdb, pki, make_config, redis_server):
    """Redis refuses every new connection (a password set, the daemon's connections killed) when the gateway names a
    held job: its outcome and the resend wait until Redis answers again, then every job ends exactly once."""
    tokens = jobs_with_one_bad(5000, 2500, seed=43)

    gateway = NamingGateway(pki, lambda: refuse_clients(redis_server.url, 1.5))
    push_all(jq, [job(t) for t in tokens])

    drain(gateway, make_config)

    assert gateway.hooked.is_set()
    assert {tokens[2500]} == set(jq.unregistered())
    assert set(tokens) == set(gateway.read)
    stats = {k.decode(): int(v) for k, v in rdb.hgetall("apnsd:stats").items()}
    assert (4999, 1) == (stats.get("delivered"), stats.get("unregistered"))
    assert ([], []) == (jq.dead_entries(10), inflight_keys(rdb))


def test_a_job_gone_from_its_in_flight_list_is_dead_lettered_with_the_reason_not_dropped(jq, rdb, pki, make_config):
    """An operator deletes the in-flight lists while the window holds their jobs by position: the named job and the
    ones after it in those batches cannot be read back. Each is dead-lettered as in_flight_job_lost, saying which
    job of which batch, with a null job that `apnsd dead requeue` leaves alone, and every other job still ends
    exactly once."""
    tokens = jobs_with_one_bad(3000, 1500, seed=47)

    def delete_lists() -> None:
        for key in rdb.scan_iter(match="*:inflight-batch:*"):
            rdb.delete(key)

    gateway = NamingGateway(pki, delete_lists)
    push_all(jq, [job(t) for t in tokens])

    drain(gateway, make_config)

    dead = jq.dead_entries(5000)
    assert dead and {"in_flight_job_lost"} == {d["reason"] for d in dead}
    assert all("of in-flight batch" in d["detail"] and "gone from Redis" in d["detail"] for d in dead)
    assert all(d["job"] is None for d in dead)  # nothing to requeue: `apnsd dead requeue` leaves them
    assert 0 == jq.requeue_dead({}, "apnsd:queue", None, "in_flight_job_lost")
    stats = {k.decode(): int(v) for k, v in rdb.hgetall("apnsd:stats").items()}
    assert 3000 == stats.get("delivered", 0) + stats.get("dead", 0) + stats.get("unregistered", 0)
    assert len(set(tokens) - set(gateway.read)) <= len(dead)  # every job the gateway never read is dead-lettered
    assert [] == inflight_keys(rdb)


LANES = {"APP_DEFAULT_LANES": "urgent,default,bulk"}
URGENT, BULK = "apnsd:queue:urgent", "apnsd:queue:bulk"


def drain_lanes(gateway: NamingGateway, make_config: Callable[..., Any]) -> None:
    try:
        assert 0 == run_drained(make_config(gateway, APP_DEFAULT_STANDBY_CONNECTIONS="0", **LANES), timeout=60)
    finally:
        gateway.close()


def test_a_queue_with_lanes_drains_with_named_jobs_read_back_from_their_lane_lists(jq, rdb, pki, make_config):
    """Jobs on the urgent and bulk lanes of a binary app, one bad token in each: both are read back from their lane's
    in-flight list and recorded unregistered, every other job reaches the gateway, each job ends exactly once."""
    tokens = jobs_with_one_bad(4000, 3100, seed=53)
    tokens[100] = BAD + tokens[100][len(BAD) :]
    push_all(jq, [job(t) for t in tokens[:500]], URGENT)
    push_all(jq, [job(t) for t in tokens[500:]], BULK)
    gateway = NamingGateway(pki, lambda: None)

    drain_lanes(gateway, make_config)

    assert {tokens[100], tokens[3100]} == set(jq.unregistered())
    assert set(tokens) == set(gateway.read)
    stats = {k.decode(): int(v) for k, v in rdb.hgetall("apnsd:stats").items()}
    assert (3998, 2) == (stats.get("delivered"), stats.get("unregistered"))
    assert ([], []) == (jq.dead_entries(10), inflight_keys(rdb))


def test_lane_jobs_are_held_by_position_in_their_lane_lists(jq, rdb, pki, make_config):
    """The bulk lane's in-flight lists are deleted while the window holds their jobs: the named job and those after
    it can no longer be read back, which only happens to jobs held by position (a whole notification would still be
    sent). Each is dead-lettered as in_flight_job_lost, and every job still ends exactly once."""
    tokens = jobs_with_one_bad(3000, 1500, seed=59)

    def delete_lists() -> None:
        for key in rdb.scan_iter(match=f"{BULK}:inflight-batch:*"):
            rdb.delete(key)

    gateway = NamingGateway(pki, delete_lists)
    push_all(jq, [job(t) for t in tokens], BULK)

    drain_lanes(gateway, make_config)

    dead = jq.dead_entries(5000)
    assert dead and {"in_flight_job_lost"} == {d["reason"] for d in dead}
    assert {BULK} == {d["queue"] for d in dead}
    stats = {k.decode(): int(v) for k, v in rdb.hgetall("apnsd:stats").items()}
    assert 3000 == stats.get("delivered", 0) + stats.get("dead", 0) + stats.get("unregistered", 0)
    assert len(set(tokens) - set(gateway.read)) <= len(dead)
    assert [] == inflight_keys(rdb)


def test_two_connections_several_named_jobs_and_redis_refusing_at_the_first_resolve_each_job_once(
    jq, rdb, pki, make_config, redis_server
):
    """Two connections of one app share the batches; five held jobs are named, Redis refusing the read back of the
    first for a second: each named job is recorded unregistered once, every other job reaches the gateway and is
    delivered once, and nothing is left in flight or dead-lettered."""
    bad_at = [500, 7000, 7001, 12000, 18000]
    tokens = good_tokens(20000, seed=53)
    for i in bad_at:
        tokens[i] = BAD + tokens[i][len(BAD) :]

    gateway = NamingGateway(pki, lambda: refuse_clients(redis_server.url, 1.0))
    push_all(jq, [job(t) for t in tokens])
    try:
        config = make_config(gateway, APP_DEFAULT_CONNECTIONS="2", APP_DEFAULT_STANDBY_CONNECTIONS="0")
        assert 0 == run_drained(config, timeout=90)
    finally:
        gateway.close()

    assert {tokens[i] for i in bad_at} == set(jq.unregistered())
    assert set(tokens) == set(gateway.read)
    stats = {k.decode(): int(v) for k, v in rdb.hgetall("apnsd:stats").items()}
    assert (20000 - len(bad_at), len(bad_at)) == (stats.get("delivered"), stats.get("unregistered"))
    assert ([], []) == (jq.dead_entries(10), inflight_keys(rdb))
