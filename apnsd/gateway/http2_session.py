"""APNs over HTTP/2 on one connection: fill the allowed streams, map each answer to an outcome."""

from __future__ import annotations

import time
from typing import Any

from apnsd import metrics
from apnsd.core.jobs import Notification
from apnsd.core.outcomes import Kind, Outcome, http2_outcome
from apnsd.gateway.credentials import TokenSigner
from apnsd.gateway.session import Resolved, Session
from apnsd.wire.http2.connection import (
    GoAwayReceived,
    H2ClientConnection,
    H2ProtocolError,
    PingAcked,
    RequestTemplate,
    ResponseReceived,
    SettingsChanged,
    StreamReset,
    effective_priority,
)

REFUSED_STREAM = 7
PING_TIMEOUT = 30.0
# One request in 64 is timed for the round-trip histogram (stream ids are odd: 1, 129, 257, ...): a dict
# entry and an observe() for every request would cost more than the rest of its bookkeeping.
RTT_SAMPLE_MASK = 127


class Http2Session(Session):
    """One app's HTTP/2 connection; many requests in flight, up to the server's stream limit."""

    protocol = "http2"

    def __init__(
        self, *args: Any, signer: TokenSigner | None = None, default_topic: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.signer = signer
        self.default_topic = default_topic
        self._h2: H2ClientConnection | None = None
        self._streams: dict[int, Notification] = {}
        self._template: RequestTemplate | None = None
        self._token_iat = 0
        self._last_activity = 0.0
        self._ping_sent: float | None = None
        self._timed: dict[int, float] = {}  # sampled stream id → when its request was written
        self._round_trip = metrics.ROUND_TRIP.labels(self.app)
        host, port = self.cfg.gateway()
        host = f"[{host}]" if ":" in host else host  # an IPv6 literal is bracketed in :authority
        self._authority = host if port == 443 else f"{host}:{port}"

    def clone(self) -> Http2Session:
        """A fresh session for the same app (make-before-break rotation); shares the token signer."""
        new = Http2Session(
            self.app, self.cfg, self.make_transport, self.log, signer=self.signer, default_topic=self.default_topic
        )
        new.pacer = self.pacer
        return new

    def on_connected(self, now: float) -> None:
        """Send the connection preface and SETTINGS."""
        self._h2 = H2ClientConnection()
        self._h2.initiate()
        self._streams.clear()
        self._timed.clear()
        self._template = None
        self._last_activity = now
        self._ping_sent = None
        self._push()

    def _current_template(self) -> RequestTemplate:
        signer = self.signer
        if signer is not None:
            token = signer.token(time.time())
            if signer.issued_at != self._token_iat or self._template is None:
                self._token_iat = signer.issued_at
                metrics.TOKEN_EXPIRY.labels(self.app).set(signer.issued_at + 3600)
                self._template = RequestTemplate(self._authority, self.default_topic, f"bearer {token}")
        elif self._template is None:
            self._template = RequestTemplate(self._authority, self.default_topic, None)
        return self._template

    def send_pending(self, now: float) -> None:
        """Open as many streams as the server allows for pending notifications."""
        h2 = self._h2
        if h2 is None or self.rotating or not self.pending:
            return
        n = min(h2.available_streams, len(self.pending))
        if n <= 0:
            if h2.streams_exhausted:
                self.wants_replacement = True
            return
        template = self._current_template()
        pending, streams, send = self.pending, self._streams, h2.send_request
        for _ in range(n):
            note = pending.popleft()
            sid = send(
                template,
                note.token,
                note.apns_id,
                note.payload,
                push_type=note.push_type,
                priority=effective_priority(note.push_type, note.priority),
                expiration=note.expiration,
                collapse_id=note.collapse_id,
                topic=note.topic,
            )
            streams[sid] = note
            if sid & RTT_SAMPLE_MASK == 1:
                self._timed[sid] = time.monotonic()  # not ``now``: parsing may have run since it was taken
        self._last_activity = now
        self.log.debug("requests_written", notifications=n, open_streams=len(streams))
        self._push()

    def _push(self) -> None:
        if self._h2 is not None and self.transport is not None:
            data = self._h2.data_to_send()
            if data:
                self.transport.send(data)

    def on_bytes(self, data: bytes, now: float) -> Resolved:
        """Turn the server's frames into outcomes; resend what a GOAWAY or refused stream left unprocessed."""
        h2 = self._h2
        if h2 is None:
            return []
        failure = None
        try:
            events = h2.receive_data(data)
        except H2ProtocolError as exc:
            events, failure = exc.events, exc
        self._last_activity = now
        out: Resolved = []
        streams = self._streams
        for ev in events:
            if type(ev) is ResponseReceived:
                note = streams.pop(ev.stream_id, None)
                if note is not None:
                    out.append((note, self._outcome(ev)))
                    if ev.stream_id & RTT_SAMPLE_MASK == 1:
                        sent = self._timed.pop(ev.stream_id, None)
                        if sent is not None:
                            self._round_trip.observe(max(0.0, now - sent))
            elif type(ev) is StreamReset:
                note = streams.pop(ev.stream_id, None)
                self._timed.pop(ev.stream_id, None)
                if note is None:
                    continue
                if ev.error_code == REFUSED_STREAM:
                    self.pending.appendleft(note)  # never processed: send again, no attempt counted
                else:
                    out.append((note, Outcome(Kind.RETRY, None, f"stream_reset_{ev.error_code}")))
            elif type(ev) is GoAwayReceived:
                out += self._on_goaway(ev)
            elif type(ev) is SettingsChanged:
                self.log.debug("settings", max_concurrent_streams=ev.max_concurrent_streams)
            elif type(ev) is PingAcked:
                self._ping_sent = None
        self._push()
        if failure is not None:
            self._lost_cause = f"HTTP/2 protocol error: {failure}"
            out += self._lost(self._lost_cause, now)
        return out

    def _outcome(self, ev: ResponseReceived) -> Outcome:
        if ev.status == 200:
            return http2_outcome(200)
        if ev.reason == "ExpiredProviderToken" and self.signer is not None:
            self.signer.force_refresh(time.time())
        return http2_outcome(ev.status, ev.reason, ev.timestamp_ms)

    def _on_goaway(self, ev: GoAwayReceived) -> Resolved:
        # Streams above last_stream_id were never processed: send them again on the next connection.
        unprocessed = sorted(sid for sid in self._streams if sid > ev.last_stream_id)
        again = [self._streams.pop(sid) for sid in unprocessed]
        self.pending.extendleft(reversed(again))
        if again:
            metrics.RESENT.labels(self.app).inc(len(again))
        self._lost_cause = f"GOAWAY {ev.reason or ev.error_code}"
        self.log.warning(
            "goaway",
            reason=ev.reason,
            error_code=ev.error_code,
            last_stream_id=ev.last_stream_id,
            resend=len(again),
            awaiting=len(self._streams),
        )
        return []

    def on_timer(self, now: float) -> Resolved:
        """PING an idle connection; give up on one whose PING goes unanswered; close after GOAWAY."""
        h2 = self._h2
        if h2 is None or self.transport is None:
            return []
        if h2.goaway is not None and not self._streams:
            self.close(self._lost_cause or "goaway")
            return []
        if self._ping_sent is not None and now - self._ping_sent > PING_TIMEOUT:
            self._lost_cause = ""
            return self._lost("PING unanswered", now)
        if self._ping_sent is None and now - self._last_activity >= self.cfg.ping_interval:
            h2.ping()
            self._ping_sent = now
            self._push()
        return []

    def timer_deadline(self, now: float) -> float:
        """The next PING (or PING timeout)."""
        if self._ping_sent is not None:
            return self._ping_sent + PING_TIMEOUT
        return self._last_activity + self.cfg.ping_interval

    def unanswered_count(self) -> int:
        """Streams open and not yet answered."""
        return len(self._streams)

    def take_unanswered(self) -> list[Notification]:
        """Every open stream's notification, in the order they were sent."""
        notes = [self._streams[sid] for sid in sorted(self._streams)]
        self._streams.clear()
        return notes

    def say_goodbye(self) -> None:
        """GOAWAY (no error) before closing."""
        if self._h2 is not None:
            self._h2.close()
            self._push()
