"""The delivery loop's side of binary windows held by position (core/slim.py): jobs read back from their batches'
in-flight lists (worker/readback.py), and what a stop does with those that waited for Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apnsd.config import AppConfig, WorkerConfig
from apnsd.core.jobs import JobParser
from apnsd.errors import QueueError
from apnsd.gateway.binary_session import BinarySession
from apnsd.gateway.session import Session
from apnsd.store.queue import Commit
from apnsd.wire import binary
from apnsd.worker.delivery import DeliveryLoop
from apnsd.worker.handoff import Taken
from apnsd.worker.recorder import OutcomeRecorder
from tests.support.fake_transport import FakeNetwork

Q = "q"
APPS = {"default": AppConfig(protocol="binary")}


class BatchLists:
    """The parts of a JobQueue the loop uses here: the in-flight lists the batches were taken into (readable, or
    Redis unavailable), and the commits it writes."""

    def __init__(self) -> None:
        self.lists: dict[str, list[bytes]] = {}
        self.up = True
        self.commits: list[Commit] = []

    def commits_partially(self, queue: str) -> bool:
        """Batches may be committed in parts."""
        return True

    def batch_jobs(self, queue: str, batch_id: str, first: int = 0, last: int | None = None) -> list[bytes]:
        """A batch's jobs as taken, oldest first, from position ``first`` to ``last`` (empty once the list is gone)."""
        if not self.up:
            raise QueueError("Redis unavailable during reading an in-flight batch: connection refused")
        jobs = self.lists.get(batch_id, [])
        return list(jobs[first : None if last is None else last + 1])

    def commit(self, c: Commit) -> None:
        """Keep the commit; a complete one drops the batch's list, as the commit script does."""
        if not self.up:
            raise QueueError("Redis unavailable during writing outcomes: connection refused")
        self.commits.append(c)
        if c.keep is None:
            self.lists.pop(c.batch_id, None)


@pytest.fixture
def loop() -> Iterator[tuple[DeliveryLoop, BatchLists, FakeNetwork]]:
    """A loop over one binary session on fake connections, its feeder never started."""
    store, net = BatchLists(), FakeNetwork()
    s = BinarySession("default", APPS["default"], net, structlog.get_logger())
    parser = JobParser({"default": ("binary", 2048, 2048)})
    d = DeliveryLoop(Q, {"default": s}, store, parser, WorkerConfig(), OutcomeRecorder(APPS, False))  # type: ignore[arg-type]
    yield d, store, net
    d.handoff.release()


def job(i: int) -> bytes:
    """A one-token job: its token ends in ``i``."""
    return msgspec.json.encode({"token": f"{i:064x}", "payload": {"aps": {"alert": "hi"}}})


def take(d: DeliveryLoop, store: BatchLists, batch_id: str, raws: list[bytes]) -> None:
    """A batch taken into a list of its own, handed to the loop and dispatched."""
    store.lists[batch_id] = raws
    d._dispatch(Taken(batch_id, raws, Q, listed=True), 0.0, 1000.0)


def tokens(raws: list[Any]) -> list[str]:
    """The device tokens of jobs (raw or decoded)."""
    return [msgspec.json.decode(r)["token"] for r in raws]


def test_an_answer_that_waited_for_redis_is_recorded_at_a_stop_not_returned_to_the_queue(loop) -> None:
    """The gateway names a held job while Redis is down: its answer (InvalidToken) waits in limbo with the resend of
    those after it. Redis is back when the grace period ends: that job is recorded as unregistered, once, and only the
    unanswered ones go back to the queue."""
    d, store, net = loop
    raws = [job(i) for i in range(1, 6)]
    take(d, store, "1", raws)
    s = d.sessions["default"]
    d._step_sessions(0.0)  # connects (a fake connect completes at once) and writes all five
    d._step_sessions(0.01)  # their bytes left: held by position
    assert 5 == s.unanswered_count() and 5 == s._old_count
    store.up = False
    net.current.feed(binary.encode_error_response(8, 3))
    net.current.hang_up()
    d._record_all(s.step(0.02, True))  # the first two delivered; the third's answer and the rest wait for Redis
    assert s.limbo
    store.up = True

    d._requeue_unanswered(0.03)

    (c,) = store.commits
    named = msgspec.json.decode(raws[2])["token"]
    assert ([named], tokens(raws[3:])) == (list(c.unregistered), tokens(c.requeue))
    assert {"delivered": 2, "unregistered": 1, "returned": 2} == c.counts


class RewrittenLists(BatchLists):
    """BatchLists where a partial commit moves what stays in flight out of the batch's list (into the in-flight hash):
    reading a position from that list afterwards would name another job, so it fails the test."""

    def __init__(self) -> None:
        super().__init__()
        self.rewritten: set[str] = set()

    def batch_jobs(self, queue: str, batch_id: str, first: int = 0, last: int | None = None) -> list[bytes]:
        """As BatchLists, never from a rewritten list."""
        assert batch_id not in self.rewritten, f"batch {batch_id} read back by position after a partial commit"
        return super().batch_jobs(queue, batch_id, first, last)

    def commit(self, c: Commit) -> None:
        """As BatchLists; a partial commit rewrites the batch's in-flight storage."""
        super().commit(c)
        if c.keep is not None:
            self.rewritten.add(c.batch_id)


def frames_of(data: bytes) -> list[tuple[int, str]]:
    """(identifier, device token) of each frame written."""
    return [(f.identifier, f.token.hex()) for f in binary.decode_frames(data)[0]]


LOOP_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.integers(1, 30)),
        st.tuples(st.just("error"), st.integers(0, 10_000), st.sampled_from([8, 7, 10, 1])),
        st.tuples(st.just("drop"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("redis"), st.booleans()),
        st.tuples(st.just("wait"), st.sampled_from([0.001, 0.03, 0.31])),
        st.tuples(st.just("rotate"), st.sampled_from(["default", "default#2"])),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LOOP_EVENTS, st.booleans())
def test_two_connections_rotations_redis_outages_and_a_stop_resolve_each_job_once_and_as_named(events, up_at_stop):
    """Batches taken into lists, two connections of one app, error responses naming any written frame, lost
    connections, Redis outages, rotations and commit slices, then a stop: every batch committed counts each of its jobs
    once, nothing is read back from a list a partial commit rewrote or dead-lettered as lost, a job is recorded
    unregistered (or dead) only if the gateway named it, and with Redis up at the stop nothing stays in flight."""
    store, net = RewrittenLists(), FakeNetwork()
    first = BinarySession("default", APPS["default"], net, structlog.get_logger())
    second = BinarySession("default", APPS["default"], net, structlog.get_logger())
    second.hold = first.hold
    parser = JobParser({"default": ("binary", 2048, 2048)})
    sessions: dict[str, Session] = {"default": first, "default#2": second}
    d = DeliveryLoop(Q, sessions, store, parser, WorkerConfig(), OutcomeRecorder(APPS, False))  # type: ignore[arg-type]
    now, sizes = 0.0, {}
    frames: dict[int, list[tuple[int, str]]] = {}  # per connection: what it carried
    named: dict[int, set[str]] = {8: set(), 7: set()}  # tokens error responses named, by status
    try:
        for ev in events:
            live = [s for s in d._all_sessions() if s.transport is not None]
            if ev[0] == "take":
                batch_id = str(len(sizes) + 1)
                raws = [job(len(sizes) * 100 + i) for i in range(ev[1])]
                sizes[batch_id] = len(raws)
                take(d, store, batch_id, raws)
            elif ev[0] == "error":
                carried = [s for s in live if frames.get(id(s.transport))]
                if carried:
                    s = carried[ev[1] % len(carried)]
                    ident, token = frames[id(s.transport)][ev[1] % len(frames[id(s.transport)])]
                    named.setdefault(ev[2], set()).add(token)
                    s.transport.feed(binary.encode_error_response(ev[2], ident))  # type: ignore[union-attr]
                    s.transport.hang_up()  # type: ignore[union-attr]
            elif ev[0] == "drop" and live:
                t = live[ev[1] % len(live)].transport
                t.hang_up() if ev[2] else t.fail_writes()  # type: ignore[union-attr]
            elif ev[0] == "redis":
                store.up = ev[1]
            elif ev[0] == "wait":
                now += ev[1]
            elif ev[0] == "rotate":
                d.replace_session(ev[1], d.sessions[ev[1]].clone(), "test")
            for s in d._all_sessions():
                d._record_all(s.step(now, True))
            d._retire()
            d._next_slice = d._next_commit_try = 0.0
            d._commit_slices(now)
            d._commit_ready(now)
            for t in net.transports:
                frames.setdefault(id(t), []).extend(frames_of(t.take_wire()))
        store.up = up_at_stop
        d._requeue_unanswered(now)
        store.up = True
        d._next_commit_try = 0.0
        d._commit_ready(now)
    finally:
        d.handoff.release()

    counted: dict[str, int] = {}
    for c in store.commits:
        counted[c.batch_id] = counted.get(c.batch_id, 0) + sum(c.counts.values())
    finished = {b: n for b, n in sizes.items() if b not in store.lists}
    assert finished == {b: counted.get(b, 0) for b in finished}
    assert not up_at_stop or not store.lists  # Redis up at the stop: nothing left in flight
    dead = [msgspec.json.decode(x) for c in store.commits for x in c.dead]
    assert "in_flight_job_lost" not in {x["reason"] for x in dead}
    unregistered = [t for c in store.commits for t in c.unregistered]
    assert len(unregistered) == len(set(unregistered)) and set(unregistered) <= named[8]
    assert {msgspec.json.decode(x["job"])["token"] for x in dead if x["reason"] == "InvalidPayloadSize"} <= named[7]
    returned = tokens([r for c in store.commits for r in c.requeue])
    assert len(returned) == len(set(returned)) and not set(returned) & set(unregistered)


def test_a_job_gone_from_its_list_is_dead_lettered_without_a_job_to_requeue(loop) -> None:
    """The batch's list is gone when the gateway names a held job: that job and the one after it are dead-lettered as
    in_flight_job_lost with a null job (`apnsd dead requeue` leaves such entries alone instead of pushing an empty job,
    which would come back as not_json), and the batch still counts each of its jobs once."""
    d, store, net = loop
    take(d, store, "1", [job(i) for i in range(1, 4)])
    s = d.sessions["default"]
    d._step_sessions(0.0)
    d._step_sessions(0.01)
    del store.lists["1"]
    net.current.feed(binary.encode_error_response(8, 2))
    net.current.hang_up()

    d._record_all(s.step(0.02, True))
    d._commit_ready(0.02)

    (c,) = store.commits
    dead = [msgspec.json.decode(e) for e in c.dead]
    assert [("in_flight_job_lost", None)] * 2 == [(e["reason"], e["job"]) for e in dead]
    assert {"delivered": 1, "dead": 2} == c.counts
