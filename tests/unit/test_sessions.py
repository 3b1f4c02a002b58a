"""Session behaviour over a scripted fake transport: losses, slow start, error responses, GOAWAY, resends, rotation."""

from __future__ import annotations

from typing import Any

import h2.connection
import h2.errors
import h2.events

from apnsd import logs
from apnsd.config import AppConfig
from apnsd.core.jobs import JobParser, Notification
from apnsd.core.outcomes import DELIVERED, Kind
from apnsd.gateway.binary_session import SLOW_START, BinarySession
from apnsd.gateway.http2_session import Http2Session
from apnsd.gateway.session import MAX_LOSSES, Resolved, State
from apnsd.metrics import REGISTRY
from apnsd.wire import binary
from apnsd.wire.http2 import frames
from tests.support.fake_transport import FakeNetwork, FakeTransport
from tests.support.h2factories import S, h2_server, raw_frame
from tests.support.jobs import good_tokens, job

T0 = 1_000.0  # a monotonic clock reading to start from
LATER = 100.0  # a step far enough ahead that any reconnect backoff of the first few failures is over
CONFIRM = 0.3  # binary confirm_delay


def make_session(protocol: str, **cfg: Any) -> tuple[Any, FakeNetwork]:
    """A session of ``protocol`` for app "default" whose connects go to a FakeNetwork."""
    net = FakeNetwork()
    app = AppConfig(protocol=protocol, confirm_delay=CONFIRM, max_connects_per_minute=1000, **cfg)  # type: ignore[arg-type]
    log = logs.get("session", app="default", protocol=protocol)
    cls = Http2Session if protocol == "http2" else BinarySession
    return cls("default", app, net, log), net


def notes(n: int, protocol: str = "binary", seed: int = 1) -> list[Notification]:
    """``n`` parsed notifications for app "default"."""
    parser = JobParser({"default": (protocol, 4096, 5120)})
    return [parser.parse(job(t))[0][0] for t in good_tokens(n, seed=seed)]


def tokens_of(resolved: Resolved) -> list[str]:
    """The tokens of resolved notifications, in order."""
    return [n.token for n, _ in resolved]


def sent_identifiers(t: FakeTransport) -> list[int | None]:
    """Identifiers of the binary frames flushed on ``t`` since the last look."""
    found, _ = binary.decode_frames(t.take_wire())
    return [f.identifier for f in found]


class Gateway:
    """An h2 server (the reference implementation) answering over one FakeTransport."""

    def __init__(self, t: FakeTransport, **settings: int) -> None:
        self.t = t
        self.server: h2.connection.H2Connection = h2_server(**settings)
        self.streams: list[int] = []

    def exchange(self) -> list[h2.events.Event]:
        """Deliver the client's bytes to the server and the server's bytes back to the transport."""
        events = self.server.receive_data(self.t.take_wire())
        self.streams += [e.stream_id for e in events if isinstance(e, h2.events.RequestReceived)]
        self.send()
        return events

    def send(self) -> None:
        """Queue what the server has to say for the client's next read."""
        self.t.feed(self.server.data_to_send())

    def answer(self, sid: int, status: int = 200, reason: str = "") -> None:
        """Answer one stream, with an APNs reason body when not 200."""
        body = b'{"reason":"%s"}' % reason.encode() if reason else b""
        headers = [(":status", str(status))]
        self.server.send_headers(sid, headers, end_stream=not body)
        if body:
            self.server.send_data(sid, body, end_stream=True)
        self.send()


def h2_connected(n: int, **settings: int) -> tuple[Http2Session, FakeNetwork, Gateway, list[Notification]]:
    """An HTTP/2 session that has sent ``n`` requests to an h2 gateway (settings exchanged first)."""
    s, net = make_session("http2")
    batch = notes(n, "http2")
    s.pending.extend(batch)
    assert [] == s.step(T0, False)  # connect: preface, SETTINGS and the one request allowed before SETTINGS
    gw = Gateway(net.current, max_concurrent_streams=settings.get("max_concurrent_streams", 100))
    gw.exchange()
    s.step(T0, True)  # the server's SETTINGS lift the limit: the rest are sent
    gw.exchange()
    return s, net, gw, batch


# --- binary ------------------------------------------------------------------------------------


def test_binary_confirms_notifications_by_silence_after_they_are_written():
    """Frames are confirmed once confirm_delay passes after their bytes left, not when they were queued."""
    s, net = make_session("binary")
    batch = notes(3)
    s.pending.extend(batch)
    s.step(T0, False)
    assert T0 == s.deadline(T0)  # frames have left: the loop steps again at once, which starts their clock
    s.step(T0, False)

    assert [1, 2, 3] == sent_identifiers(net.current)
    assert [] == s.step(T0 + CONFIRM / 2, False)
    assert [(n, DELIVERED) for n in batch] == s.step(T0 + CONFIRM, False)
    assert State.OPEN == s.state


def test_binary_frames_the_gateway_has_not_acknowledged_wait_past_confirm_delay():
    """Frames still in our kernel's send queue (the gateway's TCP has not acknowledged them) are not confirmed by
    silence: their confirm_delay starts again, and a reset then resends them instead of losing them."""
    s, net = make_session("binary")
    batch = notes(4)
    s.pending.extend(batch[:2])
    s.step(T0, False)
    s.step(T0, False)
    s.pending.extend(batch[2:])
    s.step(T0 + 0.01, False)
    s.step(T0 + 0.01, False)
    t = net.current
    t.unacked_bytes = t.written - len(t.wire) // 2  # the last two frames (of four, same size) still unacknowledged

    first = s.step(T0 + CONFIRM + 0.01, False)
    held = s.step(T0 + 2 * CONFIRM, False)
    t.hang_up()
    s.step(T0 + 2 * CONFIRM + 0.01, True)

    assert ([(n, DELIVERED) for n in batch[:2]], []) == (first, held)
    assert batch[2:] == list(s.pending)  # written again on the next connection, not recorded as delivered


def test_binary_error_response_resolves_the_named_one_and_resends_the_rest_without_a_loss():
    """Status 8 for frame 3: 1 and 2 delivered, 3 unregistered, 4 and 5 resent on a new connection, no loss counted."""
    s, net = make_session("binary")
    batch = notes(5)
    s.pending.extend(batch)
    s.step(T0, False)
    first = net.current
    first.feed(binary.encode_error_response(8, 3))
    first.hang_up()

    resolved = s.step(T0 + 0.1, True)

    assert batch[:3] == [n for n, _ in resolved]
    assert [Kind.DELIVERED, Kind.DELIVERED, Kind.UNREGISTERED] == [o.kind for _, o in resolved]
    assert State.OPEN == s.state and 2 == net.connections  # reconnected at once: the gateway said why
    assert [1, 2] == sent_identifiers(net.current)  # identifiers start afresh on the new connection
    assert [0, 0] == [n.losses for n in batch[3:]]


def test_binary_abrupt_loss_counts_a_loss_and_restarts_with_a_small_window():
    """A drop without an error response: every unanswered frame counts a loss, and only SLOW_START go out next."""
    s, net = make_session("binary")
    batch = notes(SLOW_START + 44)
    s.pending.extend(batch[:10])
    s.step(T0, False)
    net.current.hang_up()

    assert [] == s.step(T0 + 0.1, True)
    assert State.DISCONNECTED == s.state  # a connection this short makes the next connect wait
    assert [1] * 10 == [n.losses for n in s.pending]

    s.pending.extend(batch[10:])
    s.step(T0 + LATER, False)
    assert SLOW_START == len(sent_identifiers(net.current))
    assert len(batch) - SLOW_START == len(s.pending)


def test_binary_slow_start_window_doubles_with_each_confirmation():
    """After an abrupt loss the cap doubles once frames are confirmed, so the backlog drains again."""
    s, net = make_session("binary")
    s.pending.extend(notes(1))
    s.step(T0, False)
    net.current.hang_up()
    s.step(T0 + 0.1, True)
    s.pending.extend(notes(4 * SLOW_START, seed=2))
    s.step(T0 + LATER, False)
    s.step(T0 + LATER, False)
    assert SLOW_START == len(sent_identifiers(net.current))

    confirmed = s.step(T0 + LATER + CONFIRM, False)

    assert SLOW_START == len(confirmed)
    assert 2 * SLOW_START == len(sent_identifiers(net.current))


def test_binary_error_response_read_after_a_failed_write_is_honoured():
    """A write fails after the gateway answered with an error: the error is still read and decides the outcome."""
    s, net = make_session("binary")
    batch = notes(5)
    s.pending.extend(batch[:3])
    s.step(T0, False)
    t = net.current
    assert [1, 2, 3] == sent_identifiers(t)
    t.feed(binary.encode_error_response(8, 2))
    t.fail_writes()
    s.pending.extend(batch[3:])

    resolved = s.step(T0 + 0.1, False)  # the write fails before the socket is seen readable

    assert [(batch[0], Kind.DELIVERED), (batch[1], Kind.UNREGISTERED)] == [(n, o.kind) for n, o in resolved]
    assert t.closed
    assert [0, 0, 0] == [n.losses for n in batch[2:]]  # explained by the error response: no loss counted


def test_a_notification_lost_with_max_losses_connections_becomes_a_retry():
    """The MAX_LOSSES-th abrupt loss a notification rides ends it as connection_lost_repeatedly, not another resend."""
    s, net = make_session("binary")
    (n,) = notes(1)
    s.pending.append(n)
    resolved: Resolved = []
    now = T0
    for _ in range(MAX_LOSSES):
        s.step(now, False)
        net.current.hang_up()
        resolved = s.step(now + 0.1, True)
        now += LATER

    assert MAX_LOSSES == net.connections
    assert [(n, Kind.RETRY, "connection_lost_repeatedly")] == [(x, o.kind, o.reason) for x, o in resolved]
    assert 0 == len(s.pending)


def test_a_connect_failure_is_remembered_and_paced():
    """A refused connect leaves the session disconnected with the cause; the next try waits for the backoff."""
    s, net = make_session("binary")
    net.refusals.append("connection refused")
    s.pending.extend(notes(1))

    s.step(T0, False)
    s.step(T0 + 0.01, False)  # within the backoff: no second attempt

    assert State.DISCONNECTED == s.state
    assert "cannot reach fake:443: connection refused" == s.last_connect_error
    assert 1 == len(net.transports)
    assert s.deadline(T0 + 0.01) > T0 + 0.01


# --- HTTP/2 ------------------------------------------------------------------------------------


def test_http2_answers_become_outcomes():
    """200 is delivered, 410 Unregistered is unregistered, each on its stream."""
    s, _, gw, batch = h2_connected(2)
    assert [1, 3] == gw.streams
    gw.answer(1)
    gw.answer(3, 410, "Unregistered")

    resolved = s.step(T0 + 0.1, True)

    assert [(batch[0], Kind.DELIVERED), (batch[1], Kind.UNREGISTERED)] == [(n, o.kind) for n, o in resolved]
    assert 0 == s.unanswered_count()


def test_http2_goaway_resends_the_streams_above_last_stream_id_and_awaits_the_others():
    """GOAWAY with last_stream_id 3: stream 5 goes back to pending; 1 and 3 are still answered; then a clean close."""
    s, net, gw, batch = h2_connected(3)
    gw.answer(1)
    net.current.feed(frames.goaway_frame(3, 0, b'{"reason":"Shutdown"}'))  # the h2 server could not answer after it

    resolved = s.step(T0 + 0.1, True)
    assert [batch[0]] == [n for n, _ in resolved]
    assert [batch[2]] == list(s.pending) and 0 == batch[2].losses
    assert 1 == s.unanswered_count()

    gw.answer(3)
    resolved = s.step(T0 + 0.2, True)
    assert [batch[1]] == [n for n, _ in resolved]
    assert [h2.events.ConnectionTerminated] == [type(e) for e in gw.exchange()]  # our GOAWAY after the last answer
    assert net.transports[0].closed
    assert (1, 1) == (net.connections, s.pacer.failures)  # a GOAWAY right after connecting counts as a failed connect
    s.step(T0 + LATER, False)
    assert 2 == net.connections  # and the resend goes out on a fresh connection, after the backoff


def test_http2_goaway_naming_no_stream_resends_everything_without_a_loss():
    """GOAWAY with last_stream_id 0: nothing was processed, so every open stream is sent again, losses untouched."""
    s, net, gw, batch = h2_connected(3)
    gw.server.close_connection(error_code=0, last_stream_id=0)
    gw.send()

    assert [] == s.step(T0 + 0.1, True)
    s.step(T0 + LATER, False)  # after the backoff a GOAWAY this soon after connecting earns

    assert 2 == net.connections
    assert batch == [*s.take_unanswered(), *s.pending]  # the first one already resent, before SETTINGS
    assert [0, 0, 0] == [n.losses for n in batch]


def test_http2_goaway_without_last_stream_id_is_a_protocol_error_that_resends_without_a_loss():
    """A GOAWAY frame too short to hold last_stream_id loses the connection; its streams go back, no loss counted."""
    s, net, _, batch = h2_connected(2)
    net.current.feed(raw_frame(frames.GOAWAY, 0, 0, b"\0\0\0"))

    assert [] == s.step(T0 + 0.1, True)

    assert net.transports[0].closed
    assert [0, 0] == [n.losses for n in batch]
    assert 2 == net.connections


def test_http2_protocol_error_tells_the_gateway_with_a_goaway_before_closing():
    """On a malformed frame from the gateway (a GOAWAY too short), our GOAWAY FRAME_SIZE_ERROR is written first."""
    s, net, _, _ = h2_connected(1)
    net.current.feed(raw_frame(frames.GOAWAY, 0, 0, b"\0\0\0"))

    s.step(T0 + 0.1, True)

    wire, pos, sent = bytes(net.transports[0].wire), 0, []  # written since the gateway last read: frame by frame
    while pos + 9 <= len(wire):
        length, ftype = int.from_bytes(wire[pos : pos + 3], "big"), wire[pos + 3]
        sent.append((ftype, wire[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    goaways = [int.from_bytes(payload[4:8], "big") for ftype, payload in sent if ftype == frames.GOAWAY]
    assert [frames.FRAME_SIZE_ERROR] == goaways


def test_http2_refused_stream_is_sent_again_on_the_same_connection():
    """RST_STREAM REFUSED_STREAM: never processed, so the request goes out again at once, no attempt counted."""
    s, net, gw, batch = h2_connected(2)
    gw.server.reset_stream(3, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
    gw.answer(1)

    resolved = s.step(T0 + 0.1, True)
    gw.exchange()

    assert [(batch[0], DELIVERED)] == resolved
    assert [1, 3, 5] == gw.streams  # the refused one again, as stream 5
    assert 1 == net.connections and 0 == batch[1].attempts


def test_http2_other_stream_reset_is_a_retry():
    """RST_STREAM with any other code: the request may have been processed, so it is a retry with that code."""
    s, _, gw, batch = h2_connected(1)
    gw.server.reset_stream(1, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)
    gw.send()

    resolved = s.step(T0 + 0.1, True)

    assert [(batch[0], Kind.RETRY, "stream_reset_2")] == [(n, o.kind, o.reason) for n, o in resolved]


def test_http2_unanswered_ping_loses_the_connection_abruptly():
    """An idle connection is PINGed; no answer within ping_timeout: it is dropped, its open streams count a loss."""
    s, net, gw, batch = h2_connected(1)
    ping_at = T0 + s.cfg.ping_interval
    s.step(ping_at, False)
    events = gw.server.receive_data(net.current.take_wire())  # the gateway sees the PING and never answers
    assert [h2.events.PingReceived] == [type(e) for e in events]

    assert [] == s.step(ping_at + s.cfg.ping_timeout / 2, False)
    assert State.OPEN == s.state
    s.step(ping_at + s.cfg.ping_timeout + 0.1, False)

    assert net.transports[0].closed and b"" == net.transports[0].take_wire()  # dropped, no GOAWAY
    assert [1] == [n.losses for n in batch]
    assert 2 == net.connections


def test_http2_answered_ping_keeps_the_connection():
    """A PING acknowledged in time keeps the connection open past ping_timeout."""
    s, net, gw, _ = h2_connected(1)
    ping_at = T0 + s.cfg.ping_interval
    s.step(ping_at, False)
    gw.exchange()
    s.step(ping_at + 1, True)

    s.step(ping_at + s.cfg.ping_timeout + 1, False)

    assert State.OPEN == s.state and 1 == net.connections


def test_http2_request_left_unanswered_on_a_live_connection_is_cancelled_and_retried():
    """A request the gateway leaves unanswered while it answers the others and our PING is cancelled with
    RST_STREAM(CANCEL) once it has waited stall_timeout + ping_timeout, and retried (counted); the connection stays."""
    s, net, gw, batch = h2_connected(3)
    gw.answer(1)
    gw.answer(5)
    assert [batch[0], batch[2]] == [n for n, _ in s.step(T0 + 0.1, True)]
    for quiet in (T0 + 0.1 + s.cfg.stall_timeout, T0 + 0.2 + 2 * s.cfg.stall_timeout):
        s.step(quiet, False)  # nothing received for stall_timeout: a PING, which the gateway answers
        gw.exchange()
        assert [] == s.step(quiet + 0.1, True)
    overdue_at = T0 + s.cfg.stall_timeout + s.cfg.ping_timeout

    resolved = s.step(overdue_at, False)

    assert [(batch[1], Kind.RETRY, "no_answer")] == [(n, o.kind, o.reason) for n, o in resolved]
    resets = [e for e in gw.exchange() if isinstance(e, h2.events.StreamReset)]
    assert [(3, frames.CANCEL)] == [(e.stream_id, e.error_code) for e in resets]
    assert (State.OPEN, 1, 0) == (s.state, net.connections, s.unanswered_count())


def test_http2_goaway_debug_data_never_becomes_a_metric_label():
    """A GOAWAY's debug data (the gateway's free text) is counted under cause "goaway", not as a label of its own."""
    s, _, gw, _ = h2_connected(1)
    gw.answer(1)
    s.step(T0 + 0.1, True)
    before = REGISTRY.get_sample_value("apnsd_disconnects_total", {"app": "default", "cause": "goaway"}) or 0.0
    gw.server.close_connection(additional_data=b"unique-debug-data-8431")
    gw.send()

    s.step(T0 + 0.2, True)

    causes = {m.labels["cause"] for f in REGISTRY.collect() for m in f.samples if f.name == "apnsd_disconnects"}
    after = REGISTRY.get_sample_value("apnsd_disconnects_total", {"app": "default", "cause": "goaway"})
    assert (State.DISCONNECTED, before + 1, False) == (s.state, after, any("unique" in c for c in causes))


# --- rotation ----------------------------------------------------------------------------------


def test_binary_rotation_asks_for_a_replacement_then_drains_and_closes():
    """At reconnect_interval it asks to be replaced; retired, it writes nothing new and closes once all is confirmed."""
    s, net = make_session("binary", reconnect_interval=600.0)
    first = notes(3)
    s.pending.append(first[0])
    s.step(T0, False)
    s.step(T0, False)
    s.pending.append(first[1])
    s.step(T0 + 599.9, False)
    s.step(T0 + 599.9, False)
    assert not s.wants_replacement
    s.step(T0 + 600.0, False)
    assert s.wants_replacement and [1, 2] == sent_identifiers(net.current)

    new = s.clone()
    s.retire()
    s.pending.append(first[2])
    s.step(T0 + 600.1, False)
    assert State.DRAINING == s.state and [] == sent_identifiers(net.current)

    resolved = s.step(T0 + 600.0 + CONFIRM, False)

    assert [(first[1], DELIVERED)] == resolved
    assert State.DISCONNECTED == s.state and net.transports[0].closed
    assert [first[2]] == list(s.pending)  # left for the loop to hand to the replacement
    assert new.pacer is s.pacer and State.DISCONNECTED == new.state


def test_http2_retired_session_closes_with_goaway_once_its_streams_are_answered():
    """A retired HTTP/2 session sends no new request and closes with GOAWAY after the last answer."""
    s, net, gw, _ = h2_connected(2)
    s.retire()
    s.pending.extend(notes(1, "http2", seed=3))
    gw.answer(1)
    s.step(T0 + 0.1, True)
    gw.exchange()
    assert [1, 3] == gw.streams and State.DRAINING == s.state

    gw.answer(3)
    s.step(T0 + 0.2, True)
    events = gw.exchange()

    assert State.DISCONNECTED == s.state and net.transports[0].closed
    assert [h2.events.ConnectionTerminated] == [type(e) for e in events]
    assert 1 == len(s.pending)  # left for the loop to hand to the replacement


# --- a gateway that lets nothing through -------------------------------------------------------


class Recorder:
    """A logger that keeps (level, event, fields) of what a session logs."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.events.append((level, event, kw))


def starved_session(**settings: int) -> tuple[Http2Session, FakeNetwork, Gateway, list[Notification], Recorder]:
    """An HTTP/2 session with 4 notifications on an h2 gateway that answers the one sent before its SETTINGS,
    then applies ``settings``; returns the three notifications still waiting."""
    net = FakeNetwork()
    rec = Recorder()
    s = Http2Session("default", AppConfig(protocol="http2", max_connects_per_minute=1000), net, rec)
    first, *batch = notes(4, "http2")
    s.pending.extend([first, *batch])
    s.step(T0, False)  # connect: preface, SETTINGS and the one request allowed before the gateway's SETTINGS
    gw = Gateway(net.current, max_concurrent_streams=1)
    gw.exchange()
    gw.server.update_settings({S[name.upper()]: value for name, value in settings.items()})
    gw.answer(1)
    assert [(first, DELIVERED)] == s.step(T0, True)
    gw.exchange()
    s.step(T0 + 0.1, True)
    return s, net, gw, batch, rec


def starved_events(rec: Recorder) -> list[dict[str, Any]]:
    """The fields of each connection_starved warning."""
    return [kw for level, event, kw in rec.events if (level, event) == ("warning", "connection_starved")]


def test_http2_gateway_allowing_no_stream_is_left_after_stall_timeout_paced_and_logged():
    """SETTINGS_MAX_CONCURRENT_STREAMS 0 for stall_timeout: a warning, a reconnect after a backoff, no loss counted."""
    s, net, _, batch, rec = starved_session(max_concurrent_streams=0)
    assert (State.OPEN, 1, 3) == (s.state, net.connections, len(s.pending))
    assert s.timer_deadline(T0 + 0.1) <= T0 + 0.1 + s.cfg.stall_timeout

    held = s.step(T0 + s.cfg.stall_timeout / 2, False)
    assert ([], State.OPEN) == (held, s.state)
    assert [] == s.step(T0 + 0.1 + s.cfg.stall_timeout, False)

    starved = starved_events(rec)
    assert (True, 1, 1) == (net.transports[0].closed, len(starved), net.connections)  # no reconnect yet: paced
    assert (0, 3, batch) == (starved[0]["max_concurrent_streams"], starved[0]["pending"], list(s.pending))
    assert [0, 0, 0] == [n.losses for n in batch]
    s.step(T0 + LATER, False)
    assert 2 == net.connections


def test_http2_gateway_opening_no_window_is_left_after_stall_timeout_resending_without_a_loss():
    """An initial window of 0: the request bodies wait for stall_timeout, then a reconnect resends them, uncounted."""
    s, net, _, batch, rec = starved_session(max_concurrent_streams=10, initial_window_size=0)
    assert (3, 0) == (s.unanswered_count(), len(s.pending))

    s.step(T0 + 0.1 + s.cfg.stall_timeout, False)

    starved = starved_events(rec)
    assert (True, 1, 3) == (net.transports[0].closed, len(starved), starved[0]["open_streams"])
    assert (batch, [0, 0, 0]) == (list(s.pending), [n.losses for n in batch])
    s.step(T0 + LATER, False)
    assert 2 == net.connections


def test_http2_gateway_raising_a_zero_stream_limit_in_time_keeps_the_connection():
    """A limit of 0 raised before stall_timeout: the notifications are sent on the same connection."""
    s, net, gw, _, rec = starved_session(max_concurrent_streams=0)
    gw.server.update_settings({S["MAX_CONCURRENT_STREAMS"]: 10})
    gw.send()
    s.step(T0 + 1, True)
    gw.exchange()

    s.step(T0 + s.cfg.stall_timeout + 0.2, False)

    assert (State.OPEN, 1, 0, 3) == (s.state, net.connections, len(s.pending), s.unanswered_count())
    assert [] == starved_events(rec)
