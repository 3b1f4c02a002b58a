"""The Redis queue adapter against a real redis-server: take, commit, heartbeats, recovery, scheduling."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from apnsd.errors import KeyTypeError, QueueError
from apnsd.store.layout import pack_jobs
from apnsd.store.queue import Commit, JobQueue, connect
from apnsd.testing.redis_server import free_port
from apnsd.worker.recorder import dead_entry
from tests.support.wait import wait_for

Q = "apnsd:queue"


@pytest.fixture
def worker(redis_server: Any, rdb: Any) -> Callable[[str], JobQueue]:
    """Factory for JobQueue handles of named workers, each with its own Redis client."""

    def make(worker_id: str) -> JobQueue:
        return JobQueue(connect(redis_server.url), "apnsd", worker_id)

    return make


def jobs(n: int, tag: str = "j") -> list[bytes]:
    """n distinct jobs, oldest first."""
    return [msgspec.json.encode({"token": f"{i:064x}", "payload": {"aps": {}}, "tag": f"{tag}{i}"}) for i in range(n)]


def lpush_each(jq: JobQueue, items: list[bytes], queue: str = Q) -> None:
    """LPUSH one by one, oldest first, the way applications enqueue."""
    for item in items:
        jq.push(queue, [item])


def take_all(jq: JobQueue, queue: str = Q) -> list[bytes]:
    """Everything in the queue, in the order a consumer would take it."""
    return jq.take(queue, 100_000)[1]


def command_calls(rdb: Any) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT."""
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in rdb.info("commandstats").items()}


# --- take ----------------------------------------------------------------------------------------


def test_take_moves_jobs_into_in_flight_storage_first_pushed_first(jq, worker):
    """take moves jobs from the consuming end into the batch's in-flight list (named in the worker's index set),
    oldest first."""
    items = jobs(5)
    lpush_each(jq, items)
    w = worker("w1")

    batch, taken = w.take(Q, 3)

    assert items[:3] == taken
    assert 2 == jq.depth(Q)
    assert 3 == jq.inflight_count(Q, "w1")
    held = jq.client.lrange(w.keys.inflight_list(Q, "w1", batch), 0, -1)
    assert (items[2::-1], {batch.encode()}) == (held, jq.client.smembers(w.keys.inflight_batches(Q, "w1")))


def test_a_batch_is_read_back_by_position_and_only_the_span_asked_for(jq, rdb, worker):
    """Positions count from the first job taken; a span reads just those jobs, even after something pushed a
    million elements onto the batch's list (read back must cost what it needs, whatever the key has become)."""
    jq.push("q", [b"j%d" % i for i in range(10)])
    w = worker("w1")
    batch_id, taken = w.take("q", 6)

    assert taken == w.batch_jobs("q", batch_id)
    assert [b"j2", b"j3", b"j4"] == w.batch_jobs("q", batch_id, 2, 4)
    assert [b"j5"] == w.batch_jobs("q", batch_id, 5, 5)
    assert [] == w.batch_jobs("q", batch_id, 6, 9)  # beyond the batch: nothing, not another job
    for _ in range(100):
        rdb.lpush(w.keys.inflight_list("q", "w1", batch_id), *([b"x"] * 10_000))
    assert [b"j2", b"j3", b"j4"] == w.batch_jobs("q", batch_id, 2, 4)


def test_take_is_a_single_atomic_script_call(jq, rdb, worker):
    """Moving jobs into in-flight storage happens in one server-side step, not a pop then a write."""
    lpush_each(jq, jobs(4))
    w = worker("w1")
    w.take(Q, 1)  # load the script
    rdb.config_resetstat()

    w.take(Q, 2)

    calls = command_calls(rdb)
    moved = tuple(calls.get(c) for c in ("evalsha", "sort", "ltrim", "sadd", "lrange", "multi", "rpop"))
    assert (1, 1, 1, 1, 1, None, None) == moved  # the copy stays inside Redis; LRANGE reads it back


def test_successive_takes_use_increasing_batch_fields(jq, worker):
    """Each take is its own batch field, so batches can be committed independently."""
    lpush_each(jq, jobs(4))
    w = worker("w1")

    first, _ = w.take(Q, 2)
    second, _ = w.take(Q, 2)

    assert int(first) < int(second)
    assert 4 == jq.inflight_count(Q, "w1")


def test_a_take_sent_again_into_its_batch_id_returns_that_batch_and_takes_no_more(jq, worker):
    """A take resent after its answer was lost (same batch id) returns the batch the first one took, once."""
    items = jobs(5)
    lpush_each(jq, items)
    w = worker("w1")

    first = w.take(Q, 2, "7")
    again = w.take(Q, 2, "7")

    assert (("7", items[:2]), ("7", items[:2]), 3) == (first, again, jq.depth(Q))


def test_claim_returns_a_taken_batch_oldest_first(jq, worker):
    """claim reads back a batch a take moved into its list, in taking order (the feeder's lost-answer path)."""
    items = jobs(4)
    lpush_each(jq, items)
    w = worker("w1")
    batch, taken = w.take(Q, 3)

    assert (items[:3], taken, []) == (w.claim(Q, batch), w.claim(Q, batch), w.claim(Q, "999"))


def test_take_loads_its_script_again_after_redis_lost_it(jq, rdb, worker):
    """A server that lost its scripts (SCRIPT FLUSH, restart) answers NOSCRIPT once; the take loads it and goes on."""
    items = jobs(3)
    lpush_each(jq, items)
    w = worker("w1")
    w.take(Q, 1)
    rdb.script_flush()

    assert (items[1:], 0) == (w.take(Q, 5)[1], jq.depth(Q))


def test_take_from_an_empty_queue_holds_nothing(jq, rdb, worker):
    """Taking from an empty queue returns no jobs and creates no in-flight storage."""
    _, taken = worker("w1").take(Q, 10)

    assert [] == taken
    assert [] == list(rdb.scan_iter(match="*:inflight*"))


def test_take_returns_fewer_when_fewer_are_waiting(jq, worker):
    """A take larger than the queue returns what is there."""
    items = jobs(2)
    lpush_each(jq, items)

    assert items == worker("w1").take(Q, 10)[1]
    assert 0 == jq.depth(Q)


# --- commit --------------------------------------------------------------------------------------


def test_commit_writes_every_outcome_and_drops_the_batch(jq, rdb, worker):
    """dead, unregistered, scheduled, requeue and counts are written and the batch leaves in-flight storage."""
    items = jobs(6)
    lpush_each(jq, items)
    w = worker("w1")
    batch, taken = w.take(Q, 5)
    commit = Commit(
        Q,
        batch,
        dead=[b'{"reason":"x"}'],
        unregistered={"ab" * 32: b'{"reason":"Unregistered"}'},
        scheduled={taken[2]: 1_900_000_000.0},
        requeue=[taken[3], taken[4]],
        counts={"delivered": 1, "dead": 1, "unregistered": 1, "retry": 1, "returned": 2},
    )

    w.commit(commit)

    assert [b'{"reason":"x"}'] == rdb.lrange("apnsd:dead", 0, -1)
    assert {b"ab" * 32: b'{"reason":"Unregistered"}'} == rdb.hgetall("apnsd:unregistered")
    assert [(taken[2], 1_900_000_000.0)] == rdb.zrange("apnsd:scheduled", 0, -1, withscores=True)
    assert {
        "dead": 1,
        "unregistered": 1,
        "total_delivered": 1,
        "total_dead": 1,
        "total_unregistered": 1,
        "total_retry": 1,
        "total_returned": 2,
    } == jq.counts()
    assert 0 == jq.inflight_count(Q, "w1")
    assert [] == list(rdb.scan_iter(match="*:inflight*:w1*"))  # the batch's list and its index entry went too
    assert [items[3], items[4], items[5]] == take_all(jq)


def test_commit_is_one_script_call(jq, rdb, worker):
    """A commit reaches Redis as one atomic script call that makes every write of the batch."""
    lpush_each(jq, jobs(3))
    w = worker("w1")
    batch, taken = w.take(Q, 3)
    rdb.config_resetstat()

    w.commit(
        Commit(
            Q,
            batch,
            dead=[b"d"],
            unregistered={"t": b"u"},
            scheduled={taken[0]: 1.0},
            requeue=[taken[1]],
            counts={"delivered": 1},
        )
    )

    calls = command_calls(rdb)
    assert (1, None) == (calls.get("evalsha"), calls.get("multi"))
    assert {"rpush": 1, "lpush": 1, "hset": 1, "zadd": 1, "hincrby": 1, "hdel": 1} == {
        c: calls.get(c) for c in ("rpush", "lpush", "hset", "zadd", "hincrby", "hdel")
    }


def test_requeued_jobs_are_taken_again_first_taken_first(jq, worker):
    """Jobs a commit returns go back to the consuming end in their original order, ahead of newer jobs."""
    items = jobs(5)
    lpush_each(jq, items)
    w = worker("w1")
    batch, taken = w.take(Q, 3)

    w.commit(Commit(Q, batch, requeue=taken))

    assert items == take_all(jq)


def test_partial_commit_writes_outcomes_and_keeps_only_the_unresolved_jobs_in_flight(jq, rdb, worker):
    """A commit with ``keep`` writes its outcomes and leaves the batch in flight holding just those jobs,
    which are what a recovery returns to the queue (any bytes, not only UTF-8)."""
    items = [*jobs(4), b"\xff\xfe not json " * 20]
    lpush_each(jq, items)
    w = worker("w1")
    batch, taken = w.take(Q, 5)

    w.commit(Commit(Q, batch, dead=[b'{"reason":"x"}'], counts={"delivered": 2, "dead": 1}, keep=taken[3:]))

    assert ([b'{"reason":"x"}'], 2) == (rdb.lrange("apnsd:dead", 0, -1), jq.inflight_count(Q, "w1"))
    assert 2 == jq.counts()["total_delivered"]
    assert taken[3:] == w.claim(Q, batch)
    rdb.sadd("apnsd:workers", "w1")  # registered, without a heartbeat: w1 died
    assert {"w1": 2} == worker("rescuer").requeue_from_dead_workers([Q])
    assert items[3:] == take_all(jq)


def test_retried_partial_commit_that_already_ran_writes_nothing_twice(jq, rdb, worker):
    """A partial commit sent again after its answer was lost finds the batch holding exactly what it kept,
    so its dead letters are not written a second time; the final commit then drops the batch."""
    lpush_each(jq, jobs(3))
    w = worker("w1")
    batch, taken = w.take(Q, 3)
    part = Commit(Q, batch, dead=[b"d1"], keep=taken[1:])
    w.commit(part)

    w.commit(part)  # ``sent`` is set: this is a retry of an attempt that ran
    w.commit(Commit(Q, batch, dead=[b"d2"]))

    assert ([b"d2", b"d1"], 0) == (rdb.lrange("apnsd:dead", 0, -1), jq.inflight_count(Q, "w1"))


def test_commit_of_results_writes_a_capped_stream(jq, rdb, redis_server):
    """Receipts go to the results stream when the worker keeps one."""
    w = JobQueue(connect(redis_server.url), "apnsd", "w1", results_maxlen=10)
    lpush_each(jq, jobs(1))
    batch, _ = w.take(Q, 1)

    w.commit(Commit(Q, batch, results=[{"apns_id": "a", "outcome": "delivered"}]))

    assert [{b"apns_id": b"a", b"outcome": b"delivered"}] == [fields for _, fields in rdb.xrange("apnsd:results")]


def test_receipts_keep_their_field_order_and_exact_bytes(jq, rdb, redis_server):
    """A batch's receipts reach the stream in order, each field as its UTF-8 bytes, odd characters included."""
    w = JobQueue(connect(redis_server.url), "apnsd", "w1", results_maxlen=1000)
    lpush_each(jq, jobs(2))
    batch, _ = w.take(Q, 2)
    odd = 'caf\u00e9 "\u2603" \\ {}[]'
    receipts = [{"id": odd, "reason": "", "time": "1.500"}, {"id": "x" * 300, "outcome": "dead"}]

    w.commit(Commit(Q, batch, results=receipts))

    expected = [{k.encode(): v.encode() for k, v in r.items()} for r in receipts]
    assert expected == [fields for _, fields in rdb.xrange("apnsd:results")]
    assert [[b"id", odd.encode(), b"reason", b"", b"time", b"1.500"]] == [
        [part for item in rdb.xrange("apnsd:results")[0][1].items() for part in item]
    ]


# --- heartbeats and recovery ---------------------------------------------------------------------


def test_heartbeat_sets_a_status_key_with_ttl_and_registers_the_worker(jq, rdb, worker):
    """A heartbeat writes the status under the worker's key with the TTL and adds it to the registry."""
    w = worker("w1")

    w.heartbeat(30.0, {"time": 123.0, "pid": 9})

    assert 0 < rdb.pttl("apnsd:worker:w1") <= 30_000
    assert {b"w1"} == rdb.smembers("apnsd:workers")
    assert {"time": 123.0, "pid": 9} == jq.heartbeat_of("w1")
    assert [("w1", {"time": 123.0, "pid": 9})] == jq.workers()


def test_heartbeat_lapses_after_its_ttl(jq, worker):
    """Without a refresh the heartbeat key expires; the worker stays registered but shows as lapsed."""
    worker("w1").heartbeat(0.05, {"time": 1.0})

    wait_for(lambda: jq.heartbeat_of("w1") is None, 5.0)
    assert [("w1", None)] == jq.workers()


def test_retire_removes_heartbeat_and_registration(jq, rdb, worker):
    """A cleanly stopping worker leaves neither heartbeat nor registry entry."""
    w = worker("w1")
    w.heartbeat(30.0, {})

    w.retire()

    assert (None, set()) == (jq.heartbeat_of("w1"), rdb.smembers("apnsd:workers"))


def _dead_worker_with_batches(
    jq: JobQueue, rdb: Any, make: Callable[[str], JobQueue], wid: str, items: list[bytes], sizes: list[int]
) -> None:
    """A registered worker that took ``sizes`` batches of ``items`` and then died (heartbeat gone)."""
    lpush_each(jq, items)
    w = make(wid)
    w.heartbeat(30.0, {})
    for size in sizes:
        w.take(Q, size)
    rdb.delete(w.keys.heartbeat(wid))


def test_dead_workers_batches_return_to_the_consuming_end_oldest_first(jq, rdb, worker):
    """Recovered jobs go back ahead of waiting jobs, in the order they were first taken."""
    items = jobs(10)
    _dead_worker_with_batches(jq, rdb, worker, "dead", items[:7], [3, 2, 2])
    lpush_each(jq, items[7:])

    moved = worker("rescuer").requeue_from_dead_workers([Q])

    assert {"dead": 7} == moved
    assert items == take_all(jq)
    assert set() == rdb.smembers("apnsd:workers")
    assert 0 == jq.inflight_count(Q, "dead")


def test_a_dead_workers_in_flight_key_of_another_type_holds_back_only_that_worker(jq, rdb, worker):
    """One dead worker's in-flight key holds a string (another program): the other dead workers' jobs still come
    back, the key is named, and that worker stays registered until the key is fixed."""
    items = jobs(4)
    for wid in ("dead-a", "dead-c"):
        _dead_worker_with_batches(jq, rdb, worker, wid, [], [])
    _dead_worker_with_batches(jq, rdb, worker, "dead-b", items, [4])
    rdb.set("apnsd:queue:inflight:dead-a", "another program's string")
    rdb.set("apnsd:queue:inflight:dead-c", "another program's string")
    wrong: list[str] = []

    moved = worker("rescuer").requeue_from_dead_workers([Q], wrong)

    assert ({"dead-b": 4}, items) == (moved, take_all(jq))
    assert [
        "apnsd:queue:inflight:dead-a, apnsd:queue:inflight-batches:dead-a or apnsd:queue",
        "apnsd:queue:inflight:dead-c, apnsd:queue:inflight-batches:dead-c or apnsd:queue",
    ] == sorted(wrong)
    assert {b"dead-a", b"dead-c"} == rdb.smembers("apnsd:workers")


@pytest.mark.parametrize("round_", range(10))
def test_racing_recoveries_move_each_job_exactly_once(jq, rdb, worker, round_):
    """Two workers recovering the same dead worker at the same moment move every job exactly once."""
    items = jobs(50, tag=f"r{round_}-")
    _dead_worker_with_batches(jq, rdb, worker, "dead", items, [10, 10, 10, 10, 10])
    rescuers = [worker("a"), worker("b")]
    barrier = threading.Barrier(2)
    results: list[dict[str, int]] = []

    def recover(q: JobQueue) -> None:
        barrier.wait()
        results.append(q.requeue_from_dead_workers([Q]))

    threads = [threading.Thread(target=recover, args=(q,)) for q in rescuers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert items == take_all(jq)
    assert 50 == sum(r.get("dead", 0) for r in results)
    assert 0 == jq.inflight_count(Q, "dead")


def test_alive_workers_are_not_recovered(jq, rdb, worker):
    """A worker whose heartbeat is present keeps its in-flight jobs."""
    lpush_each(jq, jobs(3))
    alive = worker("alive")
    alive.heartbeat(30.0, {})
    alive.take(Q, 3)

    assert {} == worker("rescuer").requeue_from_dead_workers([Q])
    assert 3 == jq.inflight_count(Q, "alive")
    assert {b"alive"} == rdb.smembers("apnsd:workers")


def test_a_worker_never_recovers_its_own_batches(jq, rdb, worker):
    """requeue_from_dead_workers skips the calling worker even when its own heartbeat has lapsed."""
    lpush_each(jq, jobs(2))
    me = worker("me")
    me.heartbeat(30.0, {})
    me.take(Q, 2)
    rdb.delete(me.keys.heartbeat("me"))

    assert {} == me.requeue_from_dead_workers([Q])
    assert 2 == jq.inflight_count(Q, "me")


def test_recovery_returns_in_flight_entries_another_program_wrote_as_they_are(jq, rdb, worker):
    """In-flight fields apnsd did not write (a blob that is not a batch, an id that is not a number) do not stop the
    recovery of that worker or of the next: the good batch comes back as its jobs, a blob that is no batch as
    itself (the parser then dead-letters it), and the recovery goes on to the next dead worker."""
    good, other = jobs(2, "g"), jobs(1, "o")
    rdb.hset(f"{Q}:inflight:a-ghost", mapping={"1": pack_jobs(good), "x": b"\xc1 not msgpack", "2": b"\x2a"})
    rdb.hset(f"{Q}:inflight:b-ghost", mapping={"1": pack_jobs(other)})
    rdb.sadd("apnsd:workers", "a-ghost", "b-ghost")  # registered, without heartbeats: both died

    moved = worker("rescuer").requeue_from_dead_workers([Q])

    assert {"a-ghost": 4, "b-ghost": 1} == moved
    assert sorted([*good, b"\xc1 not msgpack", b"\x2a", *other]) == sorted(take_all(jq))
    assert [] == rdb.keys(f"{Q}:inflight:*-ghost")


def test_recovery_returns_list_batches_and_hash_batches_together_oldest_first(jq, rdb, worker):
    """A dead worker's batches in either form (a take's list; a partial commit's kept jobs and a batch an earlier
    version stored in the hash) come back in the order they were taken."""
    items = jobs(9)
    rdb.hset(f"{Q}:inflight:dead", "1", pack_jobs(items[:2]))  # an earlier version's batch, taken first
    lpush_each(jq, items[2:])
    dead = worker("dead")
    dead.heartbeat(30.0, {})
    kept, _ = dead.take(Q, 3)
    dead.commit(Commit(Q, kept, counts={"delivered": 1}, keep=items[3:5]))  # items[2] resolved
    dead.take(Q, 2)
    rdb.delete(dead.keys.heartbeat("dead"))

    moved = worker("rescuer").requeue_from_dead_workers([Q])

    left = list(rdb.scan_iter("*:inflight*:dead*"))
    assert ({"dead": 6}, [*items[:2], *items[3:]], []) == (moved, take_all(jq), left)


def test_a_dead_worker_an_earlier_version_unregistered_still_has_its_batch_lists_recovered(jq, rdb, worker):
    """An earlier apnsd recovering a dead worker returns only the hash batches and drops it from apnsd:workers; its
    batch lists still come back, because current workers also look in the registry earlier versions never touch."""
    items = jobs(4)
    _dead_worker_with_batches(jq, rdb, worker, "dead", items, [2, 2])
    rdb.srem("apnsd:workers", "dead")  # what an earlier version's recovery does once the hash is empty

    moved = worker("rescuer").requeue_from_dead_workers([Q])

    assert ({"dead": 4}, items, set()) == (moved, take_all(jq), rdb.smembers("apnsd:workers:lists"))


def test_orphan_sweep_returns_unheld_list_batches_and_keeps_held_ones(jq, rdb, worker):
    """requeue_orphans returns the batches (either form) its process no longer holds, and only those."""
    items = jobs(6)
    lpush_each(jq, items)
    w = worker("w1")
    held, _ = w.take(Q, 2)
    w.take(Q, 2)  # the orphan: no longer held
    partial, _ = w.take(Q, 2)
    w.commit(Commit(Q, partial, counts={"delivered": 1}, keep=items[5:]))

    moved = w.requeue_orphans(Q, lambda: [held])

    assert (3, 2, [items[2], items[3], items[5]]) == (moved, jq.inflight_count(Q, "w1"), take_all(jq))
    assert 1 == w.inflight_batches(Q)


def test_recovery_covers_every_queue_given(jq, rdb, worker):
    """A dead worker's batches are returned on each queue it took from."""
    other = "apnsd:queue:other"
    a, b = jobs(2, "a"), jobs(2, "b")
    lpush_each(jq, a)
    lpush_each(jq, b, other)
    dead = worker("dead")
    dead.heartbeat(30.0, {})
    dead.take(Q, 2)
    dead.take(other, 2)
    rdb.delete(dead.keys.heartbeat("dead"))

    assert {"dead": 4} == worker("rescuer").requeue_from_dead_workers([Q, other])
    assert (a, b) == (take_all(jq), take_all(jq, other))


def test_release_all_returns_every_batch_in_original_order(jq, rdb, worker):
    """At shutdown a worker returns all its batches to the consuming end, first taken first."""
    items = jobs(8)
    lpush_each(jq, items)
    w = worker("w1")
    w.take(Q, 3)
    w.take(Q, 2)

    assert 5 == w.requeue_held(Q)
    assert items == take_all(jq)
    assert [] == list(rdb.scan_iter(match="*:inflight*:w1*"))


# --- scheduling ----------------------------------------------------------------------------------


def test_promote_due_moves_only_due_jobs_earliest_first(jq, worker):
    """Scheduled jobs whose time has come move to the consuming end, earliest due taken first."""
    items = jobs(4)
    w = worker("w1")
    for item, at in zip(items, [300.0, 100.0, 200.0, 400.0], strict=False):
        w.schedule(Q, item, at)
    lpush_each(jq, jobs(1, "waiting"))

    assert 2 == w.promote_due(Q, 250.0)
    assert [items[1], items[2], *jobs(1, "waiting")] == take_all(jq)
    assert (2, 1) == (jq.scheduled_count(Q), jq.scheduled_count(Q, until=300.0))
    assert 0 == w.promote_due(Q, 250.0)


def test_promote_due_respects_its_limit(jq, worker):
    """At most ``limit`` due jobs move per call."""
    w = worker("w1")
    for i, item in enumerate(jobs(5)):
        w.schedule(Q, item, float(i))

    assert (2, 2, 1, 0) == tuple(w.promote_due(Q, 10.0, limit=2) for _ in range(4))


def test_promote_due_onto_a_queue_of_another_type_keeps_every_scheduled_job(jq, rdb, worker):
    """The queue holds a string (another program): promoting fails naming the keys and every due job stays in
    the scheduled set; once the key is fixed they all move."""
    items = jobs(3)
    w = worker("w1")
    for i, item in enumerate(items):
        w.schedule(Q, item, float(i))
    rdb.set(Q, "another program's string")

    with pytest.raises(KeyTypeError):
        w.promote_due(Q, 10.0)
    kept = jq.scheduled_count(Q)
    rdb.delete(Q)

    assert (3, 3, items) == (kept, w.promote_due(Q, 10.0), take_all(jq))


def test_racing_promoters_move_each_job_once(jq, worker):
    """Several workers promoting the same due jobs concurrently move every job exactly once."""
    items = jobs(400)
    w = worker("w1")
    for i, item in enumerate(items):
        w.schedule(Q, item, float(i))
    promoters = [worker(f"p{i}") for i in range(4)]
    barrier = threading.Barrier(len(promoters))
    moved: list[int] = []

    def promote(q: JobQueue) -> None:
        barrier.wait()
        while n := q.promote_due(Q, 1000.0, limit=25):
            moved.append(n)

    threads = [threading.Thread(target=promote, args=(q,)) for q in promoters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    taken = take_all(jq)
    assert 400 == sum(moved)
    assert sorted(items) == sorted(taken)
    assert 400 == len(set(taken))
    assert 0 == jq.scheduled_count(Q)


def test_scheduled_key_per_queue(jq):
    """The default queue's scheduled set is apnsd:scheduled; other queues get <queue>:scheduled."""
    assert ("apnsd:scheduled", "apnsd:queue:voip:scheduled") == (
        jq.keys.scheduled(Q),
        jq.keys.scheduled("apnsd:queue:voip"),
    )


# --- wait ----------------------------------------------------------------------------------------


def test_wait_on_an_empty_queue_times_out_false(jq):
    """wait returns False when no job arrives within the timeout."""
    assert False is jq.wait(Q, 0.05)


def test_wait_returns_true_without_taking_the_job(jq):
    """wait returns True when a job is there and leaves the queue exactly as it was."""
    items = jobs(3)
    lpush_each(jq, items)

    assert True is jq.wait(Q, 1.0)
    assert items == take_all(jq)


def test_wait_wakes_when_a_job_arrives(jq, rdb, worker):
    """A blocked wait returns True as soon as an application pushes a job."""
    w = worker("w1")
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(w.wait(Q, 10.0)))
    t.start()
    wait_for(lambda: 1 == rdb.info("clients")["blocked_clients"], 5.0)

    lpush_each(jq, jobs(1))
    t.join(5)

    assert [True] == result
    assert jobs(1) == take_all(jq)


# --- dead letters and inspection -----------------------------------------------------------------


def _dead(raw: bytes, app: str | None, reason: str) -> bytes:
    return dead_entry(raw, app, reason, None, "detail", 0, None, 1.0)


def test_requeue_dead_by_reason_prefix_to_each_apps_queue(jq, rdb):
    """Dead letters whose reason starts with the prefix go back onto their app's queue; others stay."""
    a, b, c, d = jobs(4)
    rdb.lpush(
        "apnsd:dead",
        _dead(a, "default", "bad_token"),
        _dead(b, "voip", "bad_payload"),
        _dead(c, "default", "InvalidToken"),
        _dead(d, None, "bad_field"),
    )

    moved = jq.requeue_dead({"default": Q, "voip": "apnsd:queue:voip"}, Q, 100, "bad_")

    assert 3 == moved
    assert ["InvalidToken"] == [e["reason"] for e in jq.dead_entries(10)]
    assert ({a, d}, [b]) == (set(take_all(jq)), take_all(jq, "apnsd:queue:voip"))


def test_requeue_dead_respects_the_limit(jq, rdb):
    """No more than ``limit`` dead letters are requeued."""
    rdb.lpush("apnsd:dead", *[_dead(j, "default", "x") for j in jobs(5)])

    assert 2 == jq.requeue_dead({"default": Q}, Q, 2, None)
    assert (2, 3) == (jq.depth(Q), jq.counts()["dead"])


def test_dead_entries_are_newest_first(jq, rdb):
    """dead_entries lists the most recent dead letters first, up to count."""
    rdb.lpush("apnsd:dead", *[_dead(j, "default", f"r{i}") for i, j in enumerate(jobs(3))])

    assert ["r2", "r1"] == [e["reason"] for e in jq.dead_entries(2)]


def test_counts_reports_dead_unregistered_and_lifetime_totals(jq, rdb):
    """counts gives dead-letter and unregistered-token totals and every lifetime counter."""
    rdb.lpush("apnsd:dead", b"{}", b"{}")
    rdb.hset("apnsd:unregistered", mapping={"t1": "{}"})
    rdb.hset("apnsd:stats", mapping={"delivered": 7, "dead": 2})

    assert {"dead": 2, "unregistered": 1, "total_delivered": 7, "total_dead": 2} == jq.counts()


def test_counts_of_an_empty_database_are_zero(jq):
    """With nothing recorded, counts are zero and there are no totals."""
    assert {"dead": 0, "unregistered": 0} == jq.counts()


def test_unregistered_returns_all_or_the_asked_tokens(jq, rdb):
    """unregistered returns every entry, or only the asked tokens that are present."""
    entry = {"app": "default", "reason": "Unregistered", "timestamp_ms": 5}
    rdb.hset("apnsd:unregistered", mapping={"t1": json.dumps(entry), "t2": json.dumps({**entry, "timestamp_ms": 6})})

    assert {"t1", "t2"} == set(jq.unregistered())
    assert {"t1": entry} == jq.unregistered(["t1", "missing"])
    assert {} == jq.unregistered([])


def test_redis_unreachable_is_a_queue_error():
    """Without a Redis server every operation raises QueueError, which is retryable."""
    q = JobQueue(connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5), "apnsd", "w1")

    with pytest.raises(QueueError) as info:
        q.take(Q, 1)
    assert info.value.retryable
