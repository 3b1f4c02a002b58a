"""Priority lanes and throttles against a real redis-server and the HTTP/2 mock gateway."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jsonschema
import msgspec
import pytest

from apnsd import metrics
from apnsd.cli import main as cli
from apnsd.client import Client
from apnsd.errors import JobError
from apnsd.store.layout import pack_jobs
from apnsd.store.queue import Commit, JobQueue, connect
from apnsd.worker.daemon import Daemon
from apnsd.worker.recorder import dead_entry
from tests.support.docs_examples import ROOT, doc_example, localised
from tests.support.jobs import good_tokens, inflight_keys, job, push_all, run_drained
from tests.support.wait import wait_for


@contextmanager
def running(d: Daemon) -> Iterator[Daemon]:
    """The daemon running in a thread for the block; asked to stop and joined (30 s at most) after it."""
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        yield d
    finally:
        d.request_stop()
        t.join(30)


Q = "apnsd:queue"
URGENT, BULK = f"{Q}:urgent", f"{Q}:bulk"
LANES = [URGENT, Q, BULK]
NO_RATES = (0.0, [0.0, 0.0, 0.0])
THREE_LANES = {"APP_DEFAULT_LANES": "urgent,default,bulk"}


@pytest.fixture
def worker(redis_server: Any, rdb: Any) -> Callable[[str], JobQueue]:
    """Factory for JobQueue handles of named workers, each with its own Redis client."""

    def make(worker_id: str) -> JobQueue:
        return JobQueue(connect(redis_server.url), "apnsd", worker_id)

    return make


def taken_metric(queue: str) -> float:
    """The jobs_taken counter of one lane key."""
    return metrics.JOBS_TAKEN.labels(queue)._value.get()


# --- the take script -------------------------------------------------------------------------------


def test_a_take_comes_from_the_highest_lane_that_holds_work(jq, worker):
    """Jobs in the bulk and urgent lanes: the take returns the urgent ones, first pushed first."""
    push_all(jq, [b"b1", b"b2"], BULK)
    push_all(jq, [b"u1", b"u2"], URGENT)
    w = worker("w1")

    lane, jobs, wait = w.take_lanes(Q, LANES, 10, "1", 0, NO_RATES)

    assert (0, [b"u1", b"u2"], 0.0) == (lane, jobs, wait)
    assert [b"u1", b"u2"] == w.claim(URGENT, "1")
    assert 2 == jq.depth(BULK)


def test_a_take_starting_lower_looks_down_then_wraps_up(jq, worker):
    """Starting at the default lane (empty) the take goes down to bulk before it wraps back to urgent."""
    push_all(jq, [b"b1"], BULK)
    push_all(jq, [b"u1"], URGENT)

    lane, jobs, _ = worker("w1").take_lanes(Q, LANES, 10, "1", 1, NO_RATES)

    assert (2, [b"b1"]) == (lane, jobs)


def test_a_resent_lane_take_returns_the_batch_it_took(jq, worker):
    """Taking again into a batch id that holds a batch returns that batch and takes nothing more."""
    push_all(jq, [b"a", b"b", b"c"], BULK)
    w = worker("w1")
    first = w.take_lanes(Q, LANES, 2, "7", 0, NO_RATES)

    again = w.take_lanes(Q, LANES, 2, "7", 0, NO_RATES)

    assert first == again
    assert 1 == jq.depth(BULK)


def test_a_lane_take_leaves_a_list_and_an_index_entry_not_a_hash_field(jq, rdb, worker):
    """A lane batch is a list of its own named in the lane's index set, read back position for position as taken."""
    push_all(jq, [b"b1", b"b2", b"b3"], BULK)
    w = worker("w1")

    lane, jobs, _ = w.take_lanes(Q, LANES, 2, "5", 0, NO_RATES)

    assert (2, [b"b1", b"b2"]) == (lane, jobs)
    assert jobs == w.batch_jobs(BULK, "5")
    assert {b"5"} == rdb.smembers(w.keys.inflight_batches(BULK, "w1"))
    assert [] == [k for k in inflight_keys(rdb) if b":inflight:" in k]
    assert [b"b3"] == jq.client.lrange(BULK, 0, -1)


def test_a_resent_lane_take_returns_a_batch_an_earlier_version_kept_in_a_hash_field(jq, rdb, worker):
    """A batch id held as a hash field (an earlier apnsd's lane take) is returned, not a new take, and becomes a list
    in the same order, so it is held and committed as any other lane batch."""
    push_all(jq, [b"u1"], URGENT)
    w = worker("w1")
    rdb.hset(w.keys.inflight(BULK, "w1"), "7", pack_jobs([b"old1", b"old2", b"\xff\xfe"]))

    first = w.take_lanes(Q, LANES, 10, "7", 0, NO_RATES)
    again = w.take_lanes(Q, LANES, 10, "7", 0, NO_RATES)

    assert (2, [b"old1", b"old2", b"\xff\xfe"], 0.0) == first == again
    assert first[1] == w.batch_jobs(BULK, "7")
    assert (0, {b"7"}) == (rdb.hlen(w.keys.inflight(BULK, "w1")), rdb.smembers(w.keys.inflight_batches(BULK, "w1")))
    assert 1 == jq.depth(URGENT)


def test_a_hash_field_another_program_wrote_comes_back_from_a_resent_take_as_one_job(jq, rdb, worker):
    """A field under the batch id that is not a batch apnsd packed is returned as one element (the parser dead-letters
    it), as recovery treats it: it neither vanishes nor fails the take."""
    w = worker("w1")
    rdb.hset(w.keys.inflight(Q, "w1"), "7", b"not msgpack \xc1")

    assert (1, [b"not msgpack \xc1"], 0.0) == w.take_lanes(Q, LANES, 10, "7", 0, NO_RATES)


def test_lane_lists_are_counted_committed_swept_and_recovered_on_their_own_lanes(jq, rdb, worker):
    """A worker's lane batches (lists, one partly committed into the hash) count as in flight, a commit removes one, the
    orphan sweep and a dead worker's recovery put the others back on their own lanes, consuming end first."""
    push_all(jq, [b"u1", b"u2"], URGENT)
    push_all(jq, [b"b1", b"b2", b"b3", b"b4"], BULK)
    dead = worker("dead")
    dead.heartbeat(30, {})
    assert (0, [b"u1"]) == dead.take_lanes(Q, LANES, 1, "1", 0, NO_RATES)[:2]
    assert (0, [b"u2"]) == dead.take_lanes(Q, LANES, 1, "2", 0, NO_RATES)[:2]
    assert (2, [b"b1", b"b2"]) == dead.take_lanes(Q, LANES, 2, "3", 0, NO_RATES)[:2]
    assert (2, [b"b3"]) == dead.take_lanes(Q, LANES, 1, "4", 0, NO_RATES)[:2]
    assert (2, 3) == (dead.inflight_count(URGENT, "dead"), dead.inflight_count(BULK, "dead"))
    assert 2 == dead.inflight_batches(BULK)

    dead.commit(Commit(URGENT, "2"))
    dead.commit(Commit(BULK, "3", keep=[b"b2"]))  # b1 resolved; b2 stays in flight, in the hash
    assert (1, 2) == (dead.inflight_count(URGENT, "dead"), dead.inflight_count(BULK, "dead"))
    assert 1 == dead.requeue_orphans(BULK, lambda: {"3"})  # batch 4 is no longer held by the process
    assert [b"b4", b"b3"] == jq.client.lrange(BULK, 0, -1)
    dead.client.delete(dead.keys.heartbeat("dead"))

    moved = worker("w2").requeue_from_dead_workers(LANES)

    assert {"dead": 2} == moved
    assert [b"u1"] == jq.client.lrange(URGENT, 0, -1)
    assert [b"b4", b"b3", b"b2"] == jq.client.lrange(BULK, 0, -1)
    assert [] == inflight_keys(rdb)


def test_a_lane_take_loads_its_script_again_after_redis_lost_it(jq, rdb, worker):
    """A server that lost its scripts answers NOSCRIPT once; the lane take loads the script and takes as it would."""
    push_all(jq, [b"b1", b"b2", b"b3"], BULK)
    w = worker("w1")
    w.take_lanes(Q, LANES, 1, "1", 0, NO_RATES)
    rdb.script_flush()

    assert ((2, [b"b2", b"b3"], 0.0), 0) == (w.take_lanes(Q, LANES, 5, "2", 0, NO_RATES), jq.depth(BULK))


def test_every_lane_empty_takes_nothing_and_asks_for_no_throttle_wait(jq, rdb, worker):
    """No work anywhere: lane -1, no jobs, no wait, and no in-flight field is left behind."""
    assert (-1, [], 0.0) == worker("w1").take_lanes(Q, LANES, 10, "1", 0, NO_RATES)
    assert [] == inflight_keys(rdb)


def test_the_throttle_grants_at_most_its_burst_and_leaves_the_rest_queued(jq, worker):
    """At 1/s (a burst of one) the first take gets one job, the next gets none and a wait; the rest stay queued."""
    push_all(jq, [b"a", b"b", b"c"], Q)
    w = worker("w1")

    first = w.take_lanes(Q, LANES, 10, "1", 0, (1.0, [0.0, 0.0, 0.0]))
    second = w.take_lanes(Q, LANES, 10, "2", 0, (1.0, [0.0, 0.0, 0.0]))

    assert (1, [b"a"]) == first[:2]
    assert (-1, []) == second[:2]
    assert 0 < second[2] <= 1.0
    assert 2 == jq.depth(Q)


def test_a_throttled_lane_is_skipped_for_the_next_one_with_work(jq, worker):
    """Urgent's own rate is spent: the take passes over it to the default lane instead of waiting."""
    push_all(jq, [b"u1", b"u2"], URGENT)
    push_all(jq, [b"d1"], Q)
    w = worker("w1")
    rates = (0.0, [1.0, 0.0, 0.0])

    first = w.take_lanes(Q, LANES, 10, "1", 0, rates)
    second = w.take_lanes(Q, LANES, 10, "2", 0, rates)

    assert (0, [b"u1"]) == first[:2]
    assert (1, [b"d1"], 0.0) == second
    assert 1 == jq.depth(URGENT)


def test_two_workers_share_one_bucket(jq, worker):
    """The bucket lives in Redis: what one worker spent, another cannot take again."""
    push_all(jq, [b"a", b"b"], Q)
    rates = (1.0, [0.0, 0.0, 0.0])

    worker("w1").take_lanes(Q, LANES, 10, "1", 0, rates)
    lane, jobs, wait = worker("w2").take_lanes(Q, LANES, 10, "1", 0, rates)

    assert (-1, []) == (lane, jobs)
    assert wait > 0


def test_a_dead_workers_lane_batch_goes_back_to_its_lane(jq, worker):
    """A worker dies holding a bulk batch: recovery puts it back on the bulk lane, at the consuming end."""
    push_all(jq, [b"b1", b"b2"], BULK)
    dead = worker("dead")
    dead.heartbeat(30, {})
    dead.take_lanes(Q, LANES, 1, "1", 0, NO_RATES)
    dead.client.delete(dead.keys.heartbeat("dead"))

    moved = worker("w2").requeue_from_dead_workers(LANES)

    assert {"dead": 1} == moved
    assert [b"b2", b"b1"] == jq.client.lrange(BULK, 0, -1)


def test_a_dead_letter_from_a_lane_is_requeued_onto_that_lane(jq):
    """A dead entry that names its lane goes back there; an unknown key named in an entry is never written."""
    jq.commit(Commit(BULK, "1", dead=[dead_entry(b'{"a":1}', "default", "x", None, "", 1, None, 0.0, queue=BULK)]))
    jq.commit(Commit(Q, "2", dead=[dead_entry(b'{"b":2}', "default", "x", None, "", 1, None, 0.0, queue="evil:key")]))

    moved = jq.requeue_dead({"default": Q}, Q, None, None, lanes={Q, URGENT, BULK})

    assert 2 == moved
    assert [b'{"a":1}'] == jq.client.lrange(BULK, 0, -1)
    assert [b'{"b":2}'] == jq.client.lrange(Q, 0, -1)
    assert 0 == jq.client.exists("evil:key")


# --- the daemon ------------------------------------------------------------------------------------


def test_urgent_jobs_pushed_after_a_campaign_are_delivered_first(jq, rdb, http2_mock, make_config):
    """2,000 bulk jobs queued before 5 urgent ones: the urgent ones reach the gateway first; all once."""
    mock = http2_mock()
    bulk, urgent = good_tokens(2000, seed=61), good_tokens(5, seed=62)
    push_all(jq, [job(t) for t in bulk], BULK)
    push_all(jq, [job(t) for t in urgent], URGENT)

    assert 0 == run_drained(make_config(mock, **THREE_LANES), timeout=60)

    received = [r.token for r in mock.record.received]
    assert set(urgent) == set(received[:5])
    assert dict.fromkeys(bulk + urgent, 1) == dict(mock.record.accepted_tokens())
    assert [] == inflight_keys(rdb)


def test_a_busy_urgent_lane_does_not_starve_bulk(jq, http2_mock, make_config):
    """With lower_lane_every = 2 and small batches, bulk jobs are delivered before the urgent lane runs dry."""
    mock = http2_mock()
    bulk, urgent = good_tokens(20, seed=63), good_tokens(400, seed=64)
    push_all(jq, [job(t) for t in bulk], BULK)
    push_all(jq, [job(t) for t in urgent], URGENT)
    config = make_config(mock, **THREE_LANES, APP_DEFAULT_LOWER_LANE_EVERY="2", WORKER_BATCH_SIZE="10")

    assert 0 == run_drained(config, timeout=60)

    received = [r.token for r in mock.record.received]
    last_urgent = max(received.index(t) for t in urgent)
    assert min(received.index(t) for t in bulk) < last_urgent


def test_a_scheduled_job_returns_to_its_own_lane(jq, http2_mock, make_config):
    """A bulk job due in a second is parked in the bulk lane's scheduled set, then taken from the bulk lane."""
    mock = http2_mock()
    token = good_tokens(1, seed=65)[0]
    push_all(jq, [job(token, send_at=time.time() + 1.0)], BULK)
    before = taken_metric(BULK)

    assert 0 == run_drained(make_config(mock, **THREE_LANES), timeout=30)

    assert {token: 1} == dict(mock.record.accepted_tokens())
    assert 2 == taken_metric(BULK) - before  # taken, parked in apnsd:queue:bulk:scheduled, taken again
    assert 0 == jq.scheduled_count(BULK)


def test_jobs_over_the_rate_stay_queued_and_the_wait_is_counted(jq, http2_mock, make_config):
    """At max_rate = 50/s no more than the rate (plus its burst) is delivered; the rest stays queued, none dead."""
    mock = http2_mock()
    tokens = good_tokens(500, seed=66)
    push_all(jq, [job(t) for t in tokens])
    throttled_before = metrics.THROTTLED.labels(Q)._value.get()
    d = Daemon(make_config(mock, APP_DEFAULT_MAX_RATE="50"))
    start = time.monotonic()
    with running(d):
        wait_for(lambda: len(mock.record.received) >= 20, 30, "20 notifications delivered")
    elapsed = time.monotonic() - start

    delivered = len(mock.record.accepted_tokens())
    assert delivered <= 50 * elapsed + 5
    assert len(tokens) == delivered + jq.depth(Q)
    assert 0 == jq.counts()["dead"]
    assert metrics.THROTTLED.labels(Q)._value.get() > throttled_before


def test_a_queue_without_lanes_takes_as_it_always_did(jq, http2_mock, make_config, monkeypatch):
    """No lanes and no throttle: the lane script is never called and the queue key is unchanged."""
    mock = http2_mock()
    tokens = good_tokens(30, seed=67)
    push_all(jq, [job(t) for t in tokens])

    def no_lanes(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("take_lanes called for a queue without lanes")

    monkeypatch.setattr(JobQueue, "take_lanes", no_lanes)

    assert 0 == run_drained(make_config(mock), timeout=30)
    assert dict.fromkeys(tokens, 1) == dict(mock.record.accepted_tokens())


def test_stats_show_each_lane(jq, make_config, http2_mock):
    """`apnsd stats` data: the queue's depth sums its lanes, and each lane has its key and depth."""
    from apnsd.cli.stats import collect, render

    push_all(jq, [b"x"] * 3, BULK)
    push_all(jq, [b"y"], URGENT)
    config = make_config(http2_mock(), **THREE_LANES)

    data = collect(config, lambda c: jq)

    assert 4 == data["queues"][Q]["depth"]
    assert {"key": BULK, "depth": 3, "scheduled": 0} == data["queues"][Q]["lanes"]["bulk"]
    assert f"  lane urgent ({URGENT}): 1 waiting, 0 scheduled" in render(data)


def test_a_job_body_is_never_decoded_for_its_lane(jq, http2_mock, make_config):
    """The lane is the list a job was pushed on: a "lane" field inside the job is ignored, not obeyed or refused."""
    mock = http2_mock()
    token = good_tokens(1, seed=68)[0]
    push_all(jq, [msgspec.json.encode({"token": token, "payload": {"aps": {}}, "lane": "urgent"})], BULK)
    before = taken_metric(BULK)

    assert 0 == run_drained(make_config(mock, **THREE_LANES), timeout=30)

    assert 1 == taken_metric(BULK) - before
    assert {token: 1} == dict(mock.record.accepted_tokens())


# --- pushing onto a lane: docs/clients.md, apnsd.client, apnsd push --------------------------------

RUNNERS = {
    "redis-cli-lane": (["redis-cli"], lambda code: ["bash", "-c", code]),
    "python-lane": ([], lambda code: [sys.executable, "-c", code]),
    "php-lane": (["php"], lambda code: ["php", "-r", code]),
    "ruby-lane": (["ruby"], lambda code: ["ruby", "-e", code]),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("marker", sorted(RUNNERS))
def test_the_documented_lane_examples_queue_an_urgent_job_that_is_delivered(
    marker, rdb, jq, redis_server, http2_mock, make_config
):
    """Each docs/clients.md lane example, run by the real tool, queues onto the urgent lane; the daemon delivers it."""
    tools, argv = RUNNERS[marker]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{missing[0]} is not installed (see docs/clients.md)")
    if marker == "php-lane" and subprocess.run(["php", "-r", "exit(class_exists('Redis') ? 0 : 1);"]).returncode:
        pytest.skip("php's redis extension (phpredis) is missing (apt-get install php-redis)")
    if marker == "ruby-lane" and subprocess.run(["ruby", "-e", "require 'redis'"], capture_output=True).returncode:
        pytest.skip("redis-rb is missing (apt-get install ruby-redis)")
    token = good_tokens(1, seed=69)[0]
    code = localised(doc_example(marker), redis_server.port, token)
    subprocess.run(argv(code), check=True, capture_output=True, timeout=30, cwd=ROOT)

    waiting = [json.loads(raw) for raw in rdb.lrange(URGENT, 0, -1)]
    assert [token] == [j["token"] for j in waiting]
    jsonschema.validate(waiting[0], json.loads((ROOT / "docs" / "job.schema.json").read_text()))
    mock = http2_mock()
    before = taken_metric(URGENT)
    assert 0 == run_drained(make_config(mock, **THREE_LANES), timeout=30)
    assert {token: 1} == dict(mock.record.accepted_tokens())
    assert 1 == taken_metric(URGENT) - before


def test_the_client_pushes_onto_the_lane_it_is_given(rdb, jq, redis_server, http2_mock, make_config):
    """enqueue(lane=…), schedule(lane=…) and enqueue_many's lane key reach the lane's list or scheduled set."""
    config = make_config(http2_mock(), **THREE_LANES)
    c = Client.from_config(config)
    a, b, d = good_tokens(3, seed=70)

    c.enqueue(a, {"aps": {}}, lane="urgent")
    c.enqueue_many([{"token": b, "payload": {"aps": {}}, "lane": "bulk"}])
    c.schedule(d, {"aps": {}}, time.time() + 60, lane="bulk")

    assert [a] == [json.loads(j)["token"] for j in rdb.lrange(URGENT, 0, -1)]
    bulk = [json.loads(j) for j in rdb.lrange(BULK, 0, -1)]
    assert ([b], False) == ([j["token"] for j in bulk], "lane" in bulk[0])
    assert 1 == jq.scheduled_count(BULK)


@pytest.mark.parametrize("lane", ["nightly", "Bad Lane", 7])
def test_the_client_refuses_a_lane_the_app_does_not_declare(rdb, redis_server, http2_mock, make_config, lane):
    """A lane the app has not declared (or a malformed name) is refused before Redis: nothing would take from it."""
    c = Client.from_config(make_config(http2_mock(), **THREE_LANES))

    with pytest.raises(JobError) as err:
        c.enqueue(good_tokens(1)[0], {"aps": {}}, lane=lane)

    assert "bad_field" == err.value.reason
    assert [] == rdb.keys("*")


def test_apnsd_push_lane(rdb, redis_server, env_clean, monkeypatch, capsys):
    """`apnsd push --lane urgent` queues onto the urgent lane; an undeclared lane exits 2 naming the app's lanes."""
    monkeypatch.setenv("APNSD_REDIS_URL", redis_server.url)
    monkeypatch.setenv("APNSD_APP_DEFAULT_LANES", "urgent,default,bulk")
    token = good_tokens(1, seed=71)[0]

    assert 0 == cli.main(["push", "--lane", "urgent", "--token", token, "--alert", "hi"])
    assert 2 == cli.main(["push", "--lane", "nightly", "--token", token, "--alert", "hi"])

    assert [token] == [json.loads(j)["token"] for j in rdb.lrange(URGENT, 0, -1)]
    assert "has no lane 'nightly' (its lanes: urgent, default, bulk)" in capsys.readouterr().err


def test_a_graceful_stop_mid_campaign_returns_held_back_work_to_its_lane(jq, rdb, http2_mock, make_config):
    """SIGTERM while bulk work waits in the worker: every job is delivered once or back on its own lane, none lost."""
    mock = http2_mock()
    bulk, urgent = good_tokens(3000, seed=72), good_tokens(50, seed=73)
    push_all(jq, [job(t) for t in bulk], BULK)
    push_all(jq, [job(t) for t in urgent], URGENT)
    d = Daemon(make_config(mock, **THREE_LANES, APP_DEFAULT_LANE_WINDOW="20"))
    with running(d):
        wait_for(lambda: len(mock.record.received) >= 300, 30, "300 notifications delivered")

    delivered = mock.record.accepted_tokens()
    waiting = {lane: [json.loads(raw)["token"] for raw in rdb.lrange(lane, 0, -1)] for lane in LANES}
    assert all(n == 1 for n in delivered.values())
    assert waiting[BULK]  # the stop came mid-campaign: only what was on the wire awaited its answer
    assert set(bulk) == set(waiting[BULK]) | (set(bulk) & set(delivered))
    assert not set(waiting[BULK]) & set(delivered)
    assert (set(urgent), [], []) == (set(delivered) & set(urgent), waiting[URGENT], waiting[Q])
    assert [] == inflight_keys(rdb)


def test_lower_lane_work_is_spread_over_the_apps_connections(jq, rdb, http2_mock, make_config):
    """With two connections, a campaign waiting in the worker counts toward each one's backlog: both carry it."""
    mock = http2_mock()
    bulk = good_tokens(2000, seed=74)
    push_all(jq, [job(t) for t in bulk], BULK)

    assert 0 == run_drained(make_config(mock, **THREE_LANES, APP_DEFAULT_CONNECTIONS="2"), timeout=60)

    assert dict.fromkeys(bulk, 1) == dict(mock.record.accepted_tokens())
    assert 2 == mock.record.connections


@pytest.mark.parametrize("protocol", ["http2", "binary"])
def test_an_urgent_job_pushed_behind_a_campaign_goes_out_before_its_tail(
    protocol, jq, rdb, http2_mock, binary_mock, make_config
):
    """An urgent job pushed while 50,000 bulk jobs drain is sent within a window of the push; none is lost."""
    mock = http2_mock() if protocol == "http2" else binary_mock()
    bulk, urgent = good_tokens(50_000, seed=75), good_tokens(1, seed=76)[0]
    push_all(jq, [job(t) for t in bulk], BULK)
    # The campaign runs alone until the push, so its work goes out lane_window at a time (not the adaptive
    # window): 500 leaves room under the bound for what is answered while the urgent job is being taken.
    d = Daemon(make_config(mock, **THREE_LANES, APP_DEFAULT_LANE_WINDOW="500"))
    with running(d):
        wait_for(lambda: len(mock.record.received) >= 2000, 60, "the campaign draining")
        before = len(mock.record.received)
        push_all(jq, [job(urgent)], URGENT)
        wait_for(lambda: urgent in mock.record.accepted_tokens(), 30, "the urgent job delivered")

    received = [r.token for r in mock.record.received]
    delivered = mock.record.accepted_tokens()
    waiting = [json.loads(raw)["token"] for raw in rdb.lrange(BULK, 0, -1)]
    assert received.index(urgent) - before < 1000  # at most a lower-lane window was written ahead of it
    assert len(waiting) > 25_000  # the campaign's tail was still queued when it went out
    assert all(n == 1 for n in delivered.values())
    assert (set(bulk), set()) == (set(waiting) | (set(bulk) & set(delivered)), set(waiting) & set(delivered))
    assert [] == inflight_keys(rdb)
