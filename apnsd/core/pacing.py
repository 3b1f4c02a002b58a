"""When a connection may be (re)opened: exponential backoff with jitter and a per-minute cap on attempts
that delivered nothing (failed connects, connections closed before any notification got through)."""

from __future__ import annotations

import random
from collections import deque


class ConnectPacer:
    """Spaces connection attempts so a failing gateway is never hammered (APNs treats churn as abuse)."""

    def __init__(self, per_minute: int, initial: float, cap: float, rng: random.Random | None = None) -> None:
        self._per_minute = per_minute
        self._initial = initial
        self._cap = cap
        self._rng = rng or random.Random()
        self._attempts: deque[float] = deque()
        self._failures = 0
        self._not_before = 0.0
        self._answered_run = 0  # consecutive connections that ended on the answer about their first notification

    @property
    def failures(self) -> int:
        """Consecutive failed attempts since the last success."""
        return self._failures

    def next_attempt(self, now: float) -> float:
        """The earliest time the next attempt is allowed."""
        while self._attempts and self._attempts[0] <= now - 60.0:
            self._attempts.popleft()
        at = self._not_before
        if len(self._attempts) >= self._per_minute:
            at = max(at, self._attempts[0] + 60.0)
        return at

    def attempted(self, now: float) -> None:
        """Record that an attempt starts now."""
        self._attempts.append(now)

    def failed(self, now: float) -> float:
        """Record a failure; returns the delay before the next attempt (equal jitter: half fixed, half random)."""
        self._failures += 1
        ceiling = min(self._cap, self._initial * 2 ** (self._failures - 1))
        delay = self._rng.uniform(ceiling / 2, ceiling)
        self._not_before = now + delay
        return delay

    def succeeded(self) -> None:
        """Record a success: the backoff starts from the beginning next time."""
        self._failures = 0
        self._not_before = 0.0

    def productive(self) -> None:
        """The latest connection delivered notifications: its attempt leaves the per-minute count and the
        backoff starts afresh, so the reconnect after it ends (e.g. on an error response) is immediate.

        The cap exists against churn, a gateway refusing us or closing empty connections; a binary
        connection that ends on an error response after delivering hundreds is normal work. A gateway
        that rejects the first notification of every connection delivers nothing and stays capped."""
        if self._attempts:
            self._attempts.pop()
        self._answered_run = 0
        self.succeeded()

    def answered(self, now: float, delay: float) -> None:
        """The latest connection ended on the gateway's answer about its first notification (a binary error
        response naming it): not churn, since that notification got its outcome, but no proof of progress
        either. Its attempt leaves the per-minute count; from the second such connection in a row the next
        waits a short fixed ``delay``, so a queue of nothing but invalid tokens costs at most one
        connection per ``delay``, not the cap's wait."""
        if self._attempts:
            self._attempts.pop()
        self._failures = 0
        self._answered_run += 1
        # The first in a row reconnects at once: at 1 % invalid tokens that is a bad token following
        # another; only a run of them (a queue of invalid tokens) is slowed down.
        self._not_before = now + delay if self._answered_run > 1 else 0.0


def retry_delay(attempts: int, base: float, rng: random.Random, cap: float = 3600.0) -> float:
    """Backoff before a notification's next attempt: base·2^attempts with jitter, capped."""
    ceiling = min(cap, base * 2**attempts)
    return rng.uniform(ceiling / 2, ceiling)


def outage_delay(failures: int) -> float:
    """How long to wait before trying Redis again after ``failures`` failures in a row: 0.1 s doubling to 5 s."""
    return min(5.0, 0.1 * 2 ** min(failures, 6))
