"""What every protocol session shares: lazy connect with pacing, read/write, resend after loss, rotation."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Protocol

from apnsd import logs, metrics
from apnsd.config import AppConfig
from apnsd.core.guard import MismatchGuard, mismatch_message
from apnsd.core.jobs import Notification, shorten
from apnsd.core.outcomes import BAD_DEVICE_TOKEN, DELIVERED, Kind, Outcome
from apnsd.core.pacing import ConnectPacer, outage_delay
from apnsd.core.slim import Entry, Hydrate, Slim
from apnsd.core.suspension import (
    CREDENTIAL_REASONS,
    SuspendState,
    Suspension,
    credential_suspension,
    mismatch_suspension,
)
from apnsd.errors import GatewayError, GatewayRejected

Resolved = list[tuple[Notification | Slim, Outcome]]  # a Slim only ever as a delivery
MAX_LOSSES = 5  # abrupt connection losses one notification may ride through before it counts as an attempt
LOST_REPEATEDLY = Outcome(Kind.RETRY, None, "connection_lost_repeatedly")
SHORT_LIVED = 30.0  # a connection that dies sooner than this makes the next connect back off
ERRORS_FOR_STANDBY = 2  # connections in a row that delivered, then ended young on the gateway's answer
FINAL_READ_TIMEOUT = 0.25  # after a failed write, how long the gateway's last words may take to arrive


class State(Enum):
    """A session's connection. DISCONNECTED exactly when it has no transport."""

    DISCONNECTED = "disconnected"  # connects lazily, when work is pending and the pacer allows
    OPEN = "open"  # sends pending work as fast as the protocol allows
    DRAINING = "draining"  # replaced: sends nothing new, closes once everything sent is answered


class Loss(Enum):
    """How a connection ended, which decides what its unanswered notifications cost."""

    ABRUPT = "abrupt"  # no reason given: each unanswered one rides a loss; binary restarts with a small window
    EXPLAINED = "explained"  # the gateway said why first (error response, GOAWAY, protocol error): no loss counted


class Transport(Protocol):
    """What a session needs of its connection (``TlsTransport``; a scripted fake in the unit tests)."""

    peer: str
    closed: bool
    written: int
    handshake_deadline: float

    def start(self) -> None: ...
    def advance(self) -> bool: ...
    def fileno(self) -> int: ...
    def send(self, data: bytes | bytearray) -> None: ...
    def flush(self) -> None: ...
    def read(self) -> bytes: ...
    def read_final(self, timeout: float) -> bytes: ...
    def close(self) -> None: ...

    @property
    def wants_write(self) -> bool: ...
    @property
    def unsent(self) -> int: ...
    def unacked(self) -> int: ...


class Session:
    """One app's link to its gateway; subclasses supply the protocol (binary or HTTP/2)."""

    protocol = ""
    watch_answers = True  # False for a one-shot send, which reports every answer itself
    keeps_standby = False  # the protocol benefits from a warm standby connection (binary: every error ends one)
    holds_positions = False  # its window holds written notifications by position (core/slim.py): binary

    def __init__(self, app: str, cfg: AppConfig, make_transport: Callable[[], Transport], log: logs.Logger) -> None:
        self.app = app
        self.cfg = cfg
        self.make_transport = make_transport
        self.log = log
        self.pending: deque[Notification] = deque()
        self.parked: list[Notification] = []  # answered with what the suspension parks: back to the scheduled set
        self.transport: Transport | None = None
        self.state = State.DISCONNECTED
        self.connected_at = 0.0
        self.wants_replacement = False
        self.disabled: str | None = None
        # Suspended (guard, credential breaker, certificate check): jobs are parked, not sent, until a reload or
        # an accepted trial request.
        self.hold = SuspendState(cfg.credential_probe_interval)
        self.guard = MismatchGuard(cfg.mismatch_guard_answers, cfg.mismatch_guard_window)
        self.last_connect_error: str | None = None
        self.pacer = ConnectPacer(cfg.max_connects_per_minute, cfg.backoff_initial, cfg.backoff_max)
        self.explanation: str | None = None  # why the gateway said it is ending this connection, if it did
        self._productive = False  # this connection has delivered something (see ConnectPacer.productive)
        self._error_run = 0  # connections in a row that delivered, then ended young on an error response
        self._dialing: list[Transport] = []  # connects (TCP, then TLS handshake) in progress
        self.standbys: list[tuple[Transport, float]] = []  # established idle connections (and since when), oldest first
        # How many standby connections to keep (connecting or ready) while error responses keep ending connections.
        self.standby_target = cfg.standby_connections if self.keeps_standby else 0
        # This app's counters, looked up once: a binary app reconnects after every error response.
        self._connects = metrics.CONNECTS.labels(app)
        self._resent = metrics.RESENT.labels(app)
        self._disconnects: dict[str, metrics.Counter] = {}
        # Reads back notifications a window holds by position (set by the delivery loop; None: never slimmed).
        self.hydrate: Hydrate | None = None
        # Slims that could not be read back yet, each with the outcome it got (None: to be sent again).
        self.limbo: list[tuple[Slim, Outcome | None]] = []
        self._limbo_at = 0.0  # when to try reading them back again
        self._limbo_failures = 0  # attempts in a row that failed: the next waits outage_delay() of it

    # --- what the delivery loop calls -------------------------------------------------------

    def submit(self, notes: Iterable[Notification]) -> None:
        """Queue notifications for sending on this app's connection."""
        self.pending.extend(notes)

    def watched(self) -> list[tuple[int, bool]]:
        """Every socket of this session to watch (current, connecting, standby), each with whether it waits to
        write; step(now, True) is due when any of them is ready."""
        out = [(t.fileno(), t.wants_write) for t in self._dialing]
        out += [(t.fileno(), False) for t, _ in self.standbys]
        if self.transport is not None:
            out.append((self.transport.fileno(), self.transport.wants_write))
        return out

    @property
    def busy(self) -> bool:
        """True while anything is pending or awaiting the gateway's answer."""
        return bool(self.pending) or bool(self.parked) or bool(self.limbo) or self.unanswered_count() > 0

    def step(self, now: float, readable: bool) -> Resolved:
        """Read, time out, connect, send: everything due now; returns notifications that got an outcome."""
        out: Resolved = self._from_limbo(now) if self.limbo and now >= self._limbo_at else []
        if readable and self.transport is not None:
            out += self._read(now)
        if readable and self.standbys:
            self._check_standbys(now)
        for t in self._dialing:
            if readable or t.wants_write or now >= t.handshake_deadline:
                self._advance_dial(t, now)
        if self.transport is not None:
            out += self._tick(now)
        if out and not self._productive:
            self._check_productive(out)
        if out and self.watch_answers:
            out = self._watch_answers(out, now)
        sending = not self.suspended or self.hold.trial is not None
        if self.transport is None and self.pending and not self.disabled and sending:
            self._connect(now)
        if self.transport is not None:
            out += self._write(now, sending)
        while self._wants_standby(sending) and now >= self.pacer.next_attempt(now):
            self._dial(now)  # each one adds a connect in progress (or a standby), or fails and backs off
        return out

    def _read(self, now: float) -> Resolved:
        """Take in what the gateway sent; a closed or failed connection is lost."""
        t = self.transport
        assert t is not None
        try:
            data = t.read()
        except GatewayError as exc:
            return self._lost(str(exc), now)
        out = self.on_bytes(data, now) if data else []
        if out and not self._productive:
            self._check_productive(out)  # before a loss below, which may count this connection as failed
        if t.closed and self.transport is t:
            out += self._lost(self.explanation or "gateway closed the connection", now)
        return out

    def _tick(self, now: float) -> Resolved:
        """Connection-age bookkeeping, then what time alone resolves (the protocol's timers)."""
        if self.pacer.failures and now - self.connected_at >= SHORT_LIVED:
            # Only a connection that lasted resets the backoff: a gateway that accepts and then
            # drops at once must not be reconnected to at full speed forever.
            self.pacer.succeeded()
        return self.on_timer(now)

    def _write(self, now: float, sending: bool) -> Resolved:
        """Ask for rotation when due; send pending work, or close a drained (or suspended) connection once all is
        answered."""
        if self.state is State.OPEN and now - self.connected_at >= self.cfg.reconnect_interval:
            self.wants_replacement = True
        if self.state is State.DRAINING and self.unanswered_count() == 0:
            self.close("scheduled_reconnect")
            return []
        if not sending and self.unanswered_count() == 0:
            self.close("suspended")  # a refused credential is not reused; a trial or reload connects afresh
            return []
        if sending:
            self.send_pending(now)
        assert self.transport is not None
        try:
            self.transport.flush()
        except GatewayError as exc:
            return self._write_failed(exc, now)
        return []

    def _write_failed(self, exc: GatewayError, now: float) -> Resolved:
        """A write failed: pick up what the gateway said before it went (e.g. an error response), then lose it."""
        out = self._read_remaining(now)
        if out and not self._productive:
            self._check_productive(out)
        out += self._lost(str(exc), now)
        return out

    def deadline(self, now: float) -> float:
        """When step() must next run even if the socket stays quiet."""
        dial = min(t.handshake_deadline for t in self._dialing) if self._dialing else now + 3600.0
        if self.limbo:
            dial = min(dial, self._limbo_at)
        if self.transport is None:
            if self.pending and not self.disabled and not self._dialing:
                return now if self.standbys else self.pacer.next_attempt(now)
            return dial
        if self._wants_standby(not self.suspended):
            dial = min(dial, self.pacer.next_attempt(now))
        return min(self.timer_deadline(now), self.connected_at + self.cfg.reconnect_interval, dial)

    def unresolved(self, now: float) -> tuple[list[Notification], Resolved]:
        """Everything not yet answered (sent or not), removed from the session — used at shutdown; and the answers
        that waited in limbo for their jobs to be read back, to be recorded rather than returned to the queue."""
        failures = self._limbo_failures
        notes = self.take_unanswered()
        # One more read back for what waits in limbo, unless Redis has just failed to answer one above.
        answered = self._from_limbo(now) if self.limbo and self._limbo_failures <= failures else []
        notes += self.pending
        notes += self.parked
        self.pending.clear()
        self.parked = []
        if self.limbo:  # still unreadable: they stay in flight in Redis, returned to the queue when the worker stops
            self.log.warning("left_in_flight", notifications=sum(len(s) for s, _ in self.limbo))
            self.limbo = []
        return notes, answered

    def close(self, cause: str) -> None:
        """Close the connection cleanly (protocol goodbye first), and the standby and a connect in progress;
        unanswered ones go back to pending."""
        self._close_spares(cause)
        if self.transport is None:
            return
        self.say_goodbye()
        try:
            self.transport.flush()
        except GatewayError:
            pass
        self._drop(cause)

    def retire(self) -> None:
        """Replaced by a new session: send nothing new, close once everything sent is answered."""
        self._close_spares("replaced")
        if self.state is State.OPEN:
            self.state = State.DRAINING

    def clone(self) -> Session:
        """A fresh session for the same app, sharing the connect pacing (for make-before-break)."""
        new = type(self)(self.app, self.cfg, self.make_transport, self.log)
        self.share_state(new)
        return new

    def share_state(self, new: Session) -> None:
        """Hand connect pacing, the guard and the suspension to a replacement connection of the same config."""
        new.pacer, new.guard, new.hold = self.pacer, self.guard, self.hold

    def disable(self, reason: str) -> None:
        """Stop this app: no more connects; its notifications are dead-lettered by the loop."""
        self.disabled = reason
        self._close_spares("disabled")
        metrics.SUSPENDED.labels(self.app).set(1)
        self.log.error("app_disabled", reason=reason)

    @property
    def suspended(self) -> str | None:
        """Why the app is suspended (cause and fix), or None while it sends."""
        s = self.hold.suspension
        return s.message if s is not None else None

    def suspend(self, suspension: Suspension, now: float) -> None:
        """Stop sending: the loop parks this app's jobs until a reload (or an accepted trial) resumes it."""
        if self.hold.suspend(suspension, now):
            self._close_spares("suspended")
            metrics.SUSPENDED.labels(self.app).set(1)
            self.log.error(
                "app_suspended", cause=suspension.cause, reason=suspension.message, environment=self.cfg.environment
            )

    def start_trial(self, note: Notification) -> None:
        """Send ``note`` alone to learn whether the gateway accepts the credentials again."""
        self.hold.start_trial(note)
        self.pending.appendleft(note)
        self.log.info("credential_probe", notification=self.describe(note))

    def parkable(self) -> list[Notification]:
        """Remove and return what must wait in the scheduled set: parked answers and, while suspended, every
        pending notification but a trial."""
        notes, self.parked = self.parked, []
        if self.suspended and self.pending:
            trial = self.hold.trial
            notes += [n for n in self.pending if n is not trial]
            kept = [n for n in self.pending if n is trial]
            self.pending.clear()
            self.pending.extend(kept)
        return notes

    def _watch_answers(self, out: Resolved, now: float) -> Resolved:
        """Trip the credential breaker and the mismatch guard; while suspended, park the answers they name."""
        hold = self.hold
        if hold.trial is not None:
            self._judge_trial(out, now)
        # Nearly every answer is a delivery, which neither trips the breaker nor the guard nor is parked.
        odd = [o for _, o in out if o is not DELIVERED]
        if not odd and hold.suspension is None:
            if (
                self.guard.min_answers
                and self.guard.observe(self.answers(out), 0, now)
                and self.guard.tripped is not None
            ):
                self.suspend(mismatch_suspension(mismatch_message(self.cfg.environment, *self.guard.tripped)), now)
            return out
        if not self.suspended:
            refused = next((o for o in odd if o.reason in CREDENTIAL_REASONS), None)
            if refused is not None:
                probe = self.cfg.credential_probe_interval
                self.suspend(credential_suspension(refused.reason, refused.status, self.cfg.environment, probe), now)
        if self.suspended:
            parked = [n for n, o in out if hold.parks(o.reason) and isinstance(n, Notification)]
            if parked:
                self.parked += parked
                out = [(n, o) for n, o in out if not hold.parks(o.reason)]
        elif self.guard.min_answers:
            # The answers that trip the guard are recorded: they are the evidence; later ones are parked.
            bad = sum(1 for o in odd if o.reason == BAD_DEVICE_TOKEN)
            if self.guard.observe(self.answers(out), bad, now) and self.guard.tripped is not None:
                self.suspend(mismatch_suspension(mismatch_message(self.cfg.environment, *self.guard.tripped)), now)
        return out

    def _judge_trial(self, out: Resolved, now: float) -> None:
        hold = self.hold
        for n, o in out:
            if n is not hold.trial:
                continue
            if hold.trial_answered(o.reason, now, from_gateway=o.status is not None):
                metrics.SUSPENDED.labels(self.app).set(0)
                self.log.warning("app_resumed", trial=o.reason or str(o.status))
            else:
                self.log.warning(
                    "credential_probe_refused", reason=o.reason, status=o.status, retry_in=hold.probe_interval
                )
            return

    # --- protocol hooks -----------------------------------------------------------------------

    def on_connected(self, now: float) -> None:
        """Called after the TLS handshake."""

    def send_pending(self, now: float) -> None:
        """Move pending notifications onto the wire as far as the protocol allows."""
        raise NotImplementedError

    def on_bytes(self, data: bytes, now: float) -> Resolved:
        """Handle bytes from the gateway."""
        raise NotImplementedError

    def on_timer(self, now: float) -> Resolved:
        """Resolve what time alone resolves (binary confirmations, pings)."""
        return []

    def timer_deadline(self, now: float) -> float:
        """When on_timer next has work."""
        return now + 3600.0

    def unanswered_count(self) -> int:
        """Notifications written but not yet answered."""
        raise NotImplementedError

    def ahead(self) -> int:
        """Notifications sent that one sent now would wait behind at the gateway (the lanes' window counts them):
        every unanswered one, unless the protocol knows better."""
        return self.unanswered_count()

    def take_unanswered(self) -> list[Notification]:
        """Remove and return written-but-unanswered notifications, in send order."""
        raise NotImplementedError

    def after_loss(self, loss: Loss) -> None:
        """Called when a connection was lost, with how it ended."""

    def answers(self, out: Resolved) -> int:
        """How many gateway answers ``out`` holds: one per entry (a binary window's Slim holds many)."""
        return len(out)

    def say_goodbye(self) -> None:
        """Queue the protocol's clean goodbye, if it has one."""

    # --- connection management ----------------------------------------------------------------

    def _connect(self, now: float) -> None:
        """Work is pending and there is no connection: take the standby, or start a connect (paced)."""
        if self.standbys:
            t, _ = self.standbys.pop(0)
            self.log.debug("standby_taken", gateway=t.peer)
            self._opened(t, now)
        elif not self._dialing and now >= self.pacer.next_attempt(now):
            self._dial(now)

    def _dial(self, now: float) -> None:
        """Start a connect without blocking; the loop's selector drives it on (_advance_dial)."""
        self.pacer.attempted(now)
        transport = self.make_transport()
        try:
            transport.start()
        except GatewayError as exc:
            self._connect_failed(exc, now)
            return
        self._dialing.append(transport)
        self._advance_dial(transport, now)

    def _advance_dial(self, t: Transport, now: float) -> None:
        """Take a connect in progress further; once established it carries the work, or waits as a standby."""
        try:
            if not t.advance():
                return
        except GatewayError as exc:
            self._dialing.remove(t)
            self._connect_failed(exc, now)
            return
        self._dialing.remove(t)
        if self.pacer.failures:
            self.log.info("connect_recovered", failed_attempts=self.pacer.failures)
        self.last_connect_error = None
        self._connects.inc()
        if self.transport is None:
            self.log.info("connected", gateway=t.peer, protocol=self.protocol)
            self._opened(t, now)
        else:
            self.log.info("connected", gateway=t.peer, protocol=self.protocol, standby=True)
            self.standbys.append((t, now))

    def _opened(self, transport: Transport, now: float) -> None:
        self.transport = transport
        self.state = State.OPEN
        self.connected_at = now
        self.explanation = None
        self._productive = False
        self.on_connected(now)

    def _connect_failed(self, exc: GatewayError, now: float) -> None:
        delay = self.pacer.failed(now)
        self.last_connect_error = str(exc)
        metrics.CONNECT_FAILURES.labels(self.app).inc()
        level = self.log.error if isinstance(exc, GatewayRejected) else self.log.warning
        if self.pacer.failures == 1 or self.pacer.failures % 10 == 0:
            level("connect_failed", error=str(exc), retry_in=round(delay, 2), failures=self.pacer.failures)

    def _wants_standby(self, sending: bool) -> bool:
        """Whether a standby connection should be opened now (pacing aside): a busy connection of a protocol that
        benefits, while connections keep ending on error responses after delivering, and none failing. Rare errors,
        and a gateway that refuses us, drops us or rejects everything, never see an extra connection."""
        return (
            self._error_run >= ERRORS_FOR_STANDBY  # first: false on every turn of an error-free loop
            and len(self._dialing) + len(self.standbys) < self.standby_target
            and self.state is State.OPEN
            and not self.wants_replacement
            and sending
            and not self.suspended
            and not self.disabled
            and not self.pacer.failures
            and (bool(self.pending) or self.unanswered_count() > 0)
        )

    def _check_standbys(self, now: float) -> None:
        """A socket of this session was readable: an idle standby the gateway closed (or that it spoke on) is dropped
        and, while still wanted, replaced through the pacer; one closed young backs off like any connection that
        died young. TLS 1.3 session tickets arriving on a new standby are taken in here."""
        for t, since in list(self.standbys):
            try:
                data = t.read()
            except GatewayError as exc:
                cause = str(exc)
            else:
                if not data and not t.closed:
                    continue
                cause = "gateway spoke on an idle standby connection"
            self.standbys.remove((t, since))
            t.close()
            metrics.DISCONNECTS.labels(self.app, "standby_lost").inc()
            if now - since < SHORT_LIVED:
                # Accept-and-drop is churn: the next connect backs off, and no standby is opened until a connection
                # proves itself again; no notification is touched.
                self.log.info("standby_lost", reason=cause, retry_in=round(self.pacer.failed(now), 2))
            else:
                self.log.info("standby_lost", reason=cause)

    def _close_spares(self, cause: str) -> None:
        """Close the standbys and any connect in progress (rotation, stop, suspension, disabling)."""
        spares = self._dialing + [t for t, _ in self.standbys]
        for t in spares:
            t.close()
        if spares:
            self.log.debug("standby_closed", reason=cause, connections=len(spares))
        self._dialing, self.standbys = [], []

    def _check_productive(self, resolved: Resolved) -> None:
        """Once per connection: the first delivery makes its connect attempt a productive one."""
        if any(outcome.kind is Kind.DELIVERED for _, outcome in resolved):
            self._productive = True
            self.pacer.productive()

    def _read_remaining(self, now: float) -> Resolved:
        """After a failed write, pick up what the gateway said before it went (e.g. an error response that
        raced the reset), waiting for it at most FINAL_READ_TIMEOUT."""
        t = self.transport
        if t is None or t.closed:
            return []
        data = t.read_final(FINAL_READ_TIMEOUT)
        return self.on_bytes(data, now) if data else []

    def _lost(self, cause: str, now: float, loss: Loss | None = None) -> Resolved:
        """The connection is gone: unanswered notifications go back to the front of the queue.

        Without an explicit ``loss``, it is EXPLAINED when the gateway said why before it went."""
        if loss is None:
            loss = Loss.ABRUPT if self.explanation is None else Loss.EXPLAINED
        abrupt = loss is Loss.ABRUPT
        out: Resolved = []
        held = len(self.limbo)
        notes = self.take_unanswered()
        if abrupt:  # those that could not be read back (Redis down) rode this loss too
            for i in range(held, len(self.limbo)):
                s = self.limbo[i][0]
                s.losses += 1
                if s.losses >= MAX_LOSSES:
                    self.limbo[i] = (s, LOST_REPEATEDLY)
        again: list[Notification] = []
        for n in notes:
            if abrupt:
                n.losses += 1
            if n.losses >= MAX_LOSSES:
                out.append((n, LOST_REPEATEDLY))
            else:
                again.append(n)
        self.pending.extendleft(reversed(again))
        if again:
            self._resent.inc(len(again))
        young = now - self.connected_at < SHORT_LIVED
        if abrupt and young:
            self.pacer.failed(now)
        self._error_run = self._error_run + 1 if not abrupt and young and self._productive else 0
        self.after_loss(loss)
        self._drop(cause, resent=len(again))
        return out

    def _drop(self, cause: str, resent: int = 0) -> None:
        if self.transport is not None:
            self.transport.close()
        self.transport = None
        self.state = State.DISCONNECTED
        label = metrics.cause_label(cause)
        counter = self._disconnects.get(label)
        if counter is None:
            counter = self._disconnects[label] = metrics.DISCONNECTS.labels(self.app, label)
        counter.inc()
        self.log.info("disconnected", reason=cause, resend=resent)

    def describe(self, n: Entry) -> str:
        """A short, log-safe name for a notification."""
        if type(n) is Slim:
            return f"job {n.positions[0]} of batch {getattr(n.batch.commit, 'batch_id', '?')}"
        assert isinstance(n, Notification)
        return f"{shorten(n.token)}#{n.apns_id[-6:]}" if n.apns_id else shorten(n.token)

    # --- notifications held by position (core/slim.py) ------------------------------------------------

    def restore(self, entries: list[Entry], outcome: Outcome | None = None) -> tuple[list[Notification], bool]:
        """``entries`` as notifications, Slims read back in place; returns them and whether all came back in order.

        What cannot be read now (Redis unavailable) waits in limbo with ``outcome`` and is tried again after
        ``outage_delay``; a job that can no longer be sent is left out (the loop recorded it). While such a retry is
        pending, Redis is not asked at all: each attempt may hang for the socket timeout, and the loop with it."""
        slims = [e for e in entries if isinstance(e, Slim)]
        if not slims:
            return entries, True  # type: ignore[return-value]  # no Slim: notifications only
        back = None if self.limbo and self._limbo_failures else self._read_back(slims)
        if back is None:
            self.limbo += [(s, outcome) for s in slims]
            return [e for e in entries if not isinstance(e, Slim)], False
        notes: list[Notification] = []
        whole = True
        parts = iter(back)
        for e in entries:
            if isinstance(e, Slim):
                got = next(parts)
                whole = whole and len(got) == len(e)
                notes += got
            else:
                notes.append(e)
        return notes, whole

    def _read_back(self, slims: list[Slim]) -> list[list[Notification]] | None:
        """One attempt at reading Slims back (see core/slim.Hydrate); a failure is logged and backs the next off."""
        back = self.hydrate(slims) if self.hydrate is not None else None
        if back is not None:
            self._limbo_failures = 0
            return back
        self._limbo_failures += 1
        if self._limbo_failures == 1 or self._limbo_failures % 10 == 0:
            self.log.warning(
                "jobs_unreadable",
                notifications=sum(len(s) for s in slims),
                retry_in=round(outage_delay(self._limbo_failures), 2),
            )
        return None

    def _from_limbo(self, now: float) -> Resolved:
        """Try again to read back what waits in limbo (all at once): answered ones come out with their outcome, the
        rest goes to the front of the pending queue."""
        back = self._read_back([s for s, _ in self.limbo])
        if back is None:
            self._limbo_at = now + outage_delay(self._limbo_failures)
            return []
        waiting, self.limbo = self.limbo, []
        out: Resolved = []
        again: list[Notification] = []
        for (_, outcome), notes in zip(waiting, back, strict=True):
            if outcome is None:
                again += notes
            else:
                out += [(n, outcome) for n in notes]
        self.pending.extendleft(reversed(again))
        return out
