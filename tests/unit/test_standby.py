"""Binary standby connections over a socket-free fake network: when one is opened, how it takes over after an error
response, what the pacer allows, and that it is replaced or closed without touching a notification."""

from __future__ import annotations

from typing import Any

from apnsd import logs
from apnsd.config import AppConfig
from apnsd.core.jobs import JobParser, Notification
from apnsd.core.outcomes import Kind
from apnsd.gateway.binary_session import BinarySession
from apnsd.gateway.session import SHORT_LIVED, Resolved, State
from apnsd.wire import binary
from tests.support.fake_transport import FakeNetwork, FakeTransport
from tests.support.jobs import good_tokens, job

T0 = 1_000.0
CONFIRM = 0.3


def make_session(**cfg: Any) -> tuple[BinarySession, FakeNetwork]:
    """A binary session for app "default" whose connects go to a FakeNetwork; one standby unless a test asks for
    another number (the default is 2), since most cases count the connections one standby makes."""
    net = FakeNetwork()
    cfg.setdefault("max_connects_per_minute", 1000)
    cfg.setdefault("standby_connections", 1)
    app = AppConfig(protocol="binary", confirm_delay=CONFIRM, **cfg)
    return BinarySession("default", app, net, logs.get("session", app="default")), net


def notes(n: int, seed: int = 1) -> list[Notification]:
    """``n`` parsed binary notifications for app "default"."""
    parser = JobParser({"default": ("binary", 2048, 2048)})
    return [parser.parse(job(t))[0][0] for t in good_tokens(n, seed=seed)]


def tokens_on(t: FakeTransport) -> list[str]:
    """Tokens of the frames flushed on ``t`` since the last look."""
    frames, _ = binary.decode_frames(t.take_wire())
    return [f.token.hex() for f in frames]


def reject(s: BinarySession, identifier: int, now: float) -> Resolved:
    """The current connection's gateway rejects frame ``identifier`` (status 8) and closes at once."""
    t = s.transport
    assert isinstance(t, FakeTransport)
    t.feed(binary.encode_error_response(8, identifier))
    t.hang_up()
    return s.step(now, True)


def warmed_up(n: int = 40, **cfg: Any) -> tuple[BinarySession, FakeNetwork, list[Notification], Resolved]:
    """A session whose first two connections ended on an error response after delivering: errors are frequent."""
    s, net = make_session(**cfg)
    batch = notes(n)
    s.submit(batch)
    s.step(T0, False)
    resolved = reject(s, 3, T0 + 0.001)  # 2 delivered, 1 rejected; the rest resent on connection 2
    resolved += reject(s, 3, T0 + 0.002)  # the same again; now a standby is wanted
    return s, net, batch, resolved


def test_no_standby_is_opened_after_a_single_error_response():
    """One error response ends one connection: the reconnect is immediate and no extra connection is opened."""
    s, net = make_session()
    s.submit(notes(10))
    s.step(T0, False)

    reject(s, 3, T0 + 0.001)

    assert (2, []) == (net.connections, s.standbys)


def test_a_standby_is_kept_while_connections_keep_ending_on_error_responses():
    """After two connections in a row ended young on an error response after delivering, one more is kept ready."""
    s, net, _, _ = warmed_up()

    assert 4 == net.connections  # two that ended, the current one, the standby
    assert [net.transports[3]] == [t for t, _ in s.standbys]
    assert s.transport is net.transports[2]


def test_the_standby_takes_over_after_an_error_response_and_nothing_is_sent_twice():
    """The resend after an error goes out on the standby at once; every notification ends with one outcome."""
    s, net, batch, resolved = warmed_up()
    standby = net.transports[3]
    assert [] == tokens_on(standby)  # nothing is written on a standby while it waits
    current = s.transport
    assert isinstance(current, FakeTransport)
    sent_before = tokens_on(current)

    resolved += reject(s, 5, T0 + 0.003)

    assert s.transport is standby and State.OPEN == s.state
    resent = tokens_on(standby)
    assert sent_before[5:] == resent[: len(sent_before) - 5]  # what followed the rejected one, first
    assert 5 == net.connections and 1 == len(s.standbys)  # a fresh standby replaces it
    s.step(T0 + 0.004, False)  # the transport has written the resend: its silence starts
    resolved += s.step(T0 + 1.0, False)  # and confirms it
    outcomes = {n.token: o.kind for n, o in resolved}
    assert len(batch) == len(resolved) == len(outcomes)  # no duplicates, nothing lost
    assert 3 == sum(1 for kind in outcomes.values() if kind is Kind.UNREGISTERED)
    assert [0] * len(batch) == [n.losses for n in batch]


def test_standby_connections_zero_turns_it_off():
    """With standby_connections = 0 a busy session never opens a second connection."""
    s, net, _, _ = warmed_up(standby_connections=0)

    assert (3, []) == (net.connections, s.standbys)


def test_two_standbys_are_kept_when_configured():
    """standby_connections = 2 keeps two ready connections beside the current one."""
    s, net, _, _ = warmed_up(standby_connections=2)

    assert (5, 2) == (net.connections, len(s.standbys))


def test_a_gateway_refusing_every_connect_sees_at_most_the_cap_standbys_included():
    """Once the gateway refuses TLS, standby and reconnect attempts together stay under max_connects_per_minute."""
    s, net, _, _ = warmed_up(max_connects_per_minute=6)
    s.submit(notes(200, seed=2))
    net.refusals.extend(["TLS handshake failed: alert unknown ca"] * 1000)
    before = len(net.transports)
    now = T0 + 61.0  # the warm-up's attempts have left the minute
    reject(s, 1, now)

    while now < T0 + 121.0:
        now += 0.05
        if s.transport is not None:
            reject(s, 1, now)  # any connection that gets through ends on an error at once
        else:
            s.step(now, False)

    assert len(net.transports) - before <= 6
    assert s.transport is None and [] == s.standbys
    assert s.pacer.failures >= 1


def test_an_old_standby_the_gateway_closes_is_replaced_without_touching_a_notification():
    """A standby closed after SHORT_LIVED is simply replaced (paced), no backoff and no loss."""
    s, net, batch, _ = warmed_up()
    standby = net.transports[3]
    later = T0 + SHORT_LIVED + 1.0
    s.step(later, False)  # the silence confirms the window: the session would be idle
    s.submit(notes(20, seed=3))  # busy again
    standby.hang_up()

    s.step(later + 0.001, True)

    assert 5 == net.connections
    assert [net.transports[4]] == [t for t, _ in s.standbys]
    assert 0 == s.pacer.failures
    assert [0] * len(batch) == [n.losses for n in batch]


def test_a_young_standby_the_gateway_drops_backs_off():
    """A standby dropped soon after it connected counts as churn: no new standby until the backoff is over."""
    s, net, _, _ = warmed_up()
    net.transports[3].hang_up()

    s.step(T0 + 0.003, True)

    assert (4, []) == (net.connections, s.standbys)
    assert 1 == s.pacer.failures


def test_closing_the_session_closes_its_standby():
    """Stop (and rotation, suspension) closes the standby with the current connection; nothing is left to watch."""
    s, net, _, _ = warmed_up()
    standby = net.transports[3]

    s.close("shutdown")

    assert standby.closed and [] == s.standbys and [] == s.watched()


def test_retiring_for_rotation_closes_the_standby_at_once():
    """A session replaced by rotation drains its current connection but closes its standby immediately."""
    s, net, _, _ = warmed_up()
    standby = net.transports[3]

    s.retire()

    assert standby.closed and [] == s.standbys and State.DRAINING == s.state


def test_a_connect_in_progress_is_driven_by_readiness_and_becomes_the_standby():
    """A handshake that does not finish at once waits for its socket; once done it joins the standbys."""
    s, net = make_session()
    s.submit(notes(40))
    s.step(T0, False)
    reject(s, 3, T0 + 0.001)
    net.slow_handshakes = True
    reject(s, 3, T0 + 0.002)  # the reconnect waits for its handshake
    assert (None, [], 1) == (s.transport, s.standbys, len(s.watched()))

    net.transports[2].handshake_done = True
    s.step(T0 + 0.003, True)
    assert s.transport is net.transports[2] and [] == s.standbys  # the standby's handshake has begun
    net.transports[3].handshake_done = True
    s.step(T0 + 0.004, True)

    assert [net.transports[3]] == [t for t, _ in s.standbys]
