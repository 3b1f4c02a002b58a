"""Live Activity broadcasts without sockets: channel jobs, request and answer blocks, the mock's broadcast rules."""

from __future__ import annotations

from typing import Any

import hpack
import msgspec
import pytest

from apnsd.core.jobs import JobParser, Notification, bundle_of, live_activity_topic, parse_channel_id, retry_job
from apnsd.core.outcomes import Kind, http2_outcome
from apnsd.errors import JobError
from apnsd.testing.channels_mock import ChannelRegistry, judge_broadcast
from apnsd.wire.http2.connection import RequestTemplate
from apnsd.wire.http2.hpack import request_block
from apnsd.wire.http2.status import response_headers
from tests.support.h2factories import client_pair

CHANNEL = "dHN0LXNyY2gtY2hubA=="
LIMITS = {"default": ("http2", 4096, 5120), "legacy": ("binary", 2048, 2048)}
UPDATE = {"aps": {"event": "update", "content-state": {"score": "1-0"}}}
AUTH_TEMPLATE = RequestTemplate("api.push.apple.com", "com.example.app", "bearer eyJ.test.token")


def channel_job(**fields: Any) -> bytes:
    """A channel job as an application would LPUSH it; channel and payload default to valid values."""
    fields.setdefault("channel", CHANNEL)
    fields.setdefault("payload", UPDATE)
    return msgspec.json.encode({k: v for k, v in fields.items() if v is not ...})


def parse(raw: bytes) -> tuple[list[Notification], list[Any]]:
    return JobParser(LIMITS).parse(raw)


def reason(raw: bytes) -> str:
    """The reason the only rejection of a job gives."""
    good, bad = parse(raw)
    assert ([], 1) == (good, len(bad))
    return str(bad[0].reason)


# --- channel jobs ------------------------------------------------------------------------------


def test_a_channel_job_is_one_broadcast_with_apples_required_defaults() -> None:
    """Priority 10 and expiration 0 are filled in, the push type is liveactivity, the channel id is kept."""
    [note], bad = parse(channel_job(enqueued_at=5.0))
    assert [] == bad
    expected = (CHANNEL, CHANNEL, b"", 10, 0, "liveactivity", None, 5.0)
    actual = (note.channel, note.token, note.token_bytes, note.priority, note.expiration, note.push_type)
    assert expected == (*actual, note.collapse_id, note.enqueued_at)


def test_a_channel_job_keeps_its_priority_expiration_topic_and_uuid_id() -> None:
    """Given fields win over the defaults; a UUID id becomes the apns-request-id."""
    ident = "123e4567-e89b-12d3-a456-4266554400a0"
    [note], _ = parse(channel_job(priority=1, expiration=1_900_000_000, topic="com.example.app", id=ident))
    assert (1, 1_900_000_000, "com.example.app", ident) == (note.priority, note.expiration, note.topic, note.apns_id)


@pytest.mark.parametrize("channel", ["dHN0", "dHN0LXNyY2g=", "YQ==", "ab+/", CHANNEL, "QUJD" * 64])
def test_well_formed_channel_ids_are_accepted(channel: str) -> None:
    """Padded standard base64 of any length up to the 256-character cap is a channel id."""
    assert channel == parse_channel_id(channel)


@pytest.mark.parametrize(
    "channel",
    [
        "",
        "dHN",  # not a multiple of 4
        "dHN0LXNyY2gtY2hubA",  # padding missing
        "dHN0LXNyY2gtY2hubA=",  # wrong padding
        "dHN0=LXN",  # padding inside
        "dHN0-_Nz",  # URL-safe alphabet
        " dHN0LXNyY2gtY2hubA==",
        "dHN0LXNyY2gtY2hubA==\n",
        "dHN0LXNy\u00e9Y2g=",
        "QUJD" * 65,  # 260 characters
    ],
)
def test_malformed_channel_ids_are_dead_lettered_as_bad_channel(channel: str) -> None:
    """Anything but a whole padded base64 string of at most 256 characters is bad_channel."""
    assert "bad_channel" == reason(channel_job(channel=channel))


@pytest.mark.parametrize("value", [123, None, ["a"], {"a": 1}, True])
def test_a_channel_that_is_not_a_string_is_bad_field(value: object) -> None:
    """A channel of the wrong JSON type is refused like any mistyped field."""
    if value is None:  # null means "no channel": the job then has no target at all
        assert "missing_token" == reason(channel_job(channel=None))
        return
    assert "bad_field" == reason(channel_job(channel=value))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"token": "ab" * 32}, "bad_field"),
        ({"tokens": ["ab" * 32]}, "bad_field"),
        ({"app": "legacy"}, "bad_channel"),
        ({"app": "nope"}, "unknown_app"),
        ({"push_type": "alert"}, "bad_push_type"),
        ({"push_type": "nonsense"}, "bad_push_type"),
        ({"collapse_id": "score"}, "bad_collapse_id"),
        ({"priority": 7}, "bad_priority"),
        ({"expiration": -1}, "bad_expiration"),
        ({"topic": " com.example.app"}, "bad_topic"),
        ({"payload": ...}, "missing_payload"),
        ({"payload": [1]}, "bad_payload"),
        ({"payload": {"aps": {"alert": "x" * 5200}}}, "payload_too_large"),
    ],
)
def test_channel_jobs_are_validated_like_any_job(fields: dict[str, Any], expected: str) -> None:
    """One target only, HTTP/2 only, Live Activity only, no collapse id, and the usual field checks."""
    assert expected == reason(channel_job(**fields))


def test_broadcast_payloads_may_use_apples_five_kilobytes() -> None:
    """A 5,120-byte payload passes (Apple's broadcast limit), one byte more does not."""
    base = len(msgspec.json.encode({"aps": {"alert": ""}}))
    fits = {"aps": {"alert": "x" * (5120 - base)}}
    assert 1 == len(parse(channel_job(payload=fits))[0])
    assert "payload_too_large" == reason(channel_job(payload={"aps": {"alert": "x" * (5121 - base)}}))


def test_a_retried_channel_job_stays_a_channel_job() -> None:
    """The retry job keeps the channel, gains no token, and parses back into the same broadcast."""
    [note], _ = parse(channel_job(id="match-7"))
    again = msgspec.json.decode(retry_job(note, 100.0))
    assert ("token" in again, again["channel"], again["attempts"], again["send_at"]) == (False, CHANNEL, 1, 100.0)
    [back], bad = parse(retry_job(note, 100.0))
    assert ([], CHANNEL, "match-7") == (bad, back.channel, back.job_id)


def test_live_activity_topic_and_bundle_id_are_one_rule() -> None:
    """The topic gains the .push-type.liveactivity suffix once; the path's bundle id never has it."""
    assert ["com.x.app.push-type.liveactivity"] * 2 == [
        live_activity_topic("com.x.app"),
        live_activity_topic("com.x.app.push-type.liveactivity"),
    ]
    assert ["com.x.app"] * 2 == [bundle_of("com.x.app"), bundle_of("com.x.app.push-type.liveactivity")]


def test_channel_not_registered_is_a_gone_channel_not_a_dead_letter() -> None:
    """400 ChannelNotRegistered resolves like a gone token; BadChannelId stays a dead letter."""
    assert Kind.UNREGISTERED == http2_outcome(400, "ChannelNotRegistered").kind
    assert Kind.DEAD == http2_outcome(400, "BadChannelId").kind


# --- wire -------------------------------------------------------------------------------------


def test_a_broadcast_request_decodes_to_apples_headers() -> None:
    """h2 reads POST /4/broadcasts/apps/<bundle id> with the channel headers and the bearer token."""
    pair = client_pair()
    sid = pair.client.send_broadcast(
        AUTH_TEMPLATE,
        "com.example.app",
        CHANNEL,
        "123e4567-e89b-12d3-a456-4266554400a0",
        b'{"aps":{}}',
        priority=5,
        expiration=0,
        topic="com.example.app.push-type.liveactivity",
    )
    pair.to_server()
    headers = pair.requests()[sid]
    expected = {
        ":method": "POST",
        ":path": "/4/broadcasts/apps/com.example.app",
        "apns-topic": "com.example.app.push-type.liveactivity",
        "apns-push-type": "liveactivity",
        "apns-channel-id": CHANNEL,
        "apns-priority": "5",
        "apns-expiration": "0",
        "apns-request-id": "123e4567-e89b-12d3-a456-4266554400a0",
        "content-length": "10",
        "authorization": AUTH_TEMPLATE.authorization,
    }
    assert expected == {k: v for k, v in headers if k in expected}
    assert {sid: b'{"aps":{}}'} == pair.bodies()


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_management_request_blocks_decode_exactly(method: str) -> None:
    """Every method the management API uses, its path, extra headers and authorization decode with hpack."""
    block = request_block(
        method, "mgmt.example:2195", "/1/apps/com.x/channels", [("apns-channel-id", CHANNEL)], "bearer t"
    )
    assert [
        (":method", method),
        (":scheme", "https"),
        (":authority", "mgmt.example:2195"),
        (":path", "/1/apps/com.x/channels"),
        ("apns-channel-id", CHANNEL),
        ("authorization", "bearer t"),
    ] == hpack.Decoder().decode(block)


def test_management_request_values_http2_forbids_are_refused() -> None:
    """A CR in a header value is refused before anything is sent."""
    with pytest.raises(JobError):
        request_block("GET", "h", "/1/apps/x\r/channels", [], None)


@pytest.mark.parametrize("huffman", [True, False])
def test_response_headers_reads_a_table_less_block(huffman: bool) -> None:
    """Indexed, literal and Huffman-coded fields of an answer decode by name."""
    encoder = hpack.Encoder()
    encoder.header_table_size = 0
    block = encoder.encode(
        [(":status", "201"), ("apns-request-id", "r-1"), ("apns-channel-id", CHANNEL)], huffman=huffman
    )
    assert {":status": "201", "apns-request-id": "r-1", "apns-channel-id": CHANNEL} == response_headers(block)


def test_kept_responses_carry_headers_and_body() -> None:
    """With keep_responses the client keeps each answer's header block and body for its caller."""
    pair = client_pair()
    pair.client.keep_responses = True
    sid = pair.client.send_raw(request_block("GET", "h", "/1/apps/x/all-channels", [], None))
    pair.to_server()
    pair.server.send_headers(sid, [(":status", "200"), ("apns-request-id", "r-2")])
    pair.server.send_data(sid, b'{"channels":[]}', end_stream=True)
    pair.to_client()
    block, body = pair.client.full_responses[sid]
    assert ({":status": "200", "apns-request-id": "r-2"}, b'{"channels":[]}') == (response_headers(block), body)


# --- the mock's broadcast rules ---------------------------------------------------------------


def judge(registry: ChannelRegistry, body: bytes = b'{"aps":{}}', **headers: str) -> tuple[int, str]:
    """The mock's verdict on a broadcast to com.x with valid headers unless overridden (None removes)."""
    h = {
        ":path": "/4/broadcasts/apps/com.x",
        "apns-channel-id": CHANNEL,
        "apns-push-type": "liveactivity",
        "apns-priority": "10",
        "apns-expiration": "0",
    }
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return judge_broadcast({k: v for k, v in h.items() if v != "None"}, body, registry, ())


def test_the_mock_answers_broadcasts_with_apples_reasons() -> None:
    """Missing or malformed headers, unknown channels and a stored expiration on a no-storage channel."""
    registry = ChannelRegistry()
    registry.channels[CHANNEL] = ("com.x", 0)
    cases = {
        "ok": judge(registry),
        "no channel": judge(registry, apns_channel_id="None"),
        "bad channel": judge(registry, apns_channel_id="***"),
        "unknown": judge(registry, apns_channel_id="YWJj"),
        "no push type": judge(registry, apns_push_type="None"),
        "alert": judge(registry, apns_push_type="alert"),
        "priority": judge(registry, apns_priority="3"),
        "expiration": judge(registry, apns_expiration="1900000000"),
        "suffix": judge(registry, **{":path": "/4/broadcasts/apps/com.x.push-type.liveactivity"}),
        "empty": judge(registry, b""),
        "large": judge(registry, b"{" + b" " * 5120 + b"}"),
    }
    assert {
        "ok": (200, ""),
        "no channel": (400, "MissingChannelId"),
        "bad channel": (400, "BadChannelId"),
        "unknown": (400, "ChannelNotRegistered"),
        "no push type": (400, "MissingPushType"),
        "alert": (400, "InvalidPushType"),
        "priority": (400, "BadPriority"),
        "expiration": (400, "BadExpirationDate"),
        "suffix": (400, "TopicDisallowed"),
        "empty": (400, "PayloadEmpty"),
        "large": (413, "PayloadTooLarge"),
    } == cases


# --- config -----------------------------------------------------------------------------------


def test_the_channel_management_host_follows_the_environment_and_the_overrides() -> None:
    """Apple's host and port per environment; host alone keeps Apple's port; channels_* win over both."""
    from apnsd.config import AppConfig

    assert [
        ("api-manage-broadcast.push.apple.com", 2196),
        ("api-manage-broadcast.sandbox.push.apple.com", 2195),
        ("127.0.0.1", 2195),
        ("mgmt.local", 8443),
    ] == [
        AppConfig().channels_gateway(),
        AppConfig(environment="sandbox").channels_gateway(),
        AppConfig(environment="sandbox", host="127.0.0.1", port=9).channels_gateway(),
        AppConfig(host="127.0.0.1", channels_host="mgmt.local", channels_port=8443).channels_gateway(),
    ]


def test_a_channels_port_out_of_range_is_a_config_error() -> None:
    """channels_port is checked like port, naming the key."""
    from apnsd.config import load_config
    from apnsd.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(None, {"APNSD_APP_DEFAULT_CHANNELS_PORT": "70000", "APNSD_APP_DEFAULT_CERT": "x.pem"})
    assert "apps.default.channels_port" == info.value.key
