"""Gauges the daemon refreshes on its own schedule: Redis-side sizes and ages, and the loops' connection state."""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec

from apnsd import metrics
from apnsd.store.queue import JobQueue
from apnsd.worker.delivery import LoopSnapshot


class _Stamp(msgspec.Struct):
    """The one field of a job the age gauge reads."""

    enqueued_at: float | None = None


_stamp = msgspec.json.Decoder(_Stamp)


def enqueued_at(raw: bytes) -> float | None:
    """A job's enqueued_at (unix seconds), or None when it is absent, not a finite number or the job is not JSON."""
    try:
        at = _stamp.decode(raw).enqueued_at
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):  # RecursionError: nested too deeply
        return None
    return at if at is not None and math.isfinite(at) else None


class OldestJob:
    """The age of the next job to be taken, per queue.

    A job with ``enqueued_at`` has its age; one without is aged from when it was first seen at the head of
    the queue (a lower bound), so that a queue of unstamped jobs that stops moving still shows it.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[bytes, float]] = {}

    def age(self, queue: str, head: bytes | None, now: float) -> float:
        """Seconds the head job has waited (0 for an empty queue)."""
        if head is None:
            self._seen.pop(queue, None)
            return 0.0
        at = enqueued_at(head)
        if at is None:
            seen = self._seen.get(queue)
            if seen is None or seen[0] != head:
                self._seen[queue] = seen = (head, now)
            at = seen[1]
        else:
            self._seen.pop(queue, None)
        return max(0.0, now - at)


class RedisGauges:
    """Queue depth, scheduled jobs, oldest-job age, dead-letter and unregistered sizes, read in a few commands."""

    def __init__(self, jq: JobQueue, queues: Iterable[str]) -> None:
        self.jq = jq
        self.queues = list(queues)
        self.oldest = OldestJob()

    def update(self, now: float) -> None:
        """Read everything and set the gauges; raises QueueError when Redis does not answer."""
        jq = self.jq
        for queue in self.queues:
            metrics.QUEUE_DEPTH.labels(queue).set(jq.depth(queue))
            metrics.SCHEDULED.labels(queue).set(jq.scheduled_count(queue))
            metrics.OLDEST_AGE.labels(queue).set(self.oldest.age(queue, jq.oldest(queue), now))
        counts = jq.counts()
        metrics.DEAD_LETTERS.set(counts["dead"])
        metrics.UNREGISTERED.set(counts["unregistered"])


def set_loop_gauges(snapshots: dict[str, LoopSnapshot]) -> None:
    """In-flight per queue and connection state per app, from what the loops published (queue → snapshot)."""
    up: dict[str, int] = {}
    backlog: dict[str, int] = {}
    for queue, snap in snapshots.items():
        metrics.IN_FLIGHT.labels(queue).set(snap.in_flight)
        for c in snap.connections.values():
            up[c.app] = up.get(c.app, 0) + c.up
            backlog[c.app] = backlog.get(c.app, 0) + c.backlog
    for app, n in up.items():
        metrics.OPEN_CONNECTIONS.labels(app).set(n)
        metrics.CONNECTED.labels(app).set(1 if n else 0)
        metrics.BACKLOG.labels(app).set(backlog[app])
