"""After an error response the frames that followed the rejected one are written again from the bytes kept of
the lost connection (identifiers patched in): the gateway must see exactly what encoding them afresh gives."""

from __future__ import annotations

from typing import Any

from apnsd import logs
from apnsd.config import AppConfig
from apnsd.core.jobs import JobParser, Notification
from apnsd.gateway import binary_session
from apnsd.gateway.binary_session import BinarySession
from apnsd.wire import binary
from tests.support.fake_transport import FakeNetwork, FakeTransport
from tests.support.jobs import good_tokens, job

T0 = 1_000.0


def make_session(**cfg: Any) -> tuple[BinarySession, FakeNetwork]:
    """A binary session for app "default" whose connects go to a FakeNetwork."""
    net = FakeNetwork()
    app = AppConfig(protocol="binary", confirm_delay=0.3, max_connects_per_minute=1000, standby_connections=0, **cfg)
    return BinarySession("default", app, net, logs.get("session", app="default")), net


def notes(n: int, seed: int = 1, **fields: Any) -> list[Notification]:
    """``n`` parsed binary notifications for app "default" (payloads of varied length, optional job fields)."""
    parser = JobParser({"default": ("binary", 2048, 2048)})
    return [
        parser.parse(job(t, payload={"aps": {"alert": "x" * (i % 7)}}, **fields))[0][0]
        for i, t in enumerate(good_tokens(n, seed=seed))
    ]


def expected_wire(batch: list[Notification], first_id: int) -> bytes:
    """The frames of ``batch`` encoded afresh with consecutive identifiers from ``first_id``."""
    return b"".join(
        binary.encode_frame(n.token_bytes, bytes(n.body), first_id + i, n.expiration or 0, n.priority or 10)
        for i, n in enumerate(batch)
    )


def reject(s: BinarySession, identifier: int, now: float) -> None:
    """The current connection's gateway rejects frame ``identifier`` (status 8) and closes at once."""
    t = s.transport
    assert isinstance(t, FakeTransport)
    t.feed(binary.encode_error_response(8, identifier))
    t.hang_up()
    s.step(now, True)


def test_the_resend_after_an_error_is_byte_for_byte_a_fresh_encoding():
    """Frames 6-40 rejected-after on connection 1 reach connection 2 as identifiers 1-35, exactly as encoded anew."""
    s, net = make_session()
    batch = notes(40, expiration=2_000_000_000, priority=5)
    s.submit(batch)
    s.step(T0, False)
    assert expected_wire(batch, 1) == net.current.take_wire()

    reject(s, 5, T0 + 0.001)
    s.step(T0 + 0.002, False)

    assert 2 == net.connections
    assert expected_wire(batch[5:], 1) == net.current.take_wire()


def test_kept_frames_followed_by_new_work_and_a_second_error():
    """Kept frames, then freshly encoded ones behind them, then a second rejection: every connection's bytes are
    what a fresh encoding gives."""
    s, net = make_session()
    first, later = notes(30), notes(20, seed=2)
    s.submit(first)
    s.step(T0, False)
    net.current.take_wire()
    reject(s, 10, T0 + 0.001)
    s.submit(later)
    s.step(T0 + 0.002, False)
    assert expected_wire(first[10:] + later, 1) == net.current.take_wire()

    reject(s, 25, T0 + 0.003)  # later[4]
    s.step(T0 + 0.004, False)

    assert expected_wire(later[5:], 1) == net.current.take_wire()


def test_a_notification_put_in_front_of_the_rest_of_the_resend_goes_first(monkeypatch):
    """When something else goes first midway through the resend (here a trial), it is encoded in between and every
    frame still carries its own consecutive identifier."""
    monkeypatch.setattr(binary_session, "ENCODE_AT_ONCE", 4)
    s, net = make_session()
    batch, trial = notes(20), notes(1, seed=3)[0]
    s.submit(batch)
    for i in range(5):
        s.step(T0 + i * 0.0001, False)
    net.current.take_wire()
    reject(s, 4, T0 + 0.001)  # the reconnect writes the first 4 of the resend at once
    s.pending.appendleft(trial)
    for i in range(5):
        s.step(T0 + 0.002 + i * 0.0001, False)

    assert expected_wire([*batch[4:8], trial, *batch[8:]], 1) == net.current.take_wire()


def test_only_the_latest_writes_are_kept(monkeypatch):
    """A resend reaching back past the bytes kept is encoded afresh, and correctly."""
    monkeypatch.setattr(binary_session, "KEEP_BYTES", 1)
    monkeypatch.setattr(binary_session, "ENCODE_AT_ONCE", 8)  # several writes, of which only the last is kept
    s, net = make_session()
    batch = notes(40)
    s.submit(batch)
    for i in range(5):
        s.step(T0 + i * 0.0001, False)
    assert expected_wire(batch, 1) == net.current.take_wire()

    reject(s, 2, T0 + 0.001)
    s.step(T0 + 0.002, False)
    for i in range(5):
        s.step(T0 + 0.003 + i * 0.0001, False)

    assert expected_wire(batch[2:], 1) == net.current.take_wire()


def test_the_resend_encodes_nothing_again(monkeypatch):
    """The 35 frames after the rejected one are not encoded a second time: only the first connection's 40 are."""
    encoded: list[int] = []
    real = binary.frame_parts

    def counting(*args: Any) -> Any:
        encoded.append(args[2])  # the identifier
        return real(*args)

    s, net = make_session()
    batch = notes(40)
    expected = expected_wire(batch[5:], 1)  # encoded here, before counting starts
    monkeypatch.setattr(binary, "frame_parts", counting)
    s.submit(batch)
    s.step(T0, False)
    reject(s, 5, T0 + 0.001)
    s.step(T0 + 0.002, False)

    assert expected == net.current.take_wire()
    assert list(range(1, 41)) == encoded


def test_written_frames_keep_no_payload_view_and_a_resend_past_the_kept_bytes_reads_it_again(monkeypatch):
    """The window's notifications let go of their payload views once written; a resend reaching back past the
    bytes kept encodes them from the raw jobs, byte for byte as the first time."""
    monkeypatch.setattr(binary_session, "KEEP_BYTES", 1)
    monkeypatch.setattr(binary_session, "ENCODE_AT_ONCE", 8)
    s, net = make_session()
    batch = notes(40)
    expected = expected_wire(batch[2:], 1)  # from the payload views, before anything is written
    s.submit(batch)
    for i in range(5):
        s.step(T0 + i * 0.0001, False)
    net.current.take_wire()
    held = [type(n._payload) for n in batch]

    reject(s, 2, T0 + 0.001)
    s.step(T0 + 0.002, False)
    for i in range(5):
        s.step(T0 + 0.003 + i * 0.0001, False)

    assert ([type(None)] * 40, expected) == (held, net.current.take_wire())
