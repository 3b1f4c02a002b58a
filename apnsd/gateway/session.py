"""What every protocol session shares: lazy connect with pacing, read/write, resend after loss, rotation."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from apnsd import metrics
from apnsd.config import AppConfig
from apnsd.core.jobs import Notification, shorten
from apnsd.core.outcomes import Kind, Outcome
from apnsd.core.pacing import ConnectPacer
from apnsd.errors import GatewayError, GatewayRejected
from apnsd.gateway.transport import TlsTransport

Resolved = list[tuple[Notification, Outcome]]
MAX_LOSSES = 5  # abrupt connection losses one notification may ride through before it counts as an attempt
SHORT_LIVED = 30.0  # a connection that dies sooner than this makes the next connect back off
FINAL_READ_TIMEOUT = 0.25  # after a failed write, how long the gateway's last words may take to arrive


class Session:
    """One app's link to its gateway; subclasses supply the protocol (binary or HTTP/2)."""

    protocol = ""

    def __init__(self, app: str, cfg: AppConfig, make_transport: Callable[[], TlsTransport], log: Any) -> None:
        self.app = app
        self.cfg = cfg
        self.make_transport = make_transport
        self.log = log
        self.pending: deque[Notification] = deque()
        self.transport: TlsTransport | None = None
        self.connected_at = 0.0
        self.rotating = False
        self.wants_replacement = False
        self.disabled: str | None = None
        self.last_connect_error: str | None = None
        self.pacer = ConnectPacer(cfg.max_connects_per_minute, cfg.backoff_initial, cfg.backoff_max)
        self._lost_cause = ""
        self._productive = False  # this connection has delivered something (see ConnectPacer.productive)

    # --- what the delivery loop calls -------------------------------------------------------

    def submit(self, notes: Iterable[Notification]) -> None:
        """Queue notifications for sending on this app's connection."""
        self.pending.extend(notes)

    def fileno(self) -> int | None:
        """The socket to watch for reading, if connected."""
        return self.transport.fileno() if self.transport is not None else None

    @property
    def wants_write(self) -> bool:
        """True while bytes are waiting for the socket to take them."""
        return self.transport is not None and self.transport.wants_write

    @property
    def busy(self) -> bool:
        """True while anything is pending or awaiting the gateway's answer."""
        return bool(self.pending) or self.unanswered_count() > 0

    def step(self, now: float, readable: bool) -> Resolved:
        """Read, time out, connect, send: everything due now; returns notifications that got an outcome."""
        out: Resolved = []
        t = self.transport
        if t is not None and readable:
            try:
                data = t.read()
            except GatewayError as exc:
                out += self._lost(str(exc), now)
            else:
                if data:
                    out += self.on_bytes(data, now)
                if t.closed and self.transport is t:
                    out += self._lost(self._lost_cause or "gateway closed the connection", now)
        if self.transport is not None:
            if self.pacer.failures and now - self.connected_at >= SHORT_LIVED:
                # Only a connection that lasted resets the backoff: a gateway that accepts and then
                # drops at once must not be reconnected to at full speed forever.
                self.pacer.succeeded()
            out += self.on_timer(now)
        if out and not self._productive:
            self._check_productive(out)
        if self.transport is None and self.pending and not self.disabled:
            self._try_connect(now)
        if self.transport is not None:
            if not self.rotating and now - self.connected_at >= self.cfg.reconnect_interval:
                self.wants_replacement = True
            if self.rotating and self.unanswered_count() == 0:
                self.close("scheduled_reconnect")
            else:
                self.send_pending(now)
                try:
                    self.transport.flush()
                except GatewayError as exc:
                    out += self._read_remaining(now)
                    if out and not self._productive:
                        self._check_productive(out)
                    out += self._lost(str(exc), now)
        return out

    def deadline(self, now: float) -> float:
        """When step() must next run even if the socket stays quiet."""
        if self.transport is None:
            if self.pending and not self.disabled:
                return self.pacer.next_attempt(now)
            return now + 3600.0
        return min(self.timer_deadline(now), self.connected_at + self.cfg.reconnect_interval)

    def unresolved(self) -> list[Notification]:
        """Everything not yet answered (sent or not), removed from the session — used at shutdown."""
        notes = self.take_unanswered() + list(self.pending)
        self.pending.clear()
        return notes

    def close(self, cause: str) -> None:
        """Close the connection cleanly (protocol goodbye first); unanswered ones go back to pending."""
        if self.transport is None:
            return
        self.say_goodbye()
        try:
            self.transport.flush()
        except GatewayError:
            pass
        self._drop(cause)

    def clone(self) -> Session:
        """A fresh session for the same app, sharing the connect pacing (for make-before-break)."""
        new = type(self)(self.app, self.cfg, self.make_transport, self.log)
        new.pacer = self.pacer
        return new

    def disable(self, reason: str) -> None:
        """Stop this app: no more connects; its notifications are dead-lettered by the loop."""
        self.disabled = reason
        self.log.error("app_disabled", reason=reason)

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

    def take_unanswered(self) -> list[Notification]:
        """Remove and return written-but-unanswered notifications, in send order."""
        raise NotImplementedError

    def after_loss(self, abrupt: bool) -> None:
        """Called when a connection was lost; ``abrupt`` when the gateway gave no reason."""

    def say_goodbye(self) -> None:
        """Queue the protocol's clean goodbye, if it has one."""

    # --- connection management ----------------------------------------------------------------

    def _try_connect(self, now: float) -> None:
        if now < self.pacer.next_attempt(now):
            return
        self.pacer.attempted(now)
        transport = self.make_transport()
        try:
            transport.connect()
        except GatewayError as exc:
            delay = self.pacer.failed(now)
            self.last_connect_error = str(exc)
            metrics.CONNECT_FAILURES.labels(self.app).inc()
            level = self.log.error if isinstance(exc, GatewayRejected) else self.log.warning
            if self.pacer.failures == 1 or self.pacer.failures % 10 == 0:
                level("connect_failed", error=str(exc), retry_in=round(delay, 2), failures=self.pacer.failures)
            return
        if self.pacer.failures:
            self.log.info("connect_recovered", failed_attempts=self.pacer.failures)
        self.last_connect_error = None
        self.transport = transport
        self.connected_at = now
        self.rotating = False
        self._lost_cause = ""
        self._productive = False
        metrics.CONNECTS.labels(self.app).inc()
        metrics.CONNECTED.labels(self.app).set(1)
        self.log.info("connected", gateway=transport.peer, protocol=self.protocol)
        self.on_connected(now)

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

    def _lost(self, cause: str, now: float) -> Resolved:
        """The connection is gone: unanswered notifications go back to the front of the queue."""
        out: Resolved = []
        notes = self.take_unanswered()
        again: list[Notification] = []
        abrupt = not self._lost_cause
        for n in notes:
            if abrupt:
                n.losses += 1
            if n.losses >= MAX_LOSSES:
                out.append((n, Outcome(Kind.RETRY, None, "connection_lost_repeatedly")))
            else:
                again.append(n)
        self.pending.extendleft(reversed(again))
        if again:
            metrics.RESENT.labels(self.app).inc(len(again))
        if abrupt and now - self.connected_at < SHORT_LIVED:
            self.pacer.failed(now)
        self.after_loss(abrupt)
        self._drop(cause, resent=len(again))
        return out

    def _drop(self, cause: str, resent: int = 0) -> None:
        if self.transport is not None:
            self.transport.close()
        self.transport = None
        self.rotating = False
        metrics.CONNECTED.labels(self.app).set(0)
        metrics.DISCONNECTS.labels(self.app, cause.split(":")[0][:40]).inc()
        self.log.info("disconnected", reason=cause, resend=resent)

    def describe(self, n: Notification) -> str:
        """A short, log-safe name for a notification."""
        return f"{shorten(n.token)}#{n.apns_id[-6:]}" if n.apns_id else shorten(n.token)
