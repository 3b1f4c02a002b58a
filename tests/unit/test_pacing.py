"""Connection pacing: exponential backoff with jitter, a per-minute cap, and reset on success."""

from __future__ import annotations

import random

import pytest

from apnsd.core.pacing import ConnectPacer, retry_delay


class Highest(random.Random):
    """A random source whose uniform() always picks the top of the range."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Lowest(random.Random):
    """A random source whose uniform() always picks the bottom of the range."""

    def uniform(self, a: float, b: float) -> float:
        return a


def test_backoff_ceiling_doubles_per_failure_up_to_the_cap():
    """Consecutive failures double the ceiling from the initial delay until the cap holds it."""
    pacer = ConnectPacer(60, 1.0, 60.0, rng=Highest())

    assert [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0] == [pacer.failed(0.0) for _ in range(8)]
    assert 8 == pacer.failures


def test_backoff_floor_is_half_the_ceiling():
    """With the least jitter the delay is half the ceiling, so a failing gateway is never retried at once."""
    pacer = ConnectPacer(60, 1.0, 60.0, rng=Lowest())

    assert [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0] == [pacer.failed(0.0) for _ in range(8)]


def test_jittered_delays_stay_within_half_ceiling_and_ceiling():
    """Every jittered delay lies in [ceiling/2, ceiling] for its failure count, with the ceiling capped."""
    pacer = ConnectPacer(60, 0.5, 20.0, rng=random.Random(7))
    out_of_range = []
    for k in range(1, 40):
        ceiling = min(20.0, 0.5 * 2 ** (k - 1))
        delay = pacer.failed(100.0)
        if not ceiling / 2 <= delay <= ceiling:
            out_of_range.append((k, delay))

    assert [] == out_of_range


def test_jitter_spreads_delays():
    """Different random draws give different delays, so many workers do not reconnect in lockstep."""
    delays = set()
    for seed in range(20):
        pacer = ConnectPacer(60, 1.0, 60.0, rng=random.Random(seed))
        delays.add(round(pacer.failed(0.0), 6))

    assert 20 == len(delays)


def test_failure_sets_the_next_attempt_time():
    """After a failure the next attempt is allowed only once the chosen delay has passed."""
    pacer = ConnectPacer(60, 1.0, 60.0, rng=random.Random(3))

    delay = pacer.failed(1000.0)

    assert 1000.0 + delay == pacer.next_attempt(1000.0)


def test_per_minute_cap_holds_the_next_attempt_until_the_oldest_leaves_the_window():
    """Once the cap is reached within a minute, the next attempt waits until the oldest is 60 s old."""
    pacer = ConnectPacer(3, 1.0, 60.0)
    for t in (0.0, 10.0, 20.0):
        assert 0.0 == pacer.next_attempt(t)  # no wait: allowed at once
        pacer.attempted(t)

    assert 60.0 == pacer.next_attempt(30.0)
    assert 60.0 == pacer.next_attempt(59.9)
    assert 0.0 == pacer.next_attempt(60.0)


def test_per_minute_cap_slides_with_time():
    """Attempts older than a minute stop counting, one by one."""
    pacer = ConnectPacer(2, 1.0, 60.0)
    pacer.attempted(0.0)
    pacer.attempted(30.0)

    assert 60.0 == pacer.next_attempt(45.0)
    pacer.attempted(60.0)
    assert 90.0 == pacer.next_attempt(61.0)


def test_per_minute_cap_and_backoff_combine_to_the_later_time():
    """When both a backoff and the per-minute cap apply, the next attempt waits for the later of the two."""
    pacer = ConnectPacer(1, 1.0, 60.0, rng=Highest())
    pacer.attempted(0.0)

    pacer.failed(0.0)  # backoff until 1.0, cap until 60.0

    assert 60.0 == pacer.next_attempt(0.5)


def test_success_resets_the_backoff():
    """A success clears the failure count and the wait, so the next failure starts from the initial delay."""
    pacer = ConnectPacer(60, 1.0, 60.0, rng=Highest())
    for _ in range(5):
        pacer.failed(0.0)

    pacer.succeeded()

    assert (0, 0.0) == (pacer.failures, pacer.next_attempt(0.0))
    assert 1.0 == pacer.failed(0.0)


def test_success_does_not_lift_the_per_minute_cap():
    """A successful connect still counts towards the per-minute cap."""
    pacer = ConnectPacer(2, 1.0, 60.0)
    pacer.attempted(0.0)
    pacer.attempted(1.0)

    pacer.succeeded()

    assert 60.0 == pacer.next_attempt(2.0)


@pytest.mark.parametrize(("attempts", "ceiling"), [(0, 2.0), (1, 4.0), (3, 16.0), (20, 3600.0)])
def test_retry_delay_grows_exponentially_with_jitter_and_a_cap(attempts, ceiling):
    """A notification's retry waits base·2^attempts, jittered into [ceiling/2, ceiling], at most the cap."""
    assert (ceiling / 2, ceiling) == (retry_delay(attempts, 2.0, Lowest()), retry_delay(attempts, 2.0, Highest()))


def test_a_productive_connection_leaves_the_per_minute_count_and_resets_the_backoff():
    """After a connection that delivered, its attempt no longer counts toward the cap and the next is immediate."""
    pacer = ConnectPacer(2, 1.0, 60.0, rng=Highest())
    pacer.attempted(0.0)
    pacer.failed(0.0)
    pacer.attempted(1.0)

    pacer.productive()

    assert (0, True) == (pacer.failures, pacer.next_attempt(1.0) <= 1.0)
    for t in (1.0, 1.1, 1.2):  # each of these connections delivers, ends on an error response, reconnects
        assert True is (pacer.next_attempt(t) <= t)
        pacer.attempted(t)
        pacer.productive()


def test_connections_that_deliver_nothing_stay_under_the_cap():
    """Attempts whose connections delivered nothing keep counting: the cap holds them to N per minute."""
    pacer = ConnectPacer(2, 1.0, 60.0)
    pacer.attempted(0.0)
    pacer.attempted(0.5)

    assert 60.0 == pacer.next_attempt(1.0)


def test_answered_connections_leave_the_count_and_a_run_of_them_waits_a_short_fixed_delay():
    """Connections ended by the answer about their first notification do not count toward the cap; the first
    reconnects at once, the second in a row waits the given delay, whatever the backoff had grown to."""
    pacer = ConnectPacer(2, 1.0, 60.0, rng=Highest())
    pacer.attempted(0.0)
    pacer.failed(0.0)
    pacer.attempted(2.0)  # the cap is reached: without the answer the next attempt would wait for 60.0

    pacer.answered(2.0, 0.25)
    first = pacer.next_attempt(2.0)
    pacer.attempted(2.0)
    pacer.answered(2.0, 0.25)

    assert (0, True, 2.25) == (pacer.failures, first <= 2.0, pacer.next_attempt(2.0))
