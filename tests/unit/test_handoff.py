"""The feeder/loop hand-over: room accounting, posted calls in order, the wake-up pipe, closing."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

import pytest

from apnsd.worker.handoff import BACKLOG_BATCHES, Handoff, Taken


@pytest.fixture
def handoff() -> Iterator[Handoff]:
    """A hand-over for max_in_flight 1,000 and batches of 100 (its pipe closed afterwards)."""
    h = Handoff(max_in_flight=1_000, batch_size=100)
    yield h
    h.release()


def readable(h: Handoff) -> bool:
    """True when the wake-up pipe has something to say."""
    return bool(select.select([h.fileno()], [], [], 0)[0])


def test_room_is_bounded_by_in_flight(handoff: Handoff) -> None:
    """Parsed notifications count against max_in_flight until committed."""
    handoff.parsed(0, 999)
    handoff.wake_feeder(0)
    assert not handoff.full()

    handoff.parsed(0, 1)
    assert handoff.full()

    handoff.resolved(1)
    assert not handoff.full()


def test_room_is_bounded_by_work_taken_but_not_yet_sent(handoff: Handoff) -> None:
    """Handed-over jobs plus the sessions' backlog may not exceed BACKLOG_BATCHES batches."""
    handoff.give(Taken("b1", [b"{}"] * 100))
    handoff.wake_feeder(100 * BACKLOG_BATCHES - 101)
    assert not handoff.full()

    handoff.wake_feeder(100 * BACKLOG_BATCHES - 100)
    assert handoff.full()


def test_parsing_moves_jobs_from_unsent_to_in_flight_and_the_backlog(handoff: Handoff) -> None:
    """Until the loop publishes its backlog, parsed notifications count as backlog, so the bound holds meanwhile."""
    handoff.give(Taken("b1", [b"{}"] * 3))
    handoff.parsed(3, 5)

    assert (0, 5, 5) == (handoff.unsent, handoff.in_flight, handoff.backlog)


def test_gives_and_posts_wake_the_loop_and_posted_calls_run_in_order(handoff: Handoff) -> None:
    """Each give or post makes the pipe readable; drained, it is quiet; posted calls run in posting order."""
    ran: list[int] = []
    assert not readable(handoff)
    handoff.post(lambda: ran.append(1))
    handoff.post(lambda: ran.append(2))
    handoff.give(Taken("b1", [b"{}"]))
    assert readable(handoff)

    handoff.drain_wakeups()
    handoff.run_posted()

    assert not readable(handoff)
    assert [1, 2] == ran
    assert ["b1"] == [t.batch_id for t in handoff.batches]


def test_once_closed_no_take_starts_and_waiting_for_room_returns(handoff: Handoff) -> None:
    """close() returns at once when no take is in progress; later takes see the hand-over closed."""
    handoff.parsed(0, 1_000)  # full: a feeder would wait for room
    with handoff.taking() as still_open:
        assert still_open

    handoff.close()
    handoff.wait_for_room()  # returns although full

    with handoff.taking() as still_open:
        assert not still_open
    assert handoff.closed.is_set()


def test_release_closes_the_wake_up_pipe_and_later_wake_ups_are_dropped() -> None:
    """Once the loop is done its pipe is closed; a post or give after that neither raises nor reopens it."""
    h = Handoff(max_in_flight=100, batch_size=10)
    read_end = h.fileno()

    h.release()
    h.post(lambda: None)
    h.give(Taken("b1", [b"job"]))

    assert (-1, 1) == (h.fileno(), len(h.posted))
    with pytest.raises(OSError):
        os.fstat(read_end)


def test_only_batches_that_jump_the_backlog_are_counted_as_given_ahead(handoff: Handoff) -> None:
    """ahead_given counts the first lane's (and the guard's) batches, not a campaign's, so the loop sees new ones."""
    handoff.give(Taken("b1", [b"{}"], "q:bulk"))
    handoff.give(Taken("u1", [b"{}"], "q:urgent", ahead=True))
    handoff.give(Taken("b2", [b"{}"], "q:bulk"))

    assert (1, 3) == (handoff.ahead_given, len(handoff.batches))
