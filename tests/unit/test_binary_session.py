"""The binary session's resend logic over a socket-free fake transport: which notifications an error names,
confirms and sends again, whatever the transport's count of written bytes says."""

from __future__ import annotations

import structlog

from apnsd.config import AppConfig
from apnsd.core.jobs import JobParser, Notification
from apnsd.core.outcomes import Kind
from apnsd.gateway.binary_session import BinarySession
from apnsd.gateway.session import State
from apnsd.wire import binary
from tests.support.fake_transport import FakeTransport


def notes(count: int) -> list[Notification]:
    """``count`` binary notifications with distinct tokens."""
    parser = JobParser({"default": ("binary", 2048, 2048)})
    out: list[Notification] = []
    for i in range(count):
        good, _ = parser.parse(b'{"token":"%064x","payload":{"aps":{}}}' % (i + 1))
        out += good
    return out


def session_with(count: int, written_frames: int) -> tuple[BinarySession, list[Notification]]:
    """A connected session that sent ``count`` notifications, of which the transport counts ``written_frames``."""
    s = BinarySession("default", AppConfig(protocol="binary"), FakeTransport, structlog.get_logger())
    t = FakeTransport()
    t.connect()
    s.transport = t
    s.state = State.OPEN  # what Session._try_connect sets once a transport connected
    s.on_connected(0.0)
    sent = notes(count)
    s.submit(sent)
    s.send_pending(0.0)
    frame_size = t.unsent // count
    t.limit_writes(frame_size * written_frames)  # the socket takes only these frames' bytes
    t.flush()
    return s, sent


def test_error_naming_a_frame_beyond_the_written_count_resends_only_what_followed_it():
    """The gateway names frame 6 while the transport counts only 2 frames written (it counts per chunk): the
    five before it are delivered, the sixth rejected, and only the four after it remain to be sent again."""
    s, sent = session_with(10, written_frames=2)

    out = s.on_bytes(binary.encode_error_response(8, 6), 1.0)

    expected = [(n.token, Kind.DELIVERED) for n in sent[:5]] + [(sent[5].token, Kind.UNREGISTERED)]
    assert expected == [(n.token, o.kind) for n, o in out]
    assert [n.token for n in sent[6:]] == [n.token for n in s.take_unanswered()]


def written_in_two_steps(first: int, second: int) -> tuple[BinarySession, list[Notification]]:
    """A session whose ``first`` frames finished writing at 0.0 and the ``second`` after them at 0.1."""
    s, sent = session_with(first + second, written_frames=first)
    s.on_timer(0.0)  # starts the silence clock of the frames written so far
    t = s.transport
    assert isinstance(t, FakeTransport)
    t.limit_writes(None)
    t.flush()
    s.on_timer(0.1)
    return s, sent


def test_the_window_holds_each_notification_itself_and_one_write_time_per_write():
    """Awaiting silence, the window keeps the notifications themselves (no per-frame tuple, number or copy)
    and one write time per write, not one per frame."""
    s, sent = written_in_two_steps(3, 4)

    assert [id(n) for n in sent] == [id(n) for n in s._window]
    assert [(3, 0.0), (4, 0.1)] == [(r.count, r.at) for r in s._runs]


def test_silence_confirms_each_write_after_its_own_confirm_delay():
    """Frames written at 0.0 are confirmed at 0.3, those written at 0.1 only at 0.4."""
    s, sent = written_in_two_steps(3, 4)

    first = s.on_timer(0.3)
    second = s.on_timer(0.4)

    assert [n.token for n in sent[:3]] == [n.token for n, _ in first]
    assert [n.token for n in sent[3:]] == [n.token for n, _ in second]
    assert 0 == s.unanswered_count()


def test_an_error_after_some_confirmations_names_the_right_frame():
    """After the first write's three frames are confirmed, an error naming frame 5 rejects the fifth sent."""
    s, sent = written_in_two_steps(3, 4)
    s.on_timer(0.3)

    out = s.on_bytes(binary.encode_error_response(8, 5), 0.35)

    assert [(sent[3].token, Kind.DELIVERED), (sent[4].token, Kind.UNREGISTERED)] == [(n.token, o.kind) for n, o in out]
    assert [n.token for n in sent[5:]] == [n.token for n in s.take_unanswered()]


def test_identifiers_wrap_around_at_two_to_the_32():
    """Frames numbered 2³²-2, 2³²-1, 0, 1: an error naming 1 rejects the fourth and delivers the three before."""
    s = BinarySession("default", AppConfig(protocol="binary"), FakeTransport, structlog.get_logger())
    t = FakeTransport()
    t.connect()
    s.transport, s.state = t, State.OPEN
    s.on_connected(0.0)
    s._next_id = (1 << 32) - 2
    sent = notes(6)
    s.submit(sent)
    s.send_pending(0.0)
    t.flush()

    out = s.on_bytes(binary.encode_error_response(8, 1), 0.1)

    assert [Kind.DELIVERED] * 3 + [Kind.UNREGISTERED] == [o.kind for _, o in out]
    assert [n.token for n in sent[:4]] == [n.token for n, _ in out]
    assert [n.token for n in sent[4:]] == [n.token for n in s.take_unanswered()]


def test_an_answer_that_is_not_an_error_response_loses_the_connection_and_sends_everything_again():
    """Six bytes that are not command 8 (a gateway speaking something else) end the connection like an abrupt loss:
    no exception out of step(), every unconfirmed notification goes back to be sent again on a new connection."""
    s, sent = session_with(3, written_frames=3)
    t = s.transport
    assert isinstance(t, FakeTransport)
    t.feed(b"\x09\x08\x00\x00\x00\x01")

    out = s.step(1.0, True)

    assert ([], None, True) == (out, s.transport, t.closed)
    assert ([n.token for n in sent], [1, 1, 1]) == ([n.token for n in s.pending], [n.losses for n in s.pending])


def test_status_0_no_errors_names_a_delivered_notification_and_the_rest_is_sent_again():
    """Status 0 (No errors encountered) names a notification the gateway accepted, as status 10 (Shutdown) does:
    it and those before it are delivered, nothing is dead-lettered, and only those after it are sent again."""
    s, sent = session_with(10, written_frames=10)

    out = s.on_bytes(binary.encode_error_response(0, 6), 1.0)

    assert [(n.token, Kind.DELIVERED) for n in sent[:6]] == [(n.token, o.kind) for n, o in out]
    assert [n.token for n in sent[6:]] == [n.token for n in s.take_unanswered()]
