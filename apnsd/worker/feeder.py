"""The feeder thread: moves batches from a Redis queue into in-flight storage and hands them to the loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from apnsd import logs, metrics
from apnsd.config import WorkerConfig
from apnsd.core.pacing import outage_delay
from apnsd.errors import KeyTypeError, QueueError
from apnsd.store.queue import JobQueue
from apnsd.worker.handoff import Handoff, Taken
from apnsd.worker.lanes import LanePlan, LowerBatch

THROTTLE_TICK = 0.02  # shortest wait for tokens: a tenth-of-a-second bucket is never left full meanwhile
# Longest a full worker blocks on its first lane (in Redis, where the loop cannot wake it) before it looks for
# room again: the loop empties a backlog of two batches in tens of milliseconds, then would sit idle.
ROOM_POLL = 0.005


class FeederDied(RuntimeError):
    """Raised on the loop's thread when its feeder died of an unexpected exception."""


class Feeder(threading.Thread):
    """Takes while there is room under max_in_flight; blocks on Redis only when every lane is empty."""

    def __init__(
        self,
        queue: str,
        jq: JobQueue,
        handoff: Handoff,
        worker: WorkerConfig,
        log: logs.Logger,
        plan: LanePlan | None = None,
    ) -> None:
        super().__init__(name=f"feeder:{queue}", daemon=True)
        self.queue = queue
        self.plan = plan or LanePlan(queue, (queue,))
        self._takes = 0  # takes from the lanes so far: the starvation guard counts them
        self._lower = LowerBatch(self.plan, worker.batch_size)  # how much a take moves from a lower lane
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
            first_only = False
            try:
                if len(self.plan.keys) > 1 and handoff.full() and not handoff.full(reserve=True):
                    # The room is taken (by a campaign): only the first lane may take, into the reserve.
                    if not self.jq.wait(self.plan.keys[0], min(cfg.block_timeout, cfg.lane_poll, ROOM_POLL)):
                        continue
                    first_only = True
                else:
                    handoff.wait_for_room()
                with handoff.taking() as still_open:
                    if not still_open:
                        return
                    taken, throttled = self._take(cfg.batch_size, first_only)
                    if taken.raws:
                        handoff.give(taken)
                if throttled:
                    self._wait_for_tokens(throttled)
                elif not taken.raws:
                    self._wait_for_jobs()
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

    def _wait_for_jobs(self) -> None:
        """Every lane is empty: block on the first lane (the one that must not wait), briefly when there are others.

        Redis blocks on one list at a time, so lower lanes are polled every ``lane_poll`` seconds while idle.
        """
        plan, cfg = self.plan, self.worker
        self.jq.wait(plan.keys[0], cfg.block_timeout if len(plan.keys) == 1 else min(cfg.block_timeout, cfg.lane_poll))

    def _wait_for_tokens(self, seconds: float) -> None:
        """Jobs wait while the throttle has no tokens: they stay queued, and the wait is counted."""
        start = time.monotonic()
        self.handoff.closed.wait(min(max(seconds, THROTTLE_TICK), self.worker.block_timeout))
        metrics.THROTTLED.labels(self.queue).inc(time.monotonic() - start)

    def _take(self, count: int, first_only: bool = False) -> tuple[Taken, float]:
        """One take; with lanes or a throttle also the seconds the throttle holds queued jobs back (else 0)."""
        if not self.plan.simple:
            return self._take_lanes(count, first_only)
        return self._take_simple(count), 0.0

    def _take_lanes(self, count: int, first_only: bool) -> tuple[Taken, float]:
        plan, held = self.plan, self.handoff.held
        if first_only and self._uncertain is None:  # a resent take must look in every lane
            plan = replace(plan, keys=plan.keys[:1], lane_rates=plan.lane_rates[:1])
        # A take whose answer was lost is resent into the same batch_id: the script returns that batch if it ran.
        batch_id = self._uncertain or self.jq.next_batch_id()
        held.add(batch_id)  # before the take, so that an orphan sweep never sees it unheld
        self._uncertain = batch_id
        self._takes += 1
        first = 0 if len(plan.keys) == 1 else plan.first_lane(self._takes)
        now = time.monotonic()
        lower = min(count, self._lower.size(now))  # small while the first lane is active (lanes.LowerBatch)
        lane, raws, wait = self.jq.take_lanes(plan.queue, list(plan.keys), count, batch_id, first, plan.rates, lower)
        self._uncertain = None
        if not raws:
            held.discard(batch_id)
            return Taken(batch_id, [], plan.queue), wait
        self._lower.taken(lane, now)
        ahead = len(self.plan.keys) > 1 and (lane == 0 or first > 0)
        return Taken(batch_id, raws, plan.keys[lane], ahead, listed=True), 0.0

    def _take_simple(self, count: int) -> Taken:
        jq, queue, held = self.jq, self.queue, self.handoff.held
        if self._uncertain is not None:
            # A take failed without an answer: the script may have run. Claim that batch if it exists.
            batch_id, raws = self._uncertain, jq.claim(queue, self._uncertain)
            self._uncertain = None
            if raws:
                return Taken(batch_id, raws, queue, listed=True)
            held.discard(batch_id)
        batch_id = jq.next_batch_id()
        held.add(batch_id)  # before the take, so that an orphan sweep never sees it unheld
        self._uncertain = batch_id
        _, raws = jq.take(queue, count, batch_id)
        self._uncertain = None
        if not raws:
            held.discard(batch_id)
        return Taken(batch_id, raws, queue, listed=True)


def _raiser(exc: Exception) -> Callable[[], None]:
    """A call that raises ``exc`` where it runs (posted to the loop's thread)."""

    def fail() -> None:
        raise exc

    return fail
