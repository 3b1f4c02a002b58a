"""Job parsing: token normalisation, validation reasons, fan-out, payload limits, apns-id, retries."""

from __future__ import annotations

import gc
import json
import re
from typing import Any

import msgspec
import pytest

from apnsd.config import load_config
from apnsd.core.jobs import ApnsIds, JobParser, Notification, Rejected, normalise_token, retry_job, single_job
from apnsd.errors import JobError
from apnsd.gateway.apps import make_parser

TOKEN = "c9d4c07cfbbc26d6ef87a44d53e169831096a5d5fd82547556659dddf715defc"
OTHER = "ab" * 32
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# app → (protocol, payload limit, voip payload limit), as apnsd.gateway.apps.make_parser builds it from config
LIMITS = {"default": ("http2", 4096, 5120), "legacy": ("binary", 2048, 2048)}


def raw_job(**fields: Any) -> bytes:
    """A job as an application would LPUSH it; token and payload default to valid values."""
    fields.setdefault("token", TOKEN)
    fields.setdefault("payload", {"aps": {"alert": "hello"}})
    return msgspec.json.encode({k: v for k, v in fields.items() if v is not ...})


def parse(raw: bytes, limits: dict[str, tuple[str, int, int]] = LIMITS) -> tuple[list[Notification], list[Rejected]]:
    return JobParser(limits).parse(raw)


def one(raw: bytes, limits: dict[str, tuple[str, int, int]] = LIMITS) -> Notification:
    """The single notification of a valid single-token job."""
    good, bad = parse(raw, limits)
    assert [] == bad
    assert 1 == len(good)
    return good[0]


def reason(raw: bytes, limits: dict[str, tuple[str, int, int]] = LIMITS) -> str:
    """The reason the only rejection of a job gives."""
    good, bad = parse(raw, limits)
    assert [] == good
    assert 1 == len(bad)
    return bad[0].reason


def sized_payload(size: int) -> dict[str, Any]:
    """A payload whose compact JSON encoding is exactly ``size`` bytes."""
    base = len(msgspec.json.encode({"aps": {"alert": ""}}))
    return {"aps": {"alert": "x" * (size - base)}}


# --- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        TOKEN,
        TOKEN.upper(),
        "<c9d4c07c fbbc26d6 ef87a44d 53e16983 1096a5d5 fd825475 56659ddd f715defc>",
        "C9D4C07C FBBC26D6 EF87A44D 53E16983 1096A5D5 FD825475 56659DDD F715DEFC",
        " " + TOKEN + " ",
    ],
)
def test_token_forms_normalise_to_lowercase_hex(given):
    """Upper case, spaces and the <…> of -[NSData description] are normalised to lowercase hex."""
    assert TOKEN == normalise_token(given)


@pytest.mark.parametrize(
    "given",
    [
        "{length = 32, bytes = 0x965b251e 3c3d5f2f ... 376eab7c }",
        "{length = 32, bytes = 0x965b251e 3c3d5f2f … 376eab7c }",
        "{length=32,bytes=0x965b251e3c3d5f2f}",
    ],
)
def test_ios13_description_is_rejected_not_sanitised(given):
    """The truncated iOS 13 description form is refused with token_is_description."""
    with pytest.raises(JobError) as info:
        normalise_token(given)
    assert "token_is_description" == info.value.reason


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("", "missing_token"),
        ("   ", "missing_token"),
        ("zz" * 32, "bad_token"),
        (TOKEN[:-1] + "g", "bad_token"),
        ("0x" + TOKEN[2:], "bad_token"),
        (TOKEN[:32] + "\t\t" + TOKEN[32:], "bad_token"),
        (TOKEN[:32] + "\r\n" + TOKEN[32:], "bad_token"),
        (TOKEN + "\n", "bad_token"),
        ("ab" * 31, "bad_token_length"),
        (TOKEN + "a", "bad_token_length"),
        ("ab" * 101, "bad_token_length"),
    ],
)
def test_bad_tokens_are_rejected_with_a_reason(given, expected):
    """Empty, non-hex, odd-length, too short and too long tokens each get their own reason."""
    with pytest.raises(JobError) as info:
        normalise_token(given)
    assert expected == info.value.reason


@pytest.mark.parametrize("nbytes", [32, 54, 80, 100])
def test_token_lengths_from_32_to_100_bytes_are_accepted(nbytes):
    """Tokens are variable length: anything from 32 to 100 bytes is accepted."""
    assert "ab" * nbytes == normalise_token("AB" * nbytes)


def test_notification_carries_normalised_token_and_its_bytes():
    """A parsed notification holds the lowercase hex token and its raw bytes."""
    n = one(raw_job(token=TOKEN.upper()))

    assert (TOKEN, bytes.fromhex(TOKEN)) == (n.token, n.token_bytes)


@pytest.mark.parametrize("given", [TOKEN, TOKEN.upper(), "<" + TOKEN[:32] + " " + TOKEN[32:] + ">"])
def test_a_parsed_notification_keeps_its_token_only_as_bytes(given):
    """Tens of thousands wait in flight at once: a parsed device token is held once, as bytes, and its text
    (lowercase hex) is derived from them, whatever form the job gave it in."""
    n = one(raw_job(token=given))

    assert (None, TOKEN) == (n._token, n.token)


def test_a_notification_has_no_instance_dict():
    """Notifications use slots: no per-instance __dict__ (about 100 bytes each) in flight."""
    n = one(raw_job())

    assert False is hasattr(n, "__dict__")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "not_json"),
        (b"", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"just a string"', "not_object"),
        (msgspec.json.encode({"token": 123, "payload": {"aps": {}}}), "bad_field"),
        (msgspec.json.encode({"tokens": "abc", "payload": {"aps": {}}}), "bad_field"),
        (msgspec.json.encode({"payload": {"aps": {}}}), "missing_token"),
        (msgspec.json.encode({"tokens": [], "payload": {"aps": {}}}), "missing_token"),
        (raw_job(tokens=[OTHER]), "bad_field"),
        (raw_job(token="zz" * 32), "bad_token"),
        (raw_job(token="{length = 32, bytes = 0x965b251e ... 376eab7c }"), "token_is_description"),
    ],
)
def test_unparseable_or_tokenless_jobs_are_rejected_with_a_reason(raw, expected):
    """Jobs that are not JSON objects, have wrongly typed fields or no usable token are rejected, not dropped."""
    assert expected == reason(raw)


def test_rejection_keeps_the_raw_job_app_and_token():
    """A rejection carries the raw job, its app and the offending token so it can be dead-lettered."""
    raw = raw_job(token="zz" * 32, app="legacy")

    [rejected] = parse(raw)[1]

    assert (raw, "legacy", "zz" * 32) == (rejected.raw, rejected.app, rejected.token)
    assert "" != rejected.detail


# --- fan-out -----------------------------------------------------------------------------------


def test_fan_out_gives_one_notification_per_token_and_one_rejection_listing_the_bad_tokens():
    """A ``tokens`` list becomes a notification per valid device and one rejection naming each invalid one."""
    raw = raw_job(token=..., tokens=[TOKEN, "nothex", OTHER.upper()])

    good, bad = parse(raw)

    assert [TOKEN, OTHER] == [n.token for n in good]
    assert [True, True] == [n.fanout for n in good]
    assert [("bad_token", None, {"nothex": "bad_token"})] == [(r.reason, r.token, r.tokens) for r in bad]
    assert ["nothex"] == msgspec.json.decode(bad[0].raw)["tokens"]
    assert 2 == len({n.apns_id for n in good})


def test_fan_out_shares_one_payload_check():
    """A fan-out job whose payload is too large is rejected once, as a whole."""
    good, bad = parse(raw_job(token=..., tokens=[TOKEN, OTHER], payload=sized_payload(4097)))

    assert ([], ["payload_too_large"]) == (good, [r.reason for r in bad])


# --- payload -----------------------------------------------------------------------------------


def test_payload_object_and_pre_encoded_string_give_the_same_bytes():
    """A payload pushed as an object and the same payload pushed as a JSON string send identical bytes."""
    payload = {"aps": {"alert": "Server down", "badge": 1}, "server": {"serverId": 1}}

    as_object = one(raw_job(payload=payload)).payload
    as_string = one(raw_job(payload=json.dumps(payload, separators=(",", ":")))).payload

    assert b'{"aps":{"alert":"Server down","badge":1},"server":{"serverId":1}}' == as_object
    assert as_object == as_string


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (..., "missing_payload"),
        (None, "missing_payload"),
        ([1, 2], "bad_payload"),
        (42, "bad_payload"),
        ("not json", "bad_payload"),
        ("[1, 2]", "bad_payload"),
    ],
)
def test_missing_or_non_object_payloads_are_rejected(payload, expected):
    """A payload must be a JSON object, or a string holding one."""
    assert expected == reason(raw_job(payload=payload))


@pytest.mark.parametrize(
    ("app", "push_type", "limit"),
    [
        ("default", None, 4096),
        ("default", "alert", 4096),
        ("default", "voip", 5120),
        ("legacy", None, 2048),
        ("legacy", "voip", 2048),
    ],
)
def test_payload_limit_is_inclusive_per_protocol_and_push_type(app, push_type, limit):
    """A payload of exactly the limit passes and one byte more is payload_too_large."""
    extra = {} if push_type is None else {"push_type": push_type}

    assert limit == len(one(raw_job(app=app, payload=sized_payload(limit), **extra)).payload)
    assert "payload_too_large" == reason(raw_job(app=app, payload=sized_payload(limit + 1), **extra))


def test_configured_payload_limit_applies_to_every_push_type():
    """An app's configured payload_limit replaces the protocol's limits, VoIP included."""
    parser = make_parser(load_config(None, {"APNSD_APP_DEFAULT_PAYLOAD_LIMIT": "1000"}))

    fits, _ = parser.parse(raw_job(payload=sized_payload(1000), push_type="voip"))
    _, too_big = parser.parse(raw_job(payload=sized_payload(1001), push_type="voip"))

    assert [1000] == [len(n.payload) for n in fits]
    assert ["payload_too_large"] == [r.reason for r in too_big]


def test_pretty_printed_payload_over_the_limit_is_compacted_when_that_fits():
    """Whitespace does not count against the limit: an oversized pretty payload is sent compacted."""
    payload = sized_payload(2048)
    pretty = json.dumps(payload, indent=4).encode()
    raw = b'{"token": "' + TOKEN.encode() + b'", "app": "legacy", "payload": ' + pretty + b"}"
    assert len(pretty) > 2048

    assert msgspec.json.encode(payload) == one(raw).payload


OBJECT = {"aps": {"alert": "hello"}}


@pytest.mark.parametrize(
    ("payload", "held", "expected"),
    [
        (OBJECT, msgspec.Raw, msgspec.json.encode(OBJECT)),  # as pushed: a view into the raw job, no copy
        (json.dumps(OBJECT), bytes, json.dumps(OBJECT).encode()),  # a pre-encoded string: its text
        (json.dumps(sized_payload(2048), indent=4), bytes, msgspec.json.encode(sized_payload(2048))),  # compacted
    ],
)
def test_only_a_payload_sent_as_pushed_is_held_as_a_view_into_the_raw_job(payload, held, expected):
    """A payload object is kept as msgspec's view into the raw job (held anyway), not a second copy; a payload
    that had to change is kept as the bytes to send. Either way the payload handed out is those bytes."""
    n = one(raw_job(app="legacy", payload=payload))

    assert (held, expected) == (type(n._payload), n.payload)


@pytest.mark.parametrize(
    ("payload", "held", "expected"),
    [
        (OBJECT, type(None), msgspec.json.encode(OBJECT)),  # the view goes: read from the raw job again
        (json.dumps(OBJECT), bytes, json.dumps(OBJECT).encode()),  # bytes that differ from the raw job stay
        (json.dumps(sized_payload(2048), indent=4), bytes, msgspec.json.encode(sized_payload(2048))),
    ],
)
def test_a_taken_payload_view_is_read_from_the_raw_job_again(payload, held, expected):
    """take_body lets go of a view into the raw job only; payload, body and take_body still give the same bytes."""
    n = one(raw_job(app="legacy", payload=payload))

    first = bytes(n.take_body())

    assert (held, expected, expected, expected, expected) == (
        type(n._payload),
        first,
        n.payload,
        bytes(n.body),
        bytes(n.take_body()),
    )


def test_a_payload_read_again_from_a_job_with_two_payload_keys_is_the_one_sent_first():
    """A job naming its payload twice: reading it again from the raw job gives the payload parsed the first time."""
    raw = b'{"token":"%s","payload":{"aps":{"alert":"one"}},"payload":{"aps":{"alert":"two"}}}' % TOKEN.encode()
    n = one(raw, {"default": ("binary", 2048, 2048)})
    sent = bytes(n.take_body())

    assert (b'{"aps":{"alert":"two"}}', sent) == (n.payload, bytes(n.body))


def test_pretty_printed_payload_string_over_the_limit_is_compacted_when_that_fits():
    """A pre-encoded payload string with indentation is compacted too when that brings it under the limit."""
    payload = sized_payload(2048)

    assert msgspec.json.encode(payload) == one(raw_job(app="legacy", payload=json.dumps(payload, indent=4))).payload


def test_payload_size_counts_utf8_bytes_not_characters():
    """The limit is in bytes of UTF-8: 1,100 two-byte characters exceed 2048 bytes."""
    assert "payload_too_large" == reason(raw_job(app="legacy", payload={"aps": {"alert": "é" * 1100}}))


# --- other fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"priority": 7}, "bad_priority"),
        ({"priority": 0}, "bad_priority"),
        ({"app": "legacy", "priority": 1}, "bad_priority"),
        ({"expiration": -1}, "bad_expiration"),
        ({"expiration": 2**32}, "bad_expiration"),
        ({"collapse_id": "c" * 65}, "bad_collapse_id"),
        ({"collapse_id": "é" * 33}, "bad_collapse_id"),
        ({"push_type": "silent"}, "bad_push_type"),
        ({"priority": "high"}, "bad_field"),
        ({"app": "nosuchapp"}, "unknown_app"),
    ],
)
def test_invalid_fields_are_rejected_with_their_reason(fields, expected):
    """Priorities other than 10/5/1 (binary: 10/5), out-of-range expiry, long collapse ids and unknown push types
    are refused."""
    assert expected == reason(raw_job(**fields))


def test_unknown_app_rejection_names_the_app():
    """An unknown app is named in the rejection so the dead letter can be requeued once it exists."""
    [rejected] = parse(raw_job(app="nosuchapp"))[1]

    assert ("unknown_app", "nosuchapp") == (rejected.reason, rejected.app)
    assert "nosuchapp" in rejected.detail


@pytest.mark.parametrize(
    "fields",
    [
        {"priority": 10},
        {"priority": 5},
        {"priority": 1},
        {"app": "legacy", "priority": 5},
        {"expiration": 0},
        {"expiration": 2**32 - 1},
        {"collapse_id": "c" * 64},
        {"push_type": "background", "priority": 5},
        {"push_type": "liveactivity"},
        {"push_type": "controls"},
    ],
)
def test_valid_fields_are_accepted(fields):
    """Valid priorities, expirations, 64-byte collapse ids and known push types pass validation."""
    n = one(raw_job(**fields))

    assert fields.get("priority") == n.priority
    assert fields.get("push_type", "alert") == n.push_type  # an alert payload without a type is an alert


def test_optional_fields_are_carried_onto_the_notification():
    """Topic, collapse id, expiration, attempts and enqueue time reach the notification unchanged."""
    n = one(
        raw_job(
            topic="com.example.app",
            collapse_id="server-1",
            expiration=1790000000,
            attempts=2,
            enqueued_at=1700000000.5,
            app="default",
        )
    )

    assert ("com.example.app", "server-1", 1790000000, 2, 1700000000.5, "default") == (
        n.topic,
        n.collapse_id,
        n.expiration,
        n.attempts,
        n.enqueued_at,
        n.app,
    )


def test_unknown_job_keys_are_ignored():
    """Keys apnsd does not know are left alone rather than rejecting the job."""
    assert TOKEN == one(raw_job(customer="acme", trace={"span": 1})).token


# --- apns-id -----------------------------------------------------------------------------------


def test_uuid_job_id_becomes_the_apns_id_in_canonical_lowercase():
    """A job id that is a UUID is used as the apns-id, lower-cased."""
    n = one(raw_job(id="9A0C5B1E-2D3F-4A5B-8C6D-7E8F9A0B1C2D"))

    assert ("9a0c5b1e-2d3f-4a5b-8c6d-7e8f9a0b1c2d", "9A0C5B1E-2D3F-4A5B-8C6D-7E8F9A0B1C2D") == (n.apns_id, n.job_id)


@pytest.mark.parametrize(
    "job_id", [None, "order-1234", "9a0c5b1e2d3f4a5b8c6d7e8f9a0b1c2d", "{9a0c5b1e-2d3f-4a5b-8c6d-7e8f9a0b1c2d}"]
)
def test_non_uuid_job_id_gets_a_generated_apns_id(job_id):
    """Without a canonical UUID job id the apns-id is generated, and the job id is kept as given."""
    n = one(raw_job(id=job_id if job_id is not None else ...))

    assert UUID_RE.match(n.apns_id)
    assert job_id == n.job_id


def test_fan_out_with_uuid_job_id_gives_each_device_its_own_apns_id():
    """One job UUID cannot name several notifications: fanned-out ones get distinct generated ids."""
    job_uuid = "9a0c5b1e-2d3f-4a5b-8c6d-7e8f9a0b1c2d"

    good, _ = parse(raw_job(token=..., tokens=[TOKEN, OTHER], id=job_uuid))

    assert 2 == len({n.apns_id for n in good} - {job_uuid})


def test_generated_apns_ids_are_unique_canonical_lowercase_uuids():
    """Generated apns-ids are unique within the process and canonical lowercase 8-4-4-4-12."""
    ids = [ApnsIds()() for _ in range(3)] + [ApnsIds()() for _ in range(3)]
    gen = ApnsIds()
    ids += [gen() for _ in range(20_000)]

    assert len(ids) == len(set(ids))
    assert [] == [i for i in ids if not UUID_RE.match(i)]


def test_generated_apns_ids_count_up_across_their_last_two_digits():
    """Consecutive ids end in consecutive 48-bit numbers, also where the last two hex digits wrap."""
    gen = ApnsIds()
    ends = [int(gen()[-12:], 16) for _ in range(600)]

    assert list(range(ends[0], ends[0] + 600)) == ends


# --- single_job / retry_job ----------------------------------------------------------------------


def test_single_job_of_a_plain_job_is_the_raw_job_itself():
    """Re-sending a single-token job unchanged uses the exact bytes the application pushed."""
    raw = raw_job(token=TOKEN.upper())

    assert raw == single_job(one(raw))


def test_single_job_of_a_fan_out_token_sends_only_that_token():
    """One token of a fan-out becomes its own job: same payload and fields, ``token`` instead of ``tokens``."""
    raw = raw_job(token=..., tokens=[TOKEN, OTHER], id="order-7", priority=5)
    second = parse(raw)[0][1]

    job = msgspec.json.decode(single_job(second))

    assert {"token": OTHER, "payload": {"aps": {"alert": "hello"}}, "id": "order-7", "priority": 5} == job
    assert [OTHER] == [n.token for n in parse(single_job(second))[0]]


def test_retry_job_raises_attempts_and_schedules_with_the_same_apns_id():
    """A retried notification goes out again with attempts + 1, its send_at and the apns-id it had."""
    first = one(raw_job(token=TOKEN.upper()))

    again = one(retry_job(first, 1_800_000_000.0))

    assert (TOKEN, 1, first.apns_id, first.payload) == (again.token, again.attempts, again.apns_id, again.payload)
    assert 1_800_000_000.0 == msgspec.json.decode(retry_job(first, 1_800_000_000.0))["send_at"]
    assert 2 == one(retry_job(again, 1_800_000_100.0)).attempts


def test_retry_job_keeps_the_applications_job_id():
    """A retry keeps the job id the application gave, so receipts still match it."""
    first = one(raw_job(id="order-1234"))

    assert "order-1234" == one(retry_job(first, 1.0)).job_id


def test_notifications_in_flight_are_left_out_of_the_cyclic_collector():
    """A parsed notification, even holding its batch, is not one of the objects the garbage collector walks."""
    batch = {"unresolved": {}}
    good, _ = JobParser(LIMITS).parse_many([raw_job(app="legacy")], batch)

    assert [False] == [gc.is_tracked(n) for n in good]
