"""One queue's delivery loop: take → dispatch to app sessions → read answers → commit outcomes."""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apnsd import logs, metrics
from apnsd.config import WorkerConfig
from apnsd.core.jobs import JobParser, Notification, Rejected
from apnsd.core.outcomes import Kind, Outcome
from apnsd.errors import QueueError
from apnsd.gateway.session import Session
from apnsd.store.queue import Commit, JobQueue
from apnsd.worker.outcome_log import Batch, OutcomeRecorder

EXPIRED = Outcome(Kind.DEAD, None, "expired")
SCHEDULE_SLACK = 0.5  # a job due this soon is sent now rather than parked in the scheduled set
IDLE_WAIT = 0.2  # longest the loop sleeps without a reason, so stop flags are seen promptly
COMMIT_SLICE = 0.05  # resolved parts of unfinished batches are committed this often (bounds crash duplicates)


@dataclass
class Taken:
    """A batch handed from the feeder to the loop: its in-flight batch_id and the raw jobs."""

    batch_id: str
    raws: list[bytes]


class Feeder(threading.Thread):
    """Moves batches from Redis into in-flight storage and parses them while the loop talks to gateways."""

    def __init__(self, loop: DeliveryLoop) -> None:
        super().__init__(name=f"feeder:{loop.queue}", daemon=True)
        self.loop = loop
        self.stop = threading.Event()
        # Held from the stop check until a taken batch is handed over, so that once the loop holds
        # it after setting ``stop``, no batch can still be on its way out of Redis.
        self.taking = threading.Lock()
        self.outage = logs.OnceLogger(loop.log, "redis_unavailable")
        self._uncertain: str | None = None

    def run(self) -> None:
        """Take while there is room under max_in_flight; block on Redis only when the queue is empty."""
        loop, cfg = self.loop, self.loop.worker
        while not self.stop.is_set():
            with loop.room:
                while loop.full() and not self.stop.is_set():
                    loop.feeder_waiting = True
                    loop.room.wait(IDLE_WAIT)
                loop.feeder_waiting = False
            try:
                with self.taking:
                    if self.stop.is_set():
                        return
                    batch_id, raws = self._take(cfg.batch_size)
                    if raws:
                        loop.hand_over(Taken(batch_id, raws))
                if not raws:
                    loop.jq.wait(loop.queue, cfg.block_timeout)
            except QueueError as exc:
                if self.stop.is_set():
                    return  # stopping: the blocking wait may outlive the Redis connection, not an outage
                self.outage.failed(str(exc))
                self.stop.wait(min(5.0, 0.1 * 2 ** min(self.outage.failures, 6)))
                continue
            self.outage.recovered()

    def _take(self, count: int) -> tuple[str, list[bytes]]:
        jq, queue = self.loop.jq, self.loop.queue
        if self._uncertain is not None:
            # A take failed without an answer: the script may have run. Claim that batch if it exists.
            batch_id, raws = self._uncertain, jq.claim(queue, self._uncertain)
            self._uncertain = None
            if raws:
                return batch_id, raws
            self.loop.held.discard(batch_id)
        batch_id = jq.next_batch_id()
        self.loop.held.add(batch_id)  # before the take, so that an orphan sweep never sees it unheld
        self._uncertain = batch_id
        _, raws = jq.take(queue, count, batch_id)
        self._uncertain = None
        if not raws:
            self.loop.held.discard(batch_id)
        return batch_id, raws


class DeliveryLoop:
    """Owns the sessions (and so the TLS connections) of the apps fed by one queue."""

    def __init__(
        self,
        queue: str,
        sessions: dict[str, Session],
        jq: JobQueue,
        parser: JobParser,
        worker: WorkerConfig,
        recorder: OutcomeRecorder,
    ) -> None:
        self.queue = queue
        self.sessions = sessions  # keyed by app name, plus "app#2"… for an app's extra connections
        self._routes = _routes(sessions)
        self.jq = jq
        self.parser = parser
        self.worker = worker
        self.recorder = recorder
        self.log = logs.get("delivery", queue=queue)
        self.room = threading.Condition()
        self.in_flight = 0
        self.unsent = 0  # notifications handed over by the feeder and not yet given to a session
        self.feeder_waiting = False
        self.held: set[str] = set()  # in-flight batch ids this process holds, from take until commit
        self._handoff: deque[Taken] = deque()
        self._ready: deque[Batch] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.feeder = Feeder(self)
        self.commit_outage = logs.OnceLogger(self.log, "redis_unavailable_for_outcomes")
        self._next_commit_try = 0.0
        self.stopping = threading.Event()
        self.idle = threading.Event()
        self._posted: deque[Callable[[], None]] = deque()
        self._retiring: list[Session] = []
        self.crashed = False
        # Batches resolved in part since the last slice; None where a batch cannot be committed in parts.
        self._touched: list[Batch] | None = [] if jq.commits_partially(queue) else None
        self._next_slice = 0.0

    # --- feeder side ---------------------------------------------------------------------------

    def full(self) -> bool:
        """True when the feeder should wait: too much in flight, or enough taken but not yet sent.

        The second bound keeps memory flat on HTTP/2, where only the streams the server allows are
        on the wire: taking far ahead of them would just park notifications in memory.
        """
        if self.in_flight >= self.worker.max_in_flight:
            return True
        return self.unsent + sum(len(s.pending) for s in self.sessions.values()) >= 4 * self.worker.batch_size

    def hand_over(self, taken: Taken) -> None:
        """Called by the feeder thread: queue the raw batch for the loop and wake it.

        Parsing happens on the loop's thread, not here: the feeder then mostly waits on Redis
        with the GIL released, instead of holding it for milliseconds while the loop needs it.
        """
        with self.room:
            self.unsent += len(taken.raws)
        self._handoff.append(taken)
        os.write(self._wake_w, b"x")

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop's thread (the only one allowed to touch its sessions)."""
        self._posted.append(fn)
        os.write(self._wake_w, b"x")

    # --- loop side -----------------------------------------------------------------------------

    def replace_session(self, name: str, new: Session, why: str = "reload") -> None:
        """Make-before-break: new work goes to ``new``; the old session finishes what it sent, then closes."""
        old = self.sessions[name]
        new.pending.extend(old.pending)
        old.pending.clear()
        old.rotating = True
        self._retiring.append(old)
        self.sessions[name] = new
        self._routes = _routes(self.sessions)
        self.log.info("connection_rotation_started", app=name, reason=why)

    def _all_sessions(self) -> list[Session]:
        return [*self.sessions.values(), *self._retiring]

    def run(self, grace_period: float) -> None:
        """Deliver until asked to stop; a crash is logged (jobs stay in Redis for recovery) and re-raised."""
        try:
            self._run(grace_period)
        except Exception:
            self.crashed = True
            self.log.exception(
                "delivery_loop_crashed", note="in-flight jobs stay in Redis and are recovered after a restart"
            )
            self.feeder.stop.set()
            raise

    def _run(self, grace_period: float) -> None:
        self.feeder.start()
        deadline: float | None = None
        while True:
            now = time.monotonic()
            while self._posted:
                self._posted.popleft()()
            self._dispatch_new(now)
            if deadline is not None:  # stopping, and the feeder takes nothing more
                self._return_unsent()
            for s in self._all_sessions():
                self._record_all(s.step(now, False), now)
            if self.feeder_waiting and not self.full():
                with self.room:
                    self.room.notify_all()
            for name, s in list(self.sessions.items()):
                if s.wants_replacement and not self.stopping.is_set():
                    self.replace_session(name, s.clone(), "reconnect_interval")
            for r in self._retiring:
                if r.pending:  # lost its connection before finishing: the replacement sends the rest
                    self._routes[r.app][0].pending.extend(r.pending)
                    r.pending.clear()
            for s in [r for r in self._retiring if not r.busy]:
                s.close("replaced")
                self._retiring.remove(s)
            self._commit_slices(now)
            self._commit_ready(now)
            if self.stopping.is_set():
                if deadline is None:
                    deadline = now + grace_period
                    self.feeder.stop.set()
                    with self.room:
                        self.room.notify_all()
                    with self.feeder.taking:
                        pass  # from here on the feeder takes nothing more
                    continue
                if not self._handoff and self.in_flight == 0 and not self._ready:
                    break
                if now >= deadline:
                    self._give_back(now)
                    break
            self.idle.set() if self.in_flight == 0 and not self._handoff else self.idle.clear()
            self._wait(now, deadline)
        for s in self._all_sessions():
            s.close("shutdown")
        self.log.info("delivery_stopped", in_flight=self.in_flight)

    def _dispatch_new(self, now: float) -> None:
        wall = time.time()
        while self._handoff:
            batch, notes, rejects = self._parse(self._handoff.popleft())
            for r in rejects:
                self._completed(self.recorder.reject(batch, r, wall))
            routes = self._routes
            for n in notes:
                choices = routes.get(n.app)
                s = None if choices is None else choices[0] if len(choices) == 1 else min(choices, key=_backlog)
                if s is None or s.disabled:
                    reason = f"app_disabled: {s.disabled}" if s is not None else "unknown_app"
                    self._completed(self.recorder.record(n, Outcome(Kind.DEAD, None, reason), wall))
                elif n.expiration and n.expiration < wall:
                    self._completed(self.recorder.record(n, EXPIRED, wall))
                elif n.send_at is not None and n.send_at > wall + SCHEDULE_SLACK:
                    self._completed(self.recorder.defer(n, n.send_at))
                else:
                    s.pending.append(n)

    def _parse(self, taken: Taken) -> tuple[Batch, list[Notification], list[Rejected]]:
        """Validate a taken batch; from here its notifications count as in flight."""
        batch = Batch(Commit(self.queue, taken.batch_id))
        notes: list[Notification] = []
        rejects: list[Rejected] = []
        parse = self.parser.parse
        for raw in taken.raws:
            good, bad = parse(raw)
            notes += good
            rejects += bad
        for n in notes:
            n.batch = batch
        batch.unresolved = {id(n): n for n in notes}
        batch.slices = self._touched
        batch.remaining = len(notes) + len(rejects)
        with self.room:
            self.in_flight += batch.remaining
            self.unsent -= len(taken.raws)
        metrics.JOBS_TAKEN.labels(self.queue).inc(len(taken.raws))
        metrics.BATCH_SIZE.labels(self.queue).observe(len(taken.raws))
        return batch, notes, rejects

    def _record_all(self, resolved: list[tuple[Notification, Outcome]], now: float) -> None:
        if not resolved:
            return
        wall = time.time()
        record = self.recorder.record
        for n, outcome in resolved:
            self._completed(record(n, outcome, wall))

    def _completed(self, batch: Batch | None) -> None:
        if batch is not None:
            self._ready.append(batch)

    def _commit_slices(self, now: float) -> None:
        """Every COMMIT_SLICE, queue the resolved part of each unfinished batch for commit, so that a crash
        repeats only what was resolved in the last slice, not whole batches still waiting for their last
        answer (binary: for their confirm_delay)."""
        if self._touched and now >= self._next_slice:
            self._next_slice = now + COMMIT_SLICE
            self._ready.extend(self.recorder.split(self._touched))

    def _commit_ready(self, now: float) -> None:
        if not self._ready or now < self._next_commit_try:
            return
        done = 0
        while self._ready:
            b = self._ready[0]
            try:
                self.jq.commit(b.commit)
            except QueueError as exc:
                self.commit_outage.failed(str(exc))
                self._next_commit_try = now + min(5.0, 0.1 * 2 ** min(self.commit_outage.failures, 6))
                break
            self._ready.popleft()
            self.commit_outage.recovered()  # here, not after the loop: a later batch may fail again
            done += sum(b.commit.counts.values())
            if b.commit.keep is not None:
                continue  # a partial commit: the batch stays held, its log line comes when it completes
            self.held.discard(b.commit.batch_id)
            self.log.info(
                "batch_committed",
                batch=b.commit.batch_id,
                **b.commit.counts,
                **({"reasons": b.reasons} if b.reasons else {}),
            )
        if done:
            with self.room:
                self.in_flight -= done
                self.room.notify_all()
            metrics.IN_FLIGHT.labels(self.queue).set(self.in_flight)

    def _wait(self, now: float, deadline: float | None) -> None:
        timeout = IDLE_WAIT
        rlist: list[int] = [self._wake_r]
        wlist: list[int] = []
        fds: dict[int, Session] = {}
        for s in self._all_sessions():
            timeout = min(timeout, s.deadline(now) - now)
            fd = s.fileno()
            if fd is not None:
                fds[fd] = s
                rlist.append(fd)
                if s.wants_write:
                    wlist.append(fd)
        if self._ready:
            timeout = min(timeout, max(0.0, self._next_commit_try - now))
        if self._touched:
            timeout = min(timeout, max(0.0, self._next_slice - now))
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - now))
        r, _, _ = select.select(rlist, wlist, [], max(0.0, timeout))
        if not r:
            return
        if self._wake_r in r:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        later = time.monotonic()
        for fd in r:
            s = fds.get(fd)
            if s is not None:
                self._record_all(s.step(later, True), later)

    def _return_unsent(self) -> None:
        """Stopping: notifications not yet written go back to the queue at once instead of being sent.

        Only what is already on the wire waits for its answer. Sending the backlog during the grace
        period would leave whatever is unanswered at the deadline both delivered and returned.
        """
        returned = 0
        for s in self._all_sessions():
            while s.pending:
                self._completed(self.recorder.give_back(s.pending.popleft()))
                returned += 1
        if returned:
            self.log.info("returned_unsent", notifications=returned)

    def _give_back(self, now: float) -> None:
        """Grace period over: write what is known and return every unanswered job to the queue."""
        returned = 0
        for s in self._all_sessions():
            for n in s.unresolved():
                self._completed(self.recorder.give_back(n))
                returned += 1
        self._commit_ready(now)
        self.log.info("returned_to_queue", notifications=returned, in_flight_left=self.in_flight)

    def stats(self) -> dict[str, Any]:
        """Live numbers for the heartbeat and health file."""
        return {
            "in_flight": self.in_flight,
            "apps": {
                a: {
                    "connected": s.transport is not None,
                    "last_connect_error": s.last_connect_error,
                    "disabled": s.disabled,
                }
                for a, s in self.sessions.items()
            },
        }


def _routes(sessions: dict[str, Session]) -> dict[str, list[Session]]:
    """App name → the sessions (connections) that carry its notifications."""
    out: dict[str, list[Session]] = {}
    for s in sessions.values():
        out.setdefault(s.app, []).append(s)
    return out


def _backlog(s: Session) -> int:
    """Notifications a session still has to send: new work goes to the connection with the least."""
    return len(s.pending)
