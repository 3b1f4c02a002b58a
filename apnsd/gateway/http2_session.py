"""APNs over HTTP/2 on one connection: fill the allowed streams, map each answer to an outcome."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from apnsd import metrics
from apnsd.core.jobs import Notification, bundle_of, live_activity_topic
from apnsd.core.outcomes import DELIVERED, Kind, Outcome, http2_outcome
from apnsd.core.push_types import PUSH_TYPE_SUFFIXES, topic_for
from apnsd.errors import GatewayError, JobError
from apnsd.gateway.credentials import MIN_TOKEN_REFRESH, TokenSigner
from apnsd.gateway.session import MAX_LOSSES, SHORT_LIVED, Loss, Resolved, Session, State
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
from apnsd.wire.http2.frames import REFUSED_STREAM

MARK_RESOLUTION = 1.0  # seconds between two send-time marks: a stall is seen at most this much early
MAX_MARKS = 64  # marks kept before the ones older than the oldest unanswered request are dropped
MIN_PARK = 1.0  # shortest pause after TooManyProviderTokenUpdates
# Answers about the provider token, not the notification: the notification is sent again, uncounted.
RESEND_REASONS = frozenset({"TooManyProviderTokenUpdates", "UnrelatedKeyIdInToken"})
NO_ERROR = 0
WORKED_STREAMS = 100  # requests a connection must have carried for a graceful GOAWAY soon after connecting
KILLER = Outcome(Kind.DEAD, None, "gateway_protocol_error")
NO_ANSWER = Outcome(Kind.RETRY, None, "no_answer")
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
        # topic-less jobs of a suffixed push type (voip, liveactivity, …) go to the bundle id + suffix
        self._type_topics: dict[str | None, str | None] = {
            t: topic_for(default_topic, t) for t, sfx in PUSH_TYPE_SUFFIXES.items() if sfx
        }
        self._h2: H2ClientConnection | None = None
        self._streams: dict[int, Notification] = {}
        self._template: RequestTemplate | None = None
        self._token_iat = 0
        self._last_activity = 0.0
        self._last_received = 0.0
        self._ping_sent: float | None = None
        self._sent_marks: deque[tuple[int, float]] = deque()  # (first stream id of a write, when)
        self._parked_until = 0.0  # after TooManyProviderTokenUpdates, no sends before this
        self._starved_since: float | None = None  # notifications wait, yet the gateway allows no stream
        self._hold = False  # this connection must send nothing more: the work waits for a fresh one
        self._expired_from_sid = 0  # streams from here on were sent after an ExpiredProviderToken (re-signed)
        self._unsendable: list[tuple[Notification, Outcome]] = []  # notifications whose headers could not be encoded
        self._alone: int | None = None  # the stream of a suspect on the wire by itself (see _suspects)
        self._early_goaway = False  # a GOAWAY came within SHORT_LIVED of connecting
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
        self.share_state(new)
        return new

    def on_connected(self, now: float) -> None:
        """Send the connection preface and SETTINGS."""
        # apns-unique-id exists only in the development environment: read ids there (and from errors)
        self._h2 = H2ClientConnection(read_ids=self.cfg.environment == "sandbox", compact=True)
        self._h2.initiate()
        self._streams.clear()
        self._sent_marks.clear()
        self._expired_from_sid = 0
        self._hold = False
        self._alone = None
        self._early_goaway = False
        self._timed.clear()
        self._template = None
        self._starved_since = None
        self._last_activity = self._last_received = now
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
        if h2 is None or self.state is not State.OPEN or self._hold or not self.pending or now < self._parked_until:
            return
        if self._alone is not None and self._alone in self._streams:
            return  # nothing joins a suspect on the wire until it is answered
        n = min(h2.available_streams, len(self.pending))
        if n <= 0:
            if h2.streams_exhausted:
                self.wants_replacement = True
            elif self._starved_since is None and h2.max_concurrent_streams == 0:
                self._starved_since = now  # the gateway allows no stream: see on_timer
            return
        self._starved_since = None
        template = self._current_template()
        pending, streams, send, type_topics = self.pending, self._streams, h2.send_request, self._type_topics
        first = 0  # the first stream id this write opens, for the stall check's send-time marks
        for _ in range(n):
            alone = pending[0].suspect > 0
            if alone and streams:
                break  # a suspect goes on the wire alone, so that a second error names it for certain
            note = pending.popleft()
            if note.channel is not None:
                sid = self._send_broadcast(h2, template, note)
                streams[sid] = note
                first = first or sid
                continue
            try:
                sid = send(
                    template,
                    note.token,
                    note.apns_id,
                    note.payload,
                    push_type=note.push_type,
                    priority=effective_priority(note.push_type, note.priority),
                    expiration=note.expiration,
                    collapse_id=note.collapse_id,
                    topic=note.topic or type_topics.get(note.push_type),
                )
            except JobError as exc:  # the parser's checks should make this unreachable: one job, not the loop
                self._unsendable.append((note, Outcome(Kind.DEAD, None, exc.reason)))
                continue
            except Exception as exc:  # a bug while encoding costs this one notification, not the loop
                self._unsendable.append((note, Outcome(Kind.DEAD, None, f"internal_error:{type(exc).__name__}")))
                continue
            streams[sid] = note
            first = first or sid
            if sid & RTT_SAMPLE_MASK == 1:
                self._timed[sid] = time.monotonic()  # not ``now``: parsing may have run since it was taken
            if alone:
                self._alone = sid
                break
        marks = self._sent_marks
        if first and (not marks or now - marks[-1][1] >= MARK_RESOLUTION):
            if len(marks) >= MAX_MARKS:
                self._trim_marks()
            marks.append((first, now))
        self._last_activity = now
        self.log.debug("requests_written", notifications=n, open_streams=len(streams))
        self._push()

    def _send_broadcast(self, h2: H2ClientConnection, template: RequestTemplate, note: Notification) -> int:
        """A channel job: one broadcast to every subscriber of the channel, on this same connection."""
        topic = note.topic or self.default_topic or ""
        return h2.send_broadcast(
            template,
            bundle_of(topic),
            note.channel or "",
            note.apns_id,
            note.payload,
            priority=note.priority or 10,
            expiration=note.expiration or 0,
            topic=live_activity_topic(topic),
        )

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
        self._last_activity = self._last_received = now
        out: Resolved = []
        streams = self._streams
        for ev in events:
            if type(ev) is int:  # a plain 200 (the compact form of ResponseReceived(ev, 200))
                note = streams.pop(ev, None)
                if note is None:
                    continue
                out.append((note, DELIVERED))
                if ev & RTT_SAMPLE_MASK == 1:
                    sent = self._timed.pop(ev, None)
                    if sent is not None:
                        self._round_trip.observe(max(0.0, now - sent))
            elif type(ev) is ResponseReceived:
                note = streams.pop(ev.stream_id, None)
                if note is None:
                    continue
                if ev.status != 200 and ev.reason in RESEND_REASONS:
                    out += self._token_trouble(note, ev, now)
                    continue
                if ev.apns_id:
                    note.apns_id = ev.apns_id
                    note.unique_id = ev.unique_id
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
                out += self._on_goaway(ev, now)
            elif type(ev) is SettingsChanged:
                self.log.debug("settings", max_concurrent_streams=ev.max_concurrent_streams)
            elif type(ev) is PingAcked:
                self._ping_sent = None
        self._push()
        if failure is not None:
            self.explanation = f"HTTP/2 protocol error: {failure}"
            self._flush_goodbye()
            out += self._lost(self.explanation, now)
        return out

    def _flush_goodbye(self) -> None:
        """Best effort: let the GOAWAY the connection queued for a protocol error reach the gateway first."""
        if self.transport is not None:
            try:
                self.transport.flush()
            except GatewayError:
                pass

    def _outcome(self, ev: ResponseReceived) -> Outcome:
        if ev.status == 200:
            return http2_outcome(200)
        if ev.reason == "ExpiredProviderToken" and self.signer is not None and self._h2 is not None:
            if not self._expired_from_sid:
                self._expired_from_sid = self._h2.next_stream_id
            elif ev.stream_id >= self._expired_from_sid:
                # refused again for a request sent after re-signing: try a fresh connection
                self._replace("ExpiredProviderToken after re-signing")
            self.signer.force_refresh(time.time())
        return http2_outcome(ev.status, ev.reason, ev.timestamp_ms)

    def _token_trouble(self, note: Notification, ev: ResponseReceived, now: float) -> Resolved:
        """TooManyProviderTokenUpdates parks this connection's sends; UnrelatedKeyIdInToken asks for a new
        connection. Either way the notification is sent again without spending an attempt."""
        note.losses += 1
        if note.losses >= MAX_LOSSES:  # bounced too often: retried later via the scheduled set, uncounted
            return [(note, Outcome(Kind.RETRY, ev.status, ev.reason))]
        self.pending.appendleft(note)
        if ev.reason == "UnrelatedKeyIdInToken":
            self._replace(ev.reason)
        elif now >= self._parked_until:
            issued = self.signer.issued_at if self.signer is not None else 0
            wait = min(MIN_TOKEN_REFRESH, max(MIN_PARK, issued + MIN_TOKEN_REFRESH - time.time()))
            self._parked_until = now + wait
            self.log.warning("token_updates_refused", reason=ev.reason, parked_for=round(wait, 1))
        return []

    def _replace(self, why: str) -> None:
        """Move this app's work to a fresh connection (make-before-break, as for a scheduled reconnect)."""
        if not self._hold:
            self.log.warning("connection_replaced", reason=why)
        self.wants_replacement = self._hold = True

    def _on_goaway(self, ev: GoAwayReceived, now: float) -> Resolved:
        out: Resolved = []
        if ev.error_code != NO_ERROR:
            out = self._suspects(ev.last_stream_id)
        # Streams above last_stream_id were never processed: send them again on the next connection.
        unprocessed = sorted(sid for sid in self._streams if sid > ev.last_stream_id)
        again = [self._streams.pop(sid) for sid in unprocessed]
        self.pending.extendleft(reversed(again))
        if again:
            metrics.RESENT.labels(self.app).inc(len(again))
        # A gateway that says goodbye right after hello is failing: the connect counts as failed when this
        # connection closes (after any delivery on it was counted as productive, which must not undo it). Not
        # so a graceful goodbye after it processed WORKED_STREAMS requests: a gateway or proxy that caps requests
        # per connection (nginx's keepalive_requests, 1,000 by default) would otherwise cost a backoff each time.
        worked = ev.error_code == NO_ERROR and ev.last_stream_id >= 2 * WORKED_STREAMS - 1
        self._early_goaway = now - self.connected_at < SHORT_LIVED and not worked
        self.explanation = f"GOAWAY {ev.reason or ev.error_code}"
        self.log.warning(
            "goaway",
            reason=ev.reason,
            error_code=ev.error_code,
            last_stream_id=ev.last_stream_id,
            resend=len(again),
            awaiting=len(self._streams),
        )
        return out

    def _count_early_goaway(self, now: float) -> None:
        """A connection ended by a GOAWAY soon after it opened counts as a failed connect (once)."""
        if self._early_goaway:
            self._early_goaway = False
            self.pacer.failed(now)

    def _lost(self, cause: str, now: float, loss: Loss | None = None) -> Resolved:
        """The connection is gone (see Session._lost); one that said GOAWAY right after opening backs off."""
        self._count_early_goaway(now)
        return super()._lost(cause, now, loss)

    def _suspects(self, last_stream_id: int) -> Resolved:
        """A GOAWAY with an error: one of the processed, unanswered requests may have caused it.

        Each becomes a suspect and is sent again alone (see send_pending); a suspect that was alone on
        the connection when the gateway ended it with an error again caused it, and is dead-lettered
        instead of ending every connection it is sent on.
        """
        processed = [sid for sid in self._streams if sid <= last_stream_id]
        if len(self._streams) == 1 and processed and self._streams[processed[0]].suspect:
            note = self._streams.pop(processed[0])
            self.log.error("connection_ended_by_job", notification=self.describe(note))
            return [(note, KILLER)]
        for sid in processed:
            self._streams[sid].suspect += 1
        return []

    def on_timer(self, now: float) -> Resolved:
        """PING an idle connection, or one whose oldest request waits with nothing received; give up on one
        whose PING goes unanswered; close after GOAWAY."""
        h2 = self._h2
        if h2 is None or self.transport is None:
            return []
        if self._unsendable:
            out: Resolved = [*self._unsendable]
            self._unsendable = []
            return out
        if h2.goaway is not None and not self._streams:
            self._count_early_goaway(now)
            self.close(self.explanation or "goaway")
            return []
        if self._ping_sent is not None and now - self._ping_sent > self.cfg.ping_timeout:
            return self._lost("PING unanswered", now, Loss.ABRUPT)
        starved = self._starved_since
        if starved is not None and now - starved >= self.cfg.stall_timeout:
            if self.pending and h2.carries_nothing:
                return self._starved(h2, now)
            self._starved_since = None  # the limit was raised, or the work went elsewhere
        stalled = self._ping_sent is None and now >= self._stall_check_at(now)
        if stalled and h2.carries_nothing:  # nothing received for stall_timeout and no body could be sent
            return self._starved(h2, now)
        alive = self._ping_sent is None and now - self._last_received < self.cfg.stall_timeout
        if alive and now >= self._overdue_at():
            overdue = self._give_up_overdue(h2, now)
            if overdue:
                return overdue
        if self._ping_sent is None and (now - self._last_activity >= self.cfg.ping_interval or stalled):
            h2.ping()
            self._ping_sent = now
            self._push()
        return []

    def _overdue_at(self) -> float:
        """When the oldest unanswered request will have waited stall_timeout + ping_timeout (to within the send
        marks' resolution)."""
        if not self._streams or not self._sent_marks:
            return float("inf")
        return self._sent_marks[0][1] + self.cfg.stall_timeout + self.cfg.ping_timeout

    def _give_up_overdue(self, h2: H2ClientConnection, now: float) -> Resolved:
        """Requests left unanswered for stall_timeout + ping_timeout on a connection that is otherwise alive (it
        answered our PING or other requests within stall_timeout, so the silence check never ends it): each is
        cancelled with RST_STREAM(CANCEL) and retried later, counted, as after a reset. Without this, such a
        notification would wait for its answer as long as the connection lives, and a retired connection
        would never close."""
        self._trim_marks()
        limit = now - self.cfg.stall_timeout - self.cfg.ping_timeout
        marks = self._sent_marks
        if not marks or marks[0][1] > limit:
            return []
        oldest_at = marks[0][1]
        cutoff = next((sid for sid, at in marks if at > limit), h2.next_stream_id)
        overdue = [sid for sid in self._streams if sid < cutoff]
        out: Resolved = []
        for sid in overdue:
            h2.cancel(sid)
            self._timed.pop(sid, None)
            out.append((self._streams.pop(sid), NO_ANSWER))
        self._trim_marks()
        self._push()
        self.log.warning("requests_unanswered", cancelled=len(out), waited=round(now - oldest_at, 1))
        return out

    def _starved(self, h2: H2ClientConnection, now: float) -> Resolved:
        """The gateway let no request through for stall_timeout (no stream allowed, or no flow-control window
        for any body): reconnect, paced like a failed connect, resending what waited without counting a loss
        (none of it can have been processed)."""
        limit, blocked = h2.max_concurrent_streams, h2.blocked_bytes
        if self._streams:
            self.explanation = f"starved: gateway opens no flow-control window for {blocked} request body bytes"
        else:
            self.explanation = "starved: gateway allows no stream (SETTINGS_MAX_CONCURRENT_STREAMS 0)"
        self.log.warning(
            "connection_starved",
            reason=self.explanation,
            waited=round(now - (self._starved_since or self._last_received), 1),
            max_concurrent_streams=limit,
            blocked_bytes=blocked,
            open_streams=len(self._streams),
            pending=len(self.pending),
        )
        self.pacer.failed(now)
        return self._lost(self.explanation, now, Loss.EXPLAINED)

    def _stall_check_at(self, now: float) -> float:
        """When the oldest unanswered request will have waited stall_timeout with nothing received (or a
        earlier time to look again). Under load something arrives all the time, so the walk is rare."""
        if not self._streams:
            return float("inf")
        quiet_from = self._last_received + self.cfg.stall_timeout
        if now < quiet_from:
            return quiet_from
        self._trim_marks()
        sent = self._sent_marks[0][1] if self._sent_marks else self._last_activity
        return max(sent + self.cfg.stall_timeout, quiet_from)

    def _trim_marks(self) -> None:
        """Drop send marks older than the oldest unanswered request's."""
        marks = self._sent_marks
        if not self._streams:
            marks.clear()
            return
        oldest = next(iter(self._streams))  # dicts keep insertion order and stream ids only grow
        while len(marks) > 1 and marks[1][0] <= oldest:
            marks.popleft()

    def timer_deadline(self, now: float) -> float:
        """The next PING (idle or stalled), the PING timeout, or the end of a pause; now when notifications
        that could not be encoded await their outcome."""
        if self._unsendable:
            return now
        if self._ping_sent is not None:
            return self._ping_sent + self.cfg.ping_timeout
        parked = self._parked_until if self._parked_until > now else float("inf")
        if self._starved_since is not None:
            parked = min(parked, self._starved_since + self.cfg.stall_timeout)
        return min(self._last_activity + self.cfg.ping_interval, self._stall_check_at(now), parked, self._overdue_at())

    def unanswered_count(self) -> int:
        """Streams open and not yet answered (and notifications whose outcome is not yet handed back)."""
        return len(self._streams) + len(self._unsendable)

    def take_unanswered(self) -> list[Notification]:
        """Every open stream's notification, in the order they were sent."""
        notes = [n for n, _ in self._unsendable] + [self._streams[sid] for sid in sorted(self._streams)]
        self._streams.clear()
        self._unsendable = []
        return notes

    def say_goodbye(self) -> None:
        """GOAWAY (no error) before closing."""
        if self._h2 is not None:
            self._h2.close()
            self._push()
