"""The delivery loop's campaign work (parsing, committing) yields to a first-lane batch handed over meanwhile."""

from __future__ import annotations

import select
from collections.abc import Iterator

import pytest

from apnsd.config import WorkerConfig
from apnsd.core.jobs import JobParser
from apnsd.store.queue import Commit
from apnsd.worker.delivery import DeliveryLoop
from apnsd.worker.handoff import Taken
from apnsd.worker.lanes import LanePlan
from apnsd.worker.recorder import Batch, OutcomeRecorder

Q = "q"
URGENT, BULK = f"{Q}:urgent", f"{Q}:bulk"


class CommitLog:
    """The one part of a JobQueue the loop uses here: commits, in order, with a hook run at each."""

    def __init__(self) -> None:
        self.committed: list[str] = []
        self.on_commit: list[object] = []

    def commits_partially(self, queue: str) -> bool:
        """Batches of every queue here may be committed in parts."""
        return True

    def commit(self, c: Commit) -> None:
        """Record the batch and run the next hook (a feeder handing over meanwhile)."""
        self.committed.append(c.batch_id)
        if self.on_commit:
            self.on_commit.pop(0)()  # type: ignore[operator]


@pytest.fixture
def loop() -> Iterator[DeliveryLoop]:
    """A loop over three lanes with no connections (nothing is written), its feeder never started."""
    plan = LanePlan(Q, (URGENT, Q, BULK))
    d = DeliveryLoop(Q, {}, CommitLog(), JobParser({}), WorkerConfig(), OutcomeRecorder({}, False), plan)  # type: ignore[arg-type]
    yield d
    d.handoff.release()


def test_an_urgent_batch_handed_over_while_a_campaign_is_parsed_is_parsed_next(loop: DeliveryLoop) -> None:
    """Three campaign batches handed over; an urgent one arrives while the first is parsed: it goes second."""
    order: list[str] = []

    def dispatch(taken: Taken, now: float, wall: float) -> None:
        order.append(taken.batch_id)
        if taken.batch_id == "b1":
            loop.handoff.give(Taken("u1", [b"{}"], URGENT, ahead=True))

    loop._dispatch = dispatch  # type: ignore[method-assign]
    for b in ("b1", "b2", "b3"):
        loop.handoff.give(Taken(b, [b"{}"], BULK))

    loop._dispatch_new(0.0)

    assert ["b1", "u1", "b2", "b3"] == order
    assert not loop._ahead_arrived()


def test_commits_stop_for_an_urgent_batch_handed_over_meanwhile_and_resume_next_turn(loop: DeliveryLoop) -> None:
    """An urgent batch given during the first of three commits stops the rest until it is taken (its ``{}`` is
    rejected, so its batch completes and is committed after them)."""
    jq: CommitLog = loop.jq  # type: ignore[assignment]
    jq.on_commit.append(lambda: loop.handoff.give(Taken("u1", [b"{}"], URGENT, ahead=True)))
    loop._ready.extend(Batch(Commit(BULK, b)) for b in ("b1", "b2", "b3"))

    loop._commit_ready(0.0)
    assert (["b1"], True) == (jq.committed, loop._ahead_arrived())

    loop._dispatch_new(0.0)
    loop._commit_ready(0.0)
    assert (["b1", "b2", "b3", "u1"], False) == (jq.committed, loop._ahead_arrived())


def test_a_turn_that_saw_an_urgent_batch_arrive_goes_round_again_without_waiting(loop: DeliveryLoop) -> None:
    """With an urgent batch given since the last dispatch, the wait returns at once and leaves the wake-up unread."""
    loop.handoff.give(Taken("u1", [b"{}"], URGENT, ahead=True))

    loop._wait(0.0)

    assert (True, 1) == (loop._ahead_arrived(), len(loop.handoff.batches))
    assert select.select([loop.handoff.fileno()], [], [], 0)[0]
