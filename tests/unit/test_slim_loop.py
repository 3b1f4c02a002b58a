"""The delivery loop's side of binary windows held by position (core/slim.py): jobs read back from their batches'
in-flight lists (DeliveryLoop._hydrate), and what a stop does with those that waited for Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import structlog

from apnsd.config import AppConfig, WorkerConfig
from apnsd.core.jobs import JobParser
from apnsd.errors import QueueError
from apnsd.gateway.binary_session import BinarySession
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

    def batch_jobs(self, queue: str, batch_id: str) -> list[bytes]:
        """A batch's jobs as taken, oldest first (empty once the list is gone)."""
        if not self.up:
            raise QueueError("Redis unavailable during reading an in-flight batch: connection refused")
        return list(self.lists.get(batch_id, []))

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
