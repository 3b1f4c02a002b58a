"""The environment-mismatch guard's arithmetic: more than half BadDeviceToken of at least N answers in a window."""

from __future__ import annotations

from apnsd.core.guard import MismatchGuard, mismatch_message


def test_trips_when_more_than_half_of_enough_answers_are_bad() -> None:
    """51 bad of 100 answers trips the guard and remembers the counts."""
    guard = MismatchGuard(100, 300.0)
    assert (False, True) == (guard.observe(49, 49, 1000.0), guard.observe(51, 2, 1001.0))
    assert (51, 100) == guard.tripped


def test_exactly_half_does_not_trip() -> None:
    """50 bad of 100 answers is not "most": the guard stays quiet."""
    guard = MismatchGuard(100, 300.0)
    assert (False, None) == (guard.observe(100, 50, 1000.0), guard.tripped)


def test_too_few_answers_never_trip() -> None:
    """99 answers that are all bad are below the minimum and do not trip."""
    guard = MismatchGuard(100, 300.0)
    assert (False, None) == (guard.observe(99, 99, 1000.0), guard.tripped)


def test_answers_older_than_the_window_are_forgotten() -> None:
    """Bad answers that left the window no longer count toward the minimum."""
    guard = MismatchGuard(100, 60.0)
    guard.observe(60, 60, 1000.0)
    assert (False, None) == (guard.observe(60, 60, 1100.0), guard.tripped)


def test_zero_turns_the_guard_off() -> None:
    """min_answers 0 means the guard never trips."""
    guard = MismatchGuard(0, 300.0)
    assert (False, None) == (guard.observe(10_000, 10_000, 1000.0), guard.tripped)


def test_the_message_names_the_other_environment() -> None:
    """A sandbox app full of BadDeviceToken is told its tokens are probably production tokens."""
    assert "production tokens sent to the sandbox gateway" in mismatch_message("sandbox", 80, 100)
