"""The feeder thread: moves batches from a Redis queue into in-flight storage and hands them to the loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from apnsd import logs
from apnsd.config import WorkerConfig
from apnsd.core.pacing import outage_delay
from apnsd.errors import KeyTypeError, QueueError
from apnsd.store.queue import JobQueue
from apnsd.worker.handoff import Handoff, Taken


class FeederDied(RuntimeError):
    """Raised on the loop's thread when its feeder died of an unexpected exception."""


class Feeder(threading.Thread):
    """Takes while there is room under max_in_flight; blocks on Redis only when the queue is empty."""

    def __init__(self, queue: str, jq: JobQueue, handoff: Handoff, worker: WorkerConfig, log: Any) -> None:
        super().__init__(name=f"feeder:{queue}", daemon=True)
        self.queue = queue
        self.jq = jq
        self.handoff = handoff
        self.worker = worker
        self.log = log
        self.outage = logs.OnceLogger(log, "redis_unavailable")
        self.wrong_type = logs.OnceLogger(log, "redis_key_wrong_type")  # the queue key holds another type
        self._uncertain: str | None = None

    def run(self) -> None:
        """Feed until the hand-over closes; an unexpected exception ends the loop too, as its own crash would."""
        try:
            self._feed()
        except Exception as exc:
            self.log.exception("feeder_crashed", note="the delivery loop stops with it; jobs stay in Redis")
            self.handoff.post(_raiser(FeederDied(f"feeder of {self.queue} died: {exc!r}")))

    def _feed(self) -> None:
        handoff, cfg = self.handoff, self.worker
        while not handoff.closed.is_set():
            handoff.wait_for_room()
            try:
                with handoff.taking() as still_open:
                    if not still_open:
                        return
                    taken = self._take(cfg.batch_size)
                    if taken.raws:
                        handoff.give(taken)
                if not taken.raws:
                    self.jq.wait(self.queue, cfg.block_timeout)
            except QueueError as exc:
                if handoff.closed.is_set():
                    return  # stopping: the blocking wait may outlive the Redis connection, not an outage
                if isinstance(exc, KeyTypeError):  # not an outage: an operator must fix the key
                    self.wrong_type.failed(str(exc), key=exc.key)
                else:
                    self.outage.failed(str(exc))
                failures = max(self.outage.failures, self.wrong_type.failures)
                handoff.closed.wait(outage_delay(failures))
                continue
            self.outage.recovered()
            if taken.raws:
                self.wrong_type.recovered()

    def _take(self, count: int) -> Taken:
        jq, queue, held = self.jq, self.queue, self.handoff.held
        if self._uncertain is not None:
            # A take failed without an answer: the script may have run. Claim that batch if it exists.
            field, raws = self._uncertain, jq.claim(queue, self._uncertain)
            self._uncertain = None
            if raws:
                return Taken(field, raws)
            held.discard(field)
        field = jq.next_field()
        held.add(field)  # before the take, so that an orphan sweep never sees it unheld
        self._uncertain = field
        _, raws = jq.take(queue, count, field)
        self._uncertain = None
        if not raws:
            held.discard(field)
        return Taken(field, raws)


def _raiser(exc: Exception) -> Callable[[], None]:
    """A call that raises ``exc`` where it runs (posted to the loop's thread)."""

    def fail() -> None:
        raise exc

    return fail
