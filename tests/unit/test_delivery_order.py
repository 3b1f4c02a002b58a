"""The delivery loop's campaign work (parsing, committing) yields to a first-lane batch handed over meanwhile, and
lower lanes' work goes out a window at a time only while the first lane is active."""

from __future__ import annotations

import select
from collections import deque
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import structlog

from apnsd.config import AppConfig, WorkerConfig
from apnsd.core.jobs import JobParser
from apnsd.gateway.binary_session import BinarySession
from apnsd.gateway.session import State
from apnsd.store.queue import Commit
from apnsd.worker.delivery import DeliveryLoop
from apnsd.worker.handoff import Taken
from apnsd.worker.lanes import LanePlan
from apnsd.worker.recorder import Batch, OutcomeRecorder
from tests.support.fake_transport import FakeTransport

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


class Connection:
    """Stands in for a session as the lower lanes' let-out sees it: a send queue and nothing unanswered."""

    def __init__(self, lane_window: int) -> None:
        self.cfg = SimpleNamespace(lane_window=lane_window)
        self.pending: deque[int] = deque()
        self.suspended = self.disabled = None

    def ahead(self) -> int:
        """Nothing written is awaiting its answer."""
        return 0


@pytest.fixture
def campaign(loop: DeliveryLoop) -> Connection:
    """2,000 lower-lane notifications waiting for one connection with lane_window 1000; the window is at 10."""
    conn = Connection(1000)
    loop._lower[conn] = deque(range(2000))  # type: ignore[index,arg-type]
    loop._window_max, loop._window = 1000, 10.0
    return conn


def test_lower_lanes_fill_lane_window_while_the_first_lane_is_quiet(loop: DeliveryLoop, campaign: Connection) -> None:
    """No first-lane work yet: a campaign goes to the connection lane_window at a time, as without lanes."""
    loop._let_out_lower(0.0)

    assert 1000 == len(campaign.pending)


def test_lower_lanes_go_out_a_window_at_a_time_within_a_second_of_first_lane_work(
    loop: DeliveryLoop, campaign: Connection
) -> None:
    """First-lane work at t=5: until t=6 only the adaptive window (10) is let out, then lane_window again."""
    loop._first_lane.saw(5.0)

    loop._let_out_lower(5.5)
    during = len(campaign.pending)
    campaign.pending.clear()
    loop._let_out_lower(6.0)

    assert (10, 1000) == (during, len(campaign.pending))


def test_a_first_lane_batch_makes_the_first_lane_active_and_a_campaign_batch_does_not(loop: DeliveryLoop) -> None:
    """Dispatching a bulk batch at t=3 leaves the first lane quiet; an urgent one at t=7 makes it active until t=8."""
    loop._dispatch(Taken("b1", [b"{}"], BULK, ahead=False), 3.0, 0.0)
    after_bulk = loop._first_lane.active(3.5)
    loop._dispatch(Taken("u1", [b"{}"], URGENT, ahead=True), 7.0, 0.0)

    assert (False, True, False) == (after_bulk, loop._first_lane.active(7.5), loop._first_lane.active(8.0))


def test_a_binary_window_awaiting_its_silence_does_not_hold_lower_lanes_back(loop: DeliveryLoop) -> None:
    """5,000 binary frames written and awaiting confirm_delay are not ahead of new work at the gateway: a campaign
    still goes out lane_window at a time (counting them held a binary campaign to lane_window per confirm_delay)."""
    s = BinarySession("default", AppConfig(protocol="binary"), FakeTransport, structlog.get_logger())
    t = FakeTransport()
    t.connect()
    s.transport, s.state = t, State.OPEN
    s.on_connected(0.0)
    parser = JobParser({"default": ("binary", 2048, 2048)})
    s.submit(parser.parse_many([b'{"token":"%064x","payload":{}}' % i for i in range(1, 5001)])[0])
    while s.pending:
        s.send_pending(0.0)
        t.flush()
    s.on_timer(0.0)
    loop._lower[s] = deque(range(3000))  # type: ignore[arg-type]
    loop._window_max = 1000

    loop._let_out_lower(0.0)

    assert (5000, 1000) == (s.unanswered_count(), len(s.pending))
