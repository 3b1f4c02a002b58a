"""The APNs gateway emulator, driven by h2's reference client and by our own client."""

from __future__ import annotations

import re
from dataclasses import replace

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from apnsd.gateway.credentials import TokenSigner
from apnsd.testing.http2_mock import APPLE_REASONS, FaultState, Http2Faults
from apnsd.testing.record import Received
from apnsd.wire.http2.connection import GoAwayReceived, RequestTemplate, ResponseReceived, SettingsChanged
from apnsd.wire.http2.frames import GOAWAY, PREFACE, PROTOCOL_ERROR, WINDOW_UPDATE
from tests.support.h2factories import (
    APNS_ID,
    NOW,
    PAYLOAD,
    TOKEN,
    TOPIC,
    Answer,
    apns_id,
    frames_in,
    gateway,
    our_client,
    raw_frame,
    ref_client,
    request_headers,
)

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
OPEN = Http2Faults(initial_streams=100, max_concurrent_streams=100)


def ask(faults: Http2Faults, headers: list[tuple[str, str]], body: bytes = PAYLOAD) -> Answer:
    """One request from h2's client to a fresh gateway; its answer."""
    ref = ref_client(gateway(faults))
    sid = ref.request(headers, body)
    ref.pump()
    return ref.answers()[sid]


def reason_of(answer: Answer) -> tuple[int, str]:
    """Status and the reason of the JSON error body."""
    return answer.status, msgspec.json.decode(answer.body)["reason"] if answer.body else ""


def test_preface_advertises_one_stream() -> None:
    """The gateway starts with SETTINGS_MAX_CONCURRENT_STREAMS = initial_streams, as APNs does."""
    ours = our_client(gateway())
    assert [SettingsChanged(1, 65_535, 16_384)] == ours.events


def test_accepted_request_gets_200_apns_id_and_no_body() -> None:
    """A valid request is answered 200 with its apns-id and no body, and recorded with its headers."""
    gw = gateway()
    headers = request_headers(extra=(("apns-id", APNS_ID),))
    ref = ref_client(gw)
    sid = ref.request(headers)
    ref.pump()
    assert ({sid: Answer(200, {"apns-id": APNS_ID})}, [Received(TOKEN, PAYLOAD, APNS_ID, 200, "", tuple(headers))]) == (
        ref.answers(),
        gw.record.received,
    )


def test_apns_id_generated_when_absent() -> None:
    """Without apns-id the gateway answers with a fresh canonical UUID."""
    answer = ask(Http2Faults(), request_headers())
    assert (200, True) == (answer.status, bool(UUID.fullmatch(answer.headers["apns-id"])))


LONG = "c" * 65
CERT_TOPICS = Http2Faults(allowed_topics=(TOPIC, TOPIC + ".voip"))
ONE_TOPIC = Http2Faults(allowed_topics=(TOPIC,))


@pytest.mark.parametrize(
    ("faults", "headers", "body", "expected"),
    [
        (Http2Faults(), request_headers(method="PUT"), PAYLOAD, (405, "MethodNotAllowed")),
        (Http2Faults(), request_headers(path=f"/2/device/{TOKEN}"), PAYLOAD, (404, "BadPath")),
        (Http2Faults(), request_headers(path="/3/device/"), PAYLOAD, (400, "MissingDeviceToken")),
        (Http2Faults(), request_headers("zz" * 32), PAYLOAD, (400, "BadDeviceToken")),
        (Http2Faults(), request_headers("ab" * 31), PAYLOAD, (400, "BadDeviceToken")),
        (Http2Faults(), request_headers("abc" * 21), PAYLOAD, (400, "BadDeviceToken")),
        (Http2Faults(), request_headers(extra=(("apns-topic", TOPIC),)), PAYLOAD, (400, "DuplicateHeaders")),
        (Http2Faults(), request_headers(extra=(("apns-push-type", "banner"),)), PAYLOAD, (400, "InvalidPushType")),
        (Http2Faults(), request_headers(extra=(("apns-push-type", "voip"),)), PAYLOAD, (400, "BadTopic")),
        (Http2Faults(), request_headers(topic=""), PAYLOAD, (400, "BadTopic")),
        (ONE_TOPIC, request_headers(topic="com.other.app"), PAYLOAD, (400, "TopicDisallowed")),
        (CERT_TOPICS, request_headers(topic=None), PAYLOAD, (400, "MissingTopic")),
        (ONE_TOPIC, request_headers(topic=None, extra=(("apns-push-type", "voip"),)), PAYLOAD, (400, "BadTopic")),
        (Http2Faults(), request_headers(extra=(("apns-priority", "7"),)), PAYLOAD, (400, "BadPriority")),
        (
            Http2Faults(),
            request_headers(extra=(("apns-push-type", "background"), ("apns-priority", "10"))),
            PAYLOAD,
            (400, "BadPriority"),
        ),
        (Http2Faults(), request_headers(extra=(("apns-expiration", "soon"),)), PAYLOAD, (400, "BadExpirationDate")),
        (Http2Faults(), request_headers(extra=(("apns-collapse-id", LONG),)), PAYLOAD, (400, "BadCollapseId")),
        (Http2Faults(), request_headers(extra=(("apns-id", APNS_ID.upper()),)), PAYLOAD, (400, "BadMessageId")),
        (Http2Faults(), request_headers(), b"", (400, "PayloadEmpty")),
        (Http2Faults(), request_headers(), b'{"a":"' + b"x" * 4090 + b'"}', (413, "PayloadTooLarge")),
        (Http2Faults(), request_headers(), b"not json", (400, "BadPayload")),
        (Http2Faults(), request_headers(), b"[1,2]", (400, "BadPayload")),
    ],
)
def test_validation_reasons(
    faults: Http2Faults, headers: list[tuple[str, str]], body: bytes, expected: tuple[int, str]
) -> None:
    """Each malformed request gets APNs's status and JSON reason."""
    assert expected == reason_of(ask(faults, headers, body))


@pytest.mark.parametrize(
    ("faults", "headers", "body"),
    [
        (
            Http2Faults(),
            request_headers(topic=TOPIC + ".voip", extra=(("apns-push-type", "voip"),)),
            b'{"a":"' + b"x" * 5110 + b'"}',
        ),
        (ONE_TOPIC, request_headers(topic=None), PAYLOAD),
        (CERT_TOPICS, request_headers(topic=TOPIC + ".voip", extra=(("apns-push-type", "voip"),)), PAYLOAD),
        (
            Http2Faults(),
            request_headers(
                extra=(
                    ("apns-push-type", "background"),
                    ("apns-priority", "5"),
                    ("apns-expiration", "0"),
                    ("apns-collapse-id", "c" * 64),
                )
            ),
            PAYLOAD,
        ),
    ],
)
def test_valid_edge_cases_accepted(faults: Http2Faults, headers: list[tuple[str, str]], body: bytes) -> None:
    """A 5,120-byte VoIP payload, a single-topic default, a 64-byte collapse id are all accepted."""
    assert 200 == ask(faults, headers, body).status


def test_rejected_prefix_410_carries_timestamp() -> None:
    """A token matching a 410 prefix gets Unregistered with the time it was last valid (unregistered_age ago), in ms."""
    faults = Http2Faults(reject_prefixes=(("dead", 410, "Unregistered"),), unregistered_age=3600.0)
    answer = ask(faults, request_headers("dead" + "ab" * 30))
    assert {"reason": "Unregistered", "timestamp": int((NOW - 3600) * 1000)} == msgspec.json.decode(answer.body)


def test_reject_prefixes_with_our_client() -> None:
    """Prefix rules answer matching tokens with their status while others are accepted."""
    faults = Http2Faults(
        reject_prefixes=(("dead", 410, "Unregistered"), ("bad0", 400, "BadDeviceToken")), initial_streams=100
    )
    ours = our_client(gateway(faults))
    for n, token in enumerate(("dead" + "ab" * 30, "bad0" + "ab" * 30, TOKEN)):
        ours.push(n, token=token)
    answers = [(e.status, e.reason, e.timestamp_ms) for e in ours.events if isinstance(e, ResponseReceived)]
    assert [
        (410, "Unregistered", int((NOW - 86_400) * 1000)),
        (400, "BadDeviceToken", None),
        (200, "", None),
    ] == answers


def test_stream_limit_raised_after_first_accepted_request() -> None:
    """The gateway raises MAX_CONCURRENT_STREAMS to max_concurrent_streams once a request is accepted."""
    ours = our_client(gateway())
    before = ours.client.available_streams
    events = ours.push()
    assert (1, [ResponseReceived(1, 200), SettingsChanged(1000, 65_535, 16_384)], 1000) == (
        before,
        events,
        ours.client.available_streams,
    )


def test_rejected_first_request_keeps_one_stream() -> None:
    """A rejected first request leaves the limit at one stream."""
    ours = our_client(gateway())
    ours.push(token="zz" * 32)
    assert 1 == ours.client.max_concurrent_streams


def test_stream_beyond_limit_refused_and_recorded() -> None:
    """A client that ignores the limit gets REFUSED_STREAM and the record counts a violation."""
    gw = gateway()
    ref = ref_client(gw, read_preface=False)  # h2 assumes 100 streams until it reads SETTINGS
    first = ref.request(request_headers(), end=False)
    second = ref.request(request_headers(), end=False)
    ref.pump()
    assert ((1, 3), {second: Answer(0, {}, reset=7)}, 1, 2) == (
        (first, second),
        ref.answers(),
        gw.record.concurrency_violations,
        gw.record.max_concurrent_seen,
    )


def test_burst_is_shared_across_connections() -> None:
    """The first `count` valid requests of the whole server get the burst status, across connections."""
    state = FaultState()
    faults = Http2Faults(burst_status=(503, "ServiceUnavailable", 3))
    first, second = our_client(gateway(faults, state)), our_client(gateway(faults, state))
    for ours in (first, second, first, second):
        ours.push()
    answers = [(e.status, e.reason) for o in (first, second) for e in o.events if isinstance(e, ResponseReceived)]
    assert [(503, "ServiceUnavailable"), (503, "ServiceUnavailable"), (503, "ServiceUnavailable"), (200, "")] == answers


def test_goaway_after_n_answers() -> None:
    """goaway_after=3 answers three requests, then GOAWAY names the third stream and closes."""
    gw = gateway(replace(OPEN, goaway_after=3))
    ours = our_client(gw)
    for n in range(5):
        ours.client.send_request(RequestTemplate("api.push.apple.com", TOPIC), TOKEN, apns_id(n), PAYLOAD)
    events = ours.pump()
    assert [
        ResponseReceived(1, 200),
        ResponseReceived(3, 200),
        ResponseReceived(5, 200),
        GoAwayReceived(5, 0, "Shutdown"),
    ] == events
    assert (True, False, 3) == (gw.gateway.closed, gw.gateway.abrupt, len(gw.record.received))


def test_goaway_last_stream_below_a_request_still_arriving() -> None:
    """GOAWAY's last stream id stays below any request whose body had not fully arrived."""
    ref = ref_client(gateway(replace(OPEN, goaway_after=2)))
    ref.request(request_headers(), end=False)
    ref.request(request_headers())
    ref.request(request_headers())
    ref.pump()
    goaway = [e.last_stream_id for e in ref.events if type(e).__name__ == "ConnectionTerminated"]
    assert [0] == goaway


def test_goaway_fires_on_first_connection_only() -> None:
    """With once=True a second connection of the same server gets no GOAWAY."""
    state = FaultState()
    faults = replace(OPEN, goaway_after=1)
    our_client(gateway(faults, state)).push()
    second = our_client(gateway(faults, state))
    events = second.push(0) + second.push(1)
    assert [ResponseReceived(1, 200), ResponseReceived(3, 200)] == events


def test_close_after_drops_connection_without_goaway() -> None:
    """close_after=2 answers two requests, then asks for an abrupt close with no GOAWAY."""
    gw = gateway(replace(OPEN, close_after=2))
    ours = our_client(gw)
    for n in range(4):
        ours.client.send_request(RequestTemplate("api.push.apple.com", TOPIC), TOKEN, apns_id(n), PAYLOAD)
    events = ours.pump()
    assert ([ResponseReceived(1, 200), ResponseReceived(3, 200)], True, True) == (
        events,
        gw.gateway.closed,
        gw.gateway.abrupt,
    )


def test_client_goaway_closes_the_gateway() -> None:
    """A GOAWAY from the client ends the connection."""
    gw = gateway()
    ours = our_client(gw)
    ours.client.close()
    ours.pump()
    assert (True, False) == (gw.gateway.closed, gw.gateway.abrupt)


def test_client_protocol_error_answered_with_goaway() -> None:
    """A frame that breaks HTTP/2 makes the gateway send GOAWAY(PROTOCOL_ERROR) and close."""
    gw = gateway()
    gw.gateway.initiate()
    out = gw.gateway.receive(PREFACE + raw_frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"))
    assert (True, [(GOAWAY, 0, 0, 8)], PROTOCOL_ERROR) == (gw.gateway.closed, frames_in(out), out[-1])


def test_not_http2_closes_silently() -> None:
    """Bytes that are not an HTTP/2 preface close the connection without an answer."""
    gw = gateway()
    gw.gateway.initiate()
    assert (b"", True) == (gw.gateway.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), gw.gateway.closed)


def test_error_body_waits_for_a_tiny_client_window() -> None:
    """An error body larger than the client's stream window is sent as the window opens."""
    ref = ref_client(gateway(), initial_window_size=10)
    sid = ref.request(request_headers("zz" * 32))
    ref.pump()
    assert (400, "BadDeviceToken") == reason_of(ref.answers()[sid])


def test_thousand_requests_within_limit() -> None:
    """Our client sends 1,000 requests under a raised limit of 100 with no violation and all accepted."""
    gw = gateway(Http2Faults(max_concurrent_streams=100))
    ours = our_client(gw)
    sent = 0
    while sent < 1000:
        while sent < 1000 and ours.client.available_streams:
            ours.client.send_request(RequestTemplate("api.push.apple.com", TOPIC), TOKEN, apns_id(sent), PAYLOAD)
            sent += 1
        ours.pump()
    summary = gw.record.summary()
    assert (1000, 1000, 0) == (summary["received"], summary["accepted"], summary["concurrency_violations"])


KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
TOKEN_AUTH = Http2Faults(jwt_public_key=KEY.public_key(), jwt_key_id="KEY1234567", jwt_team_id="TEAM123456")


def bearer(
    key: ec.EllipticCurvePrivateKey = KEY, kid: str = "KEY1234567", team: str = "TEAM123456", issued: float = NOW
) -> str:
    """An authorization header value holding a freshly signed provider token."""
    return "bearer " + TokenSigner(key, kid, team).token(issued)


@pytest.mark.parametrize(
    ("authorization", "topic", "expected"),
    [
        (bearer(), TOPIC, (200, "")),
        (None, TOPIC, (403, "MissingProviderToken")),
        ("basic abc", TOPIC, (403, "InvalidProviderToken")),
        (bearer(OTHER_KEY), TOPIC, (403, "InvalidProviderToken")),
        (bearer(issued=NOW - 3601), TOPIC, (403, "ExpiredProviderToken")),
        (bearer(kid="OTHERKEY00"), TOPIC, (403, "InvalidProviderToken")),
        (bearer(team="OTHERTEAM0"), TOPIC, (403, "InvalidProviderToken")),
        (bearer(), None, (400, "MissingTopic")),
    ],
)
def test_token_auth(authorization: str | None, topic: str | None, expected: tuple[int, str]) -> None:
    """Under token auth the gateway verifies the ES256 JWT, its key id, team and age, and wants a topic."""
    ours = our_client(gateway(TOKEN_AUTH))
    events = ours.push(template=RequestTemplate("api.push.apple.com", topic, authorization))
    assert [expected] == [(e.status, e.reason) for e in events if isinstance(e, ResponseReceived)]


def test_token_auth_raises_limit_after_valid_token() -> None:
    """The stream limit stays at one until a request with a valid provider token succeeds."""
    ours = our_client(gateway(TOKEN_AUTH))
    ours.push(template=RequestTemplate("api.push.apple.com", TOPIC, bearer(OTHER_KEY)))
    before = ours.client.max_concurrent_streams
    ours.push(1, template=RequestTemplate("api.push.apple.com", TOPIC, bearer()))
    assert (1, 1000) == (before, ours.client.max_concurrent_streams)


# --- Apple's failures on demand ---------------------------------------------------------------


@pytest.mark.parametrize("reason", sorted(APPLE_REASONS))
def test_every_reason_in_apples_table_can_be_played_by_token_prefix(reason: str) -> None:
    """A prefix rule answers with any of Apple's reasons and the status Apple's table gives it."""
    faults = Http2Faults(reject_prefixes=(("f00d", APPLE_REASONS[reason], reason),))
    assert (APPLE_REASONS[reason], reason) == reason_of(ask(faults, request_headers("f00d" + "ab" * 30)))


def test_a_burst_can_start_after_some_requests() -> None:
    """burst_after lets the first requests through before the burst's count of failures."""
    ours = our_client(gateway(replace(OPEN, burst_status=(403, "InvalidProviderToken", 2), burst_after=1)))
    for n in range(4):
        ours.push(n)
    answers = [(e.status, e.reason) for e in ours.events if isinstance(e, ResponseReceived)]
    assert [(200, ""), (403, "InvalidProviderToken"), (403, "InvalidProviderToken"), (200, "")] == answers


@pytest.mark.parametrize("reason", ["IdleTimeout", "Shutdown", "InternalServerError"])
def test_goaway_can_name_any_reason(reason: str) -> None:
    """goaway_reason puts any of Apple's reasons in the GOAWAY's debug data."""
    ours = our_client(gateway(replace(OPEN, goaway_after=1, goaway_reason=reason)))
    assert [ResponseReceived(1, 200), GoAwayReceived(1, 0, reason)] == ours.push()


@pytest.mark.parametrize(
    ("environment", "token", "expected"),
    [
        ("production", "5a1db0c5" + "ab" * 28, (400, "BadDeviceToken")),
        ("production", "9e0d0c75" + "ab" * 28, (200, "")),
        ("sandbox", "9e0d0c75" + "ab" * 28, (400, "BadDeviceToken")),
        ("sandbox", "5a1db0c5" + "ab" * 28, (200, "")),
        ("sandbox", TOKEN, (200, "")),
    ],
)
def test_a_token_of_the_other_environment_gets_bad_device_token(
    environment: str, token: str, expected: tuple[int, str]
) -> None:
    """A token marked for the other environment is BadDeviceToken, as APNs answers a sandbox token in production."""
    assert expected == reason_of(ask(Http2Faults(environment=environment), request_headers(token)))


def test_sandbox_answers_carry_apns_unique_id_and_production_ones_do_not() -> None:
    """In sandbox mode every answer has an apns-unique-id UUID; production answers have none."""
    sandbox = ask(Http2Faults(environment="sandbox"), request_headers())
    production = ask(Http2Faults(), request_headers())
    assert (True, None) == (
        bool(UUID.fullmatch(sandbox.headers.get("apns-unique-id", ""))),
        production.headers.get("apns-unique-id"),
    )


def test_a_stalled_gateway_answers_nothing_more_not_even_ping() -> None:
    """After stall_after answers the gateway reads but never writes: no answers, no PING ACK."""
    gw = gateway(replace(OPEN, stall_after=1))
    ours = our_client(gw)
    first = ours.push(0)
    ours.client.ping()
    assert ([ResponseReceived(1, 200)], [], True) == (first, ours.push(1), gw.gateway.stalled)


def test_a_provider_token_issued_in_the_future_is_invalid() -> None:
    """A JWT whose iat is ahead of the gateway's clock is InvalidProviderToken."""
    ours = our_client(gateway(TOKEN_AUTH))
    events = ours.push(template=RequestTemplate("api.push.apple.com", TOPIC, bearer(issued=NOW + 60)))
    assert [(403, "InvalidProviderToken")] == [(e.status, e.reason) for e in events if isinstance(e, ResponseReceived)]


def test_a_new_provider_token_within_twenty_minutes_on_a_connection_is_too_many_updates() -> None:
    """A new token on a connection sooner than 20 minutes after the last change is TooManyProviderTokenUpdates."""
    ours = our_client(gateway(TOKEN_AUTH))
    ours.push(0, template=RequestTemplate("api.push.apple.com", TOPIC, bearer(issued=NOW - 60)))
    events = ours.push(1, template=RequestTemplate("api.push.apple.com", TOPIC, bearer(issued=NOW)))
    assert [(429, "TooManyProviderTokenUpdates")] == [
        (e.status, e.reason) for e in events if isinstance(e, ResponseReceived)
    ]


def test_a_second_key_id_on_a_connection_is_an_unrelated_key() -> None:
    """A token signed under another key id than the connection's first is UnrelatedKeyIdInToken."""
    faults = replace(TOKEN_AUTH, jwt_key_id=None)
    ours = our_client(gateway(faults))
    ours.push(0, template=RequestTemplate("api.push.apple.com", TOPIC, bearer()))
    events = ours.push(1, template=RequestTemplate("api.push.apple.com", TOPIC, bearer(kid="KEY7654321")))
    assert [(403, "UnrelatedKeyIdInToken")] == [(e.status, e.reason) for e in events if isinstance(e, ResponseReceived)]


def test_an_idle_connection_gets_goaway_idle_timeout() -> None:
    """idle_goaway ends an unused connection with GOAWAY reason IdleTimeout, naming the last answered stream."""
    gw = gateway(OPEN)
    ours = our_client(gw)
    ours.push(0)
    events = ours.client.receive_data(gw.gateway.idle_goaway())
    assert ([GoAwayReceived(1, 0, "IdleTimeout")], True) == (events, gw.gateway.closed)
