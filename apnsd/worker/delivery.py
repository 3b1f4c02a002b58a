"""One queue's delivery loop: take → dispatch to app sessions → read answers → commit outcomes.

The loop thread is the only one that touches its sessions (and so their TLS connections). What it
shares with its feeder and with the daemon lives in one ``Handoff`` (see ``worker/handoff.py`` for
the thread protocol); what other threads may know about it, it publishes as a ``LoopStatus``.
"""

from __future__ import annotations

import select
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from apnsd import logs, metrics
from apnsd.config import WorkerConfig
from apnsd.core.jobs import JobParser, Notification, Rejected
from apnsd.core.outcomes import WRONG_QUEUE, Kind, Outcome
from apnsd.core.pacing import outage_delay
from apnsd.errors import KeyTypeError, QueueError
from apnsd.gateway.session import Resolved, Session, State
from apnsd.store.queue import Commit, JobQueue
from apnsd.worker.feeder import Feeder
from apnsd.worker.handoff import IDLE_WAIT, Handoff, Taken
from apnsd.worker.lanes import WINDOW_MIN, FirstLane, LanePlan, next_window
from apnsd.worker.readback import ReadBack
from apnsd.worker.recorder import Batch, OutcomeRecorder

EXPIRED = Outcome(Kind.DEAD, None, "expired")
SCHEDULE_SLACK = 0.5  # a job due this soon is sent now rather than parked in the scheduled set
APP_STATUS_INTERVAL = 0.25  # how often the per-connection part of the published status is refreshed
COMMIT_SLICE = 0.05  # resolved parts of unfinished batches are committed this often (bounds crash duplicates)
WINDOW_EVERY = 0.1  # seconds between adjustments of the lower lanes' window (lanes.next_window)


@dataclass(frozen=True)
class ConnectionState:
    """One session as the loop last saw it, for threads that must not touch the session itself."""

    app: str
    up: bool
    disabled: str | None
    last_connect_error: str | None
    failures: int  # consecutive failed connects (the pacer's count)
    backlog: int  # notifications waiting to be written
    suspended: str | None = None

    def as_status(self) -> dict[str, Any]:
        """The heartbeat's and health file's view of this connection."""
        return {
            "connected": self.up,
            "last_connect_error": self.last_connect_error,
            "disabled": self.disabled,
            "suspended": self.suspended,
        }


@dataclass(frozen=True)
class LoopSnapshot:
    """What a delivery loop publishes about its connections on its own thread; read by probes and gauges."""

    at: float  # monotonic time of publication: the loop was alive and iterating then
    in_flight: int
    connections: dict[str, ConnectionState]


class Phase(Enum):
    """Where a delivery loop is in its life."""

    RUNNING = "running"  # taking, sending, committing
    STOPPING = "stopping"  # the feeder is closed; unsent work goes back; what is on the wire awaits its answer
    DONE = "done"  # everything committed or returned to the queue; connections closed


@dataclass(frozen=True)
class LoopStatus:
    """What a loop publishes for other threads, which never read its sessions themselves."""

    phase: Phase
    in_flight: int
    idle: bool  # nothing in flight and nothing handed over: a drain may end here
    crashed: bool
    apps: Mapping[str, Mapping[str, Any]]  # per connection: connected, last_connect_error, disabled

    def heartbeat(self) -> dict[str, Any]:
        """The live numbers for the heartbeat and the health file."""
        return {"in_flight": self.in_flight, "apps": dict(self.apps)}


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
        plan: LanePlan | None = None,
    ) -> None:
        self.queue = queue
        self.plan = plan or LanePlan(queue, (queue,))
        self.lanes = list(self.plan.keys)  # the lists this loop takes from, highest priority first
        self.sessions = sessions  # keyed by app name, plus "app#2"… for an app's extra connections
        self.apps_by_key = {key: s.app for key, s in sessions.items()}  # fixed: other threads may read it
        self._routes = _routes(sessions)
        self.jq = jq
        self.parser = parser
        self.worker = worker
        self.recorder = recorder
        self.log = logs.get("delivery", queue=queue)
        self.handoff = Handoff(worker.max_in_flight, worker.batch_size)
        self.feeder = Feeder(queue, jq, self.handoff, worker, self.log, self.plan)
        self.phase = Phase.RUNNING
        self.grace_period = 0.0
        self._deadline = 0.0  # when STOPPING: the end of the grace period
        self._ahead: weakref.WeakSet[Batch] = weakref.WeakSet()  # batches that jump the sessions' backlog
        self._lower: dict[Session, deque[Notification]] = {}  # lower lanes' work, let out a window at a time
        self._window_max = max((s.cfg.lane_window for s in sessions.values()), default=WINDOW_MIN)
        self._window = float(min(self._window_max, 100))  # lower lanes' work per connection, now
        self._first_lane = FirstLane()  # the window applies only while the first lane is active
        self._idle = 0.0  # seconds waited in select since the last window adjustment
        self._window_at = time.monotonic()
        self._ready: deque[Batch] = deque()  # complete batches waiting for their commit, oldest first
        self.commit_outage = logs.OnceLogger(self.log, "redis_unavailable_for_outcomes")
        self.wrong_type = logs.OnceLogger(self.log, "redis_key_wrong_type")
        self._next_commit_try = 0.0
        self._retiring: list[Session] = []
        self._next_app_status = 0.0
        self._published_shape: tuple[Any, ...] = ()
        self.published = LoopSnapshot(time.monotonic(), 0, {})
        self.status = LoopStatus(Phase.RUNNING, 0, False, False, self._app_status(time.monotonic()))
        # Batches resolved in part since the last slice; None where a batch cannot be committed in parts.
        self._touched: list[Batch] | None = [] if jq.commits_partially(queue) else None
        self._ahead_seen = 0  # handoff.ahead_given when the loop last took the handed-over batches
        self._next_slice = 0.0
        # What binary windows held by position, read back from Redis (core/slim.py); what is lost completes here.
        self.read_back = ReadBack(jq, parser, recorder, self.log, self.wrong_type, self._completed)
        for s in sessions.values():
            s.hydrate = self.read_back

    # --- what other threads call -----------------------------------------------------------------

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop's thread (the only one allowed to touch its sessions)."""
        self.handoff.post(fn)

    def request_stop(self) -> None:
        """Ask the loop to stop: it returns unsent work, awaits answers for ``grace_period``, then ends."""
        self.handoff.post(self._begin_stop)

    def hurry_stop(self) -> None:
        """Stop now: end the grace period at once, so every unanswered job goes back to the queue."""
        self.handoff.post(self._end_grace)

    # --- the loop --------------------------------------------------------------------------------

    def run(self, grace_period: float) -> None:
        """Deliver until asked to stop; a crash is logged (jobs stay in Redis for recovery) and re-raised."""
        self.grace_period = grace_period
        try:
            self.feeder.start()
            while self.phase is not Phase.DONE:
                self._iterate()
            for s in self._all_sessions():
                s.close("shutdown")
        except Exception:
            self.status = replace(self.status, crashed=True)
            self.handoff.closed.set()
            self.log.exception(
                "delivery_loop_crashed", note="in-flight jobs stay in Redis and are recovered after a restart"
            )
            raise
        finally:
            self.handoff.release()
        self.log.info("delivery_stopped", in_flight=self.handoff.in_flight)

    def _iterate(self) -> None:
        """One turn of the loop: each step in order, then wait for a socket, a wake-up or a deadline."""
        now = time.monotonic()
        self.handoff.run_posted()  # first: a posted stop closes the feeder before the batches are read
        self._dispatch_new(now)
        self._let_out_lower(now)
        if self.phase is Phase.STOPPING:
            self._requeue_unsent()  # after dispatch: a batch handed over just before the stop goes back too
        self._step_sessions(now)
        self._wake_feeder()
        self._rotate()
        self._retire()
        self._commit_slices(now)
        self._commit_ready(now)
        if self.phase is Phase.STOPPING:
            self._finish_stopping(now)
        if self._lower:
            self._adjust_window(now)
        self._publish(now)
        if self.phase is not Phase.DONE:
            self._wait(now)

    def _begin_stop(self) -> None:
        """RUNNING → STOPPING: close the hand-over (nothing more is taken) and start the grace period."""
        if self.phase is not Phase.RUNNING:
            return
        self.phase = Phase.STOPPING
        self._deadline = time.monotonic() + self.grace_period
        self.handoff.close()  # from here on every batch this process took is in handoff.batches

    def _end_grace(self) -> None:
        self._begin_stop()
        self._deadline = min(self._deadline, time.monotonic())

    def _finish_stopping(self, now: float) -> None:
        """STOPPING → DONE once everything is committed, or at the deadline with the rest returned."""
        if not self.handoff.batches and self.handoff.in_flight == 0 and not self._ready:
            self.phase = Phase.DONE
        elif now >= self._deadline:
            self._requeue_unanswered(now)
            self.phase = Phase.DONE

    # --- the steps of one turn -------------------------------------------------------------------

    def _dispatch_new(self, now: float) -> None:
        """Parse the batches the feeder handed over and route each notification to a session.

        Batches that jump the backlog (the first lane's) are parsed first and written at once: a campaign's
        batches handed over beside them are parsed after that, not in front of an urgent job, and one handed
        over while campaign batches are being parsed is taken in between them (``_ahead_arrived``).
        """
        batches = self.handoff.batches
        rest: deque[Taken] = deque()  # campaign batches taken out of the hand-over, not yet parsed
        wall = time.time()
        while True:
            self._ahead_seen = self.handoff.ahead_given  # before popping: a batch given meanwhile counts as new
            if not batches and not rest:
                return
            taken = [batches.popleft() for _ in range(len(batches))]  # the feeder may append meanwhile
            jumps = [t for t in taken if t.ahead]
            # stopping: nothing new is written
            if jumps and (rest or len(jumps) < len(taken)) and self.phase is Phase.RUNNING:
                for t in jumps:
                    self._dispatch(t, now, wall)
                self._step_sessions(now)
                taken = [t for t in taken if not t.ahead]
            rest.extend(taken)
            while rest and not self._ahead_arrived():
                self._dispatch(rest.popleft(), now, wall)
            if not rest:
                return

    def _ahead_arrived(self) -> bool:
        """True when a batch that jumps the backlog was handed over since the loop last looked: campaign work
        (parsing, committing) yields to it, so that an urgent job waits for at most one piece of that work."""
        return self.handoff.ahead_given != self._ahead_seen and self.phase is Phase.RUNNING

    def _dispatch(self, taken: Taken, now: float, wall: float) -> None:
        """Parse one batch and route its notifications: parked, dead-lettered, deferred, or queued to a session."""
        batch, notes, rejects = self._parse(taken)
        first_lane = taken.ahead and taken.queue == self.lanes[0]
        ahead: dict[int, tuple[Session, list[Notification]]] | None = {} if first_lane else None
        if first_lane:
            self._ahead.add(batch)
            self._first_lane.saw(now)
        lower = len(self.lanes) > 1 and not first_lane
        for r in rejects:
            self._completed(self.recorder.reject(batch, r, wall))
        touched: set[Session] = set()
        # The bulk of every batch: an app with one connection that sends, a notification without expiration or
        # send_at, no lanes. It goes straight to the session; anything else is decided one by one in _route.
        direct = {} if ahead is not None or lower else self._direct_routes()
        route = self._route
        for n in notes:
            s = direct.get(n.app)
            if s is None or n.expiration or n.send_at is not None:
                route(n, now, wall, ahead, lower, touched)
            else:
                s.pending.append(n)
        for session, first in (ahead or {}).values():
            self._put_ahead(session, first)
        if taken.ahead and not first_lane:
            for s in touched:
                self._guard_share(s)

    def _route(
        self,
        n: Notification,
        now: float,
        wall: float,
        ahead: dict[int, tuple[Session, list[Notification]]] | None,
        lower: bool,
        touched: set[Session],
    ) -> None:
        """Route one notification: dead-lettered, parked, a trial, expired, deferred, or queued to a session (ahead
        of the backlog, into the lower lanes' waiting work, or at the end of its pending queue)."""
        choices = self._routes.get(n.app)
        s = None if choices is None else choices[0] if len(choices) == 1 else min(choices, key=self._backlog)
        if s is None or s.disabled:
            reason = f"app_disabled: {s.disabled}" if s is not None else self._no_route(n.app)
            self._completed(self.recorder.record(n, Outcome(Kind.DEAD, None, reason), wall))
        elif s.suspended and not (s.hold.trial_due(now) and _sendable(n, wall)):
            self._completed(self.recorder.defer(n, wall + s.cfg.mismatch_guard_park))
        elif s.suspended:
            s.start_trial(n)  # the credential breaker's probe: this one goes out alone
        elif n.expiration and n.expiration < wall:
            self._completed(self.recorder.record(n, EXPIRED, wall))
        elif n.send_at is not None and n.send_at > wall + SCHEDULE_SLACK:
            self._completed(self.recorder.defer(n, n.send_at))
        elif ahead is not None:
            ahead.setdefault(id(s), (s, []))[1].append(n)
        elif lower:
            self._lower.setdefault(s, deque()).append(n)
            touched.add(s)
        else:
            s.pending.append(n)

    def _direct_routes(self) -> dict[str, Session]:
        """App → its session, for apps with one connection that is neither disabled nor suspended right now."""
        return {
            app: c[0] for app, c in self._routes.items() if len(c) == 1 and not c[0].disabled and not c[0].suspended
        }

    def _guard_share(self, s: Session) -> None:
        """The starvation guard's take: a window of the lower lanes' oldest work jumps the backlog.

        Only a window, not the whole batch, and the oldest first: lower lanes still progress when urgent
        work fills the connection, without a whole batch written in front of the next urgent job.
        """
        waiting = self._lower[s]
        share = [waiting.popleft() for _ in range(min(int(self._window), len(waiting)))]
        for n in share:
            self._ahead.add(n.batch)
        self._put_ahead(s, share)

    def _let_out_lower(self, now: float) -> None:
        """Move lower lanes' work into the sessions while fewer than the window of it are queued or unanswered.

        What is on the wire cannot be overtaken: a first-lane job written now is answered after everything
        written before it that the gateway (or this process) has yet to get through. Keeping the lower lanes'
        share small bounds that wait, at the cost of lower-lane throughput: so the adaptive window applies
        only while the first lane is active, ``lane_window`` otherwise.
        """
        window = int(self._window) if self._first_lane.active(now) else self._window_max
        for s, waiting in self._lower.items():
            room = min(window, s.cfg.lane_window) - len(s.pending) - s.ahead()
            if room <= 0 or not waiting:
                continue
            if s.suspended or s.disabled:
                room = len(waiting)  # parked or dead-lettered at once by the steps that handle those
            pending = s.pending
            for _ in range(min(room, len(waiting))):
                pending.append(waiting.popleft())

    def _backlog(self, s: Session) -> int:
        """Notifications a session still has to send (its lower-lane work included): new work goes to the least."""
        lower = self._lower.get(s)
        return len(s.pending) + (len(lower) if lower else 0)

    def _adjust_window(self, now: float) -> None:
        """Every WINDOW_EVERY seconds: the lower lanes' window from how busy the loop was (lanes.next_window)."""
        elapsed = now - self._window_at
        if elapsed < WINDOW_EVERY:
            return
        busy = 1.0 - self._idle / elapsed
        self._window = next_window(self._window, busy, any(self._lower.values()), self._window_max)
        self._idle, self._window_at = 0.0, now

    def _put_ahead(self, s: Session, notes: list[Notification]) -> None:
        """Queue a first-lane (or starvation-guard) batch behind the earlier such batches, ahead of the rest.

        A campaign's backlog in the session then never delays an urgent job, and batches that jump keep
        their order among themselves, so neither urgent jobs nor the guard's share can be overtaken forever.
        """
        pending, marked = s.pending, self._ahead
        front = 0
        for queued in pending:
            if queued.batch not in marked:
                break
            front += 1
        pending.rotate(-front)
        pending.extendleft(reversed(notes))
        pending.rotate(front)

    def _park(self, s: Session) -> None:
        """A suspended app's notifications wait in the scheduled set: not sent, not dead, no attempt counted."""
        at = time.time() + s.cfg.mismatch_guard_park
        for n in s.parkable():
            self._completed(self.recorder.defer(n, at))

    def _parse(self, taken: Taken) -> tuple[Batch, list[Notification], list[Rejected]]:
        """Validate a taken batch; from here its notifications count as in flight."""
        queue = taken.queue or self.queue
        batch = Batch(Commit(queue, taken.batch_id))
        # Held by position in binary windows when the batch is a list of its own and no receipts are written (a
        # receipt needs each job's id, read from the job: reading it back for every delivery would cost too much).
        indexed = taken.listed and not self.recorder.results and any(s.holds_positions for s in self.sessions.values())
        notes, rejects = self.parser.parse_many(taken.raws, batch, indexed)
        batch.unresolved = dict.fromkeys(notes)
        batch.slices = self._touched
        batch.remaining = len(notes) + len(rejects)
        self.handoff.parsed(len(taken.raws), batch.remaining)
        metrics.JOBS_TAKEN.labels(queue).inc(len(taken.raws))
        metrics.BATCH_SIZE.labels(queue).observe(len(taken.raws))
        return batch, notes, rejects

    def _commit_slices(self, now: float) -> None:
        """Every COMMIT_SLICE, queue the resolved part of each unfinished batch for commit, so that a crash
        repeats only what was resolved in the last slice, not whole batches still waiting for their last
        answer (binary: for their confirm_delay)."""
        if self._touched and now >= self._next_slice:
            self._next_slice = now + COMMIT_SLICE
            self._ready.extend(self.recorder.split(self._touched))

    def _requeue_unsent(self) -> None:
        """Stopping: notifications not yet written go back to the queue at once instead of being sent.

        Only what is already on the wire waits for its answer. Sending the backlog during the grace
        period would leave whatever is unanswered at the deadline both delivered and returned.
        """
        returned = 0
        for s in self._all_sessions():
            while s.pending:
                self._completed(self.recorder.requeue(s.pending.popleft()))
                returned += 1
        for waiting in self._lower.values():
            while waiting:
                self._completed(self.recorder.requeue(waiting.popleft()))
                returned += 1
        if returned:
            self.log.info("returned_unsent", notifications=returned)

    def _step_sessions(self, now: float) -> None:
        """Let every session do what is due without a readable socket: time-outs, connects, writes."""
        for s in self._all_sessions():
            self._record_all(s.step(now, False))
            if s.parked or (s.suspended and s.pending):
                self._park(s)

    def _wake_feeder(self) -> None:
        """Tell the feeder how much waits in the sessions; it takes more once there is room."""
        lower = sum(len(waiting) for waiting in self._lower.values())
        self.handoff.wake_feeder(sum(len(s.pending) for s in self.sessions.values()) + lower)

    def _rotate(self) -> None:
        """Replace connections that asked for it (reconnect_interval, stream ids used up) — not when stopping."""
        if self.phase is not Phase.RUNNING:
            return
        for name, s in list(self.sessions.items()):
            if s.wants_replacement:
                self.replace_session(name, s.clone(), "reconnect_interval")

    def _no_route(self, app: str) -> str:
        """Why a parsed job's app has no connection in this loop: configured, it reads another queue."""
        if app in self.recorder.apps:
            return f"{WRONG_QUEUE}: app {app!r} takes its jobs from its own queue, not {self.queue}"
        return "unknown_app"

    def replace_session(self, name: str, new: Session, why: str = "reload") -> None:
        """Make-before-break: new work goes to ``new``; the old session finishes what it sent, then closes."""
        old = self.sessions[name]
        new.pending.extend(old.pending)
        old.pending.clear()
        if old in self._lower:
            self._lower[new] = self._lower.pop(old)
        old.retire()
        self._retiring.append(old)
        new.hydrate = self.read_back
        self.sessions[name] = new
        self._routes = _routes(self.sessions)
        self.log.info("connection_rotation_started", app=name, reason=why)

    def _retire(self) -> None:
        """Replaced sessions: hand back what a lost connection left unsent; close those with nothing left."""
        if not self._retiring:
            return
        for r in self._retiring:
            if r.pending:  # lost its connection before finishing: the replacement sends the rest
                self._routes[r.app][0].pending.extend(r.pending)
                r.pending.clear()
        for s in [r for r in self._retiring if not r.busy]:
            s.close("replaced")
            self._retiring.remove(s)

    def _commit_ready(self, now: float) -> None:
        """Write complete batches to Redis, oldest first; on an outage, back off and keep them."""
        if not self._ready or now < self._next_commit_try:
            return
        done = 0
        while self._ready:
            b = self._ready[0]
            try:
                self.jq.commit(b.commit)
            except KeyTypeError as exc:  # not an outage: the batch stays in flight until an operator fixes the key
                self.wrong_type.failed(str(exc), key=exc.key)
                self._next_commit_try = now + outage_delay(self.wrong_type.failures)
                break
            except QueueError as exc:
                self.commit_outage.failed(str(exc))
                self._next_commit_try = now + outage_delay(self.commit_outage.failures)
                break
            self._ready.popleft()
            self.commit_outage.recovered()  # here, not after the loop: a later batch may fail again
            self.wrong_type.recovered()
            done += sum(b.commit.counts.values())
            # A partial commit (keep) leaves the batch held: its log line comes when it completes.
            if b.commit.keep is None:
                self.handoff.held.discard(b.commit.batch_id)
                self.log.info(
                    "batch_committed",
                    batch=b.commit.batch_id,
                    **b.commit.counts,
                    **({"reasons": b.reasons} if b.reasons else {}),
                )
            if self._ahead_arrived():
                break  # an urgent batch came: the next turn writes it, then commits the rest
        if done:
            self.handoff.resolved(done)
            metrics.IN_FLIGHT.labels(self.queue).set(self.handoff.in_flight)

    def _publish(self, now: float) -> None:
        """Publish a fresh LoopStatus; the per-connection part (and the probes' LoopSnapshot) every
        APP_STATUS_INTERVAL. Each is one reference assignment: readers see the old value or the new one."""
        st = self.status
        apps = st.apps
        # A connection coming up or going down is published at once; backlogs and the probes' clock
        # every APP_STATUS_INTERVAL.
        shape = tuple((s.state, s.disabled, s.suspended, s.last_connect_error) for s in self.sessions.values())
        if now >= self._next_app_status or shape != self._published_shape or self.phase is Phase.DONE:
            self._next_app_status = now + APP_STATUS_INTERVAL
            self._published_shape = shape
            apps = self._app_status(now)
        in_flight = self.handoff.in_flight
        idle = in_flight == 0 and not self.handoff.batches
        if st.in_flight != in_flight or st.idle != idle or st.phase is not self.phase or st.apps is not apps:
            self.status = LoopStatus(self.phase, in_flight, idle, False, apps)

    def _app_status(self, now: float) -> dict[str, dict[str, Any]]:
        """Publish every session's ConnectionState; returns their heartbeat view."""
        connections = {
            key: ConnectionState(
                s.app,
                s.state is not State.DISCONNECTED,
                s.disabled,
                s.last_connect_error,
                s.pacer.failures,
                len(s.pending),
                s.suspended,
            )
            for key, s in self.sessions.items()
        }
        self.published = LoopSnapshot(now, self.handoff.in_flight, connections)
        return {key: c.as_status() for key, c in connections.items()}

    def _wait(self, now: float) -> None:
        """Sleep until a socket is readable (or writable when bytes wait), a wake-up, or the next deadline."""
        if self._ahead_arrived():
            return  # an urgent batch came during this turn: dispatch it before reading a campaign's answers
        timeout = IDLE_WAIT
        wake = self.handoff.fileno()
        rlist: list[int] = [wake]
        wlist: list[int] = []
        fds: dict[int, Session] = {}
        for s in self._all_sessions():
            timeout = min(timeout, s.deadline(now) - now)
            for fd, out in s.watched():
                fds[fd] = s
                rlist.append(fd)
                if out:
                    wlist.append(fd)
        if self._ready:
            timeout = min(timeout, max(0.0, self._next_commit_try - now))
        if self._touched:
            timeout = min(timeout, max(0.0, self._next_slice - now))
        if self.phase is Phase.STOPPING:
            timeout = min(timeout, max(0.0, self._deadline - now))
        start = time.monotonic()
        r, _, _ = select.select(rlist, wlist, [], max(0.0, timeout))
        later = time.monotonic()
        self._idle += later - start
        if not r:
            return  # a socket became writable: the next turn's _step_sessions writes (or connects) on
        if wake in r:
            self.handoff.drain_wakeups()
            if self._ahead_arrived():
                return  # the sockets stay readable: the next turn reads them once the urgent batch is written
        stepped: set[Session] = set()  # a session's connections share one step
        for fd in r:
            ready = fds.get(fd)
            if ready is not None and ready not in stepped:
                stepped.add(ready)
                self._record_all(ready.step(later, True))

    # --- helpers ---------------------------------------------------------------------------------

    def disable_app(self, app: str, reason: str) -> None:
        """Stop an app's connections (its certificate expired); later notifications are dead-lettered."""
        for s in self.sessions.values():
            if s.app == app and not s.disabled:
                s.disable(reason)

    def _all_sessions(self) -> list[Session]:
        return [*self.sessions.values(), *self._retiring]

    def _record_all(self, resolved: Resolved) -> None:
        if not resolved:
            return
        self._ready.extend(self.recorder.record_all(resolved, time.time()))

    def _completed(self, batch: Batch | None) -> None:
        if batch is not None:
            self._ready.append(batch)

    def _requeue_unanswered(self, now: float) -> None:
        """Grace period over: write what is known and return every unanswered job to the queue."""
        returned = 0
        for s in self._all_sessions():
            back, answered = s.unresolved(now)
            self._record_all(answered)
            for n in back:
                self._completed(self.recorder.requeue(n))
                returned += 1
        self._commit_ready(now)
        self.log.info("returned_to_queue", notifications=returned, in_flight_left=self.handoff.in_flight)


def _routes(sessions: dict[str, Session]) -> dict[str, list[Session]]:
    """App name → the sessions (connections) that carry its notifications."""
    out: dict[str, list[Session]] = {}
    for s in sessions.values():
        out.setdefault(s.app, []).append(s)
    return out


def _sendable(n: Notification, wall: float) -> bool:
    """True for a notification that is neither expired nor scheduled for later: one a trial may use."""
    return not (n.expiration and n.expiration < wall) and not (
        n.send_at is not None and n.send_at > wall + SCHEDULE_SLACK
    )
