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
