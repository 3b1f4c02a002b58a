"""The HTTP/2 session under Apple's rules, socket-free: liveness PING, GOAWAY backoff, token answers."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from apnsd.core.outcomes import Kind
from apnsd.gateway.credentials import TokenSigner
from apnsd.testing.http2_mock import Http2Faults
from apnsd.wire.http2.connection import H2ClientConnection
from tests.support.gateway_pipe import PipedSession

TOKENS = [f"{i:02x}" + "ab" * 31 for i in range(1, 6)]
OPEN = Http2Faults(initial_streams=100, max_concurrent_streams=100)


def kinds(p: PipedSession) -> dict[str, tuple[Kind, str]]:
    """Each resolved notification's outcome kind and reason, by token."""
    return {n.token: (o.kind, o.reason) for n, o in p.resolved}


def test_a_stalled_connection_is_pinged_then_dropped_and_its_requests_resent():
    """With requests unanswered and nothing received for stall_timeout, a PING goes out; no ACK → resend."""
    p = PipedSession(
        Http2Faults(initial_streams=100, max_concurrent_streams=100, stall_after=1),
        stall_timeout=2.0,
        ping_timeout=3.0,
    )
    p.submit(TOKENS)
    p.run_until(1001.0)
    first = (len(p.record.received), p.session.unanswered_count(), p.session._ping_sent)
    p.run_until(1002.5)
    pinged = p.session._ping_sent
    p.run_until(1010.0)

    assert (1, 4, None) == first
    assert pinged is not None and 1002.0 <= pinged <= 1002.5
    assert 2 == len(p.pipes)
    assert dict.fromkeys(TOKENS, (Kind.DELIVERED, "")) == kinds(p)


def test_a_connection_that_keeps_answering_is_never_pinged_for_liveness(monkeypatch):
    """Under steady traffic with answers arriving, no liveness PING is sent even across many stall_timeouts."""
    pings: list[bytes] = []
    monkeypatch.setattr(H2ClientConnection, "ping", lambda self, payload=b"\0" * 8: pings.append(payload))
    p = PipedSession(OPEN, stall_timeout=1.0, ping_timeout=1.0)
    for i, token in enumerate(TOKENS):
        p.submit([token])
        p.run_until(1000.0 + 0.9 * (i + 1))

    assert ([], 1, 5) == (pings, len(p.pipes), len(p.record.received))


def test_goaway_right_after_connecting_counts_as_a_failed_connect():
    """A GOAWAY within the first seconds of a connection makes the next connect back off."""
    p = PipedSession(Http2Faults(goaway_after=1, goaway_reason="Shutdown"))
    p.submit(TOKENS[:1])
    p.run_until(1000.2)

    assert 1 == p.session.pacer.failures


def test_goaway_after_a_long_connection_does_not_back_off():
    """A GOAWAY on a connection that lasted is an ordinary goodbye: no backoff."""
    p = PipedSession(Http2Faults(goaway_after=2, goaway_reason="IdleTimeout"))
    p.submit(TOKENS[:1])
    p.run_until(1040.0, step=1.0)
    p.submit(TOKENS[1:2])
    p.run_until(1041.0)

    assert (0, {TOKENS[0]: (Kind.DELIVERED, ""), TOKENS[1]: (Kind.DELIVERED, "")}) == (
        p.session.pacer.failures,
        kinds(p),
    )


def goaway_backoffs(goaway_after: int, jobs: int) -> tuple[int, int, dict[str, tuple[Kind, str]]]:
    """Backoffs the pacer was asked for, connections opened and outcomes, when the gateway's first connection
    says a graceful GOAWAY after ``goaway_after`` answered requests."""
    tokens = [f"{i:04x}" + "cd" * 30 for i in range(jobs)]
    p = PipedSession(Http2Faults(initial_streams=100, max_concurrent_streams=100, goaway_after=goaway_after))
    failed = p.session.pacer.failed
    calls: list[float] = []
    p.session.pacer.failed = lambda now: calls.append(now) or failed(now)  # type: ignore[method-assign]
    p.submit(tokens)
    p.run_until(1003.0)
    return len(calls), len(p.pipes), kinds(p)


def test_goaway_after_a_connection_carried_many_requests_does_not_back_off():
    """A graceful GOAWAY soon after connecting, but after the gateway processed 100 requests (a gateway or proxy
    capping requests per connection), is no failed connect: no backoff, nothing lost."""
    tokens = [f"{i:04x}" + "cd" * 30 for i in range(250)]

    assert (0, 2, dict.fromkeys(tokens, (Kind.DELIVERED, ""))) == goaway_backoffs(100, 250)


def test_goaway_after_a_few_requests_soon_after_connecting_still_backs_off():
    """A gateway that says goodbye after 99 requests within seconds of connecting is churn: one backoff."""
    tokens = [f"{i:04x}" + "cd" * 30 for i in range(150)]

    assert (1, 2, dict.fromkeys(tokens, (Kind.DELIVERED, ""))) == goaway_backoffs(99, 150)


def test_too_many_provider_token_updates_parks_sends_without_spending_an_attempt():
    """TooManyProviderTokenUpdates puts the notification back and pauses sending; it is delivered after, attempts 0."""
    p = PipedSession(Http2Faults(burst_status=(429, "TooManyProviderTokenUpdates", 1), burst_after=1))
    notes = p.submit(TOKENS[:2])
    p.run_until(1000.5)
    parked = (len(p.record.received), len(p.session.pending), p.session._parked_until > 1000.5)
    p.run_until(1003.0)

    assert (2, 1, True) == parked
    assert {TOKENS[0]: (Kind.DELIVERED, ""), TOKENS[1]: (Kind.DELIVERED, "")} == kinds(p)
    assert [0, 0] == [n.attempts for n in notes]


def test_unrelated_key_id_asks_for_a_fresh_connection_and_keeps_the_notification():
    """UnrelatedKeyIdInToken puts the notification back and asks the loop for a new connection."""
    p = PipedSession(Http2Faults(burst_status=(403, "UnrelatedKeyIdInToken", 1)))
    p.submit(TOKENS[:1])
    p.run_until(1000.5)  # it is not sent again on this connection

    assert ({}, 1, True) == (kinds(p), len(p.session.pending), p.session.wants_replacement)


def test_expired_provider_token_twice_after_re_signing_asks_for_a_fresh_connection():
    """ExpiredProviderToken re-signs; refused again for a request sent after that, work moves to a new connection."""
    signer = TokenSigner(ec.generate_private_key(ec.SECP256R1()), "KEY1234567", "TEAM123456")
    p = PipedSession(
        Http2Faults(initial_streams=1, max_concurrent_streams=1, burst_status=(403, "ExpiredProviderToken", 2)),
        signer=signer,
    )
    p.submit(TOKENS[:2])
    p.steps(2)  # connect and send; read the first refusal, re-sign, send the second
    once = p.session.wants_replacement
    p.steps(1)  # read the second refusal

    assert (False, True) == (once, p.session.wants_replacement)
    assert dict.fromkeys(TOKENS[:2], (Kind.RETRY, "ExpiredProviderToken")) == kinds(p)


def test_sandbox_answers_put_apns_unique_id_on_the_notification():
    """In the development environment the answer's apns-unique-id is kept on the notification for receipts."""
    p = PipedSession(Http2Faults(environment="sandbox"), environment="sandbox")
    notes = p.submit(TOKENS[:1])
    p.run_until(1000.2)

    assert (Kind.DELIVERED, 36) == (p.resolved[0][1].kind, len(notes[0].unique_id))
