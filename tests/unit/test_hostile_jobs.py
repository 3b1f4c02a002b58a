"""Property tests: whatever a queue element holds, parsing and header encoding end in a job rejection at worst."""

from __future__ import annotations

from typing import Any

import hpack
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apnsd.core.jobs import JobParser, Notification, Rejected
from apnsd.errors import JobError
from apnsd.wire.http2.events import RequestTemplate, effective_priority
from apnsd.wire.http2.hpack import RequestEncoder

TOKEN = "c9d4c07cfbbc26d6ef87a44d53e169831096a5d5fd82547556659dddf715defc"
LIMITS = {"default": ("http2", 4096, 5120), "legacy": ("binary", 2048, 2048)}
# Every reason a job can be rejected with (README, "Job format"); anything else is a bug.
REASONS = {
    "not_json",
    "not_object",
    "missing_token",
    "bad_token",
    "bad_token_length",
    "token_is_description",
    "missing_payload",
    "bad_payload",
    "payload_too_large",
    "bad_priority",
    "bad_push_type",
    "bad_expiration",
    "bad_collapse_id",
    "bad_topic",
    "bad_id",
    "bad_attempts",
    "unknown_app",
    "bad_field",
}
# C0, DEL, C1, and the Unicode line/paragraph separators and format characters
CONTROLS = [chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, 0x200B, 0xFEFF)]
HEADER_FIELDS = {"id": "bad_id", "topic": "bad_topic", "collapse_id": "bad_collapse_id", "push_type": "bad_push_type"}
WRONG_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63,
    -(2**63),
    2**70,
    1.5,
    -0.0,
    1e308,
    "",
    "x",
    " ",
    [],
    [1],
    {},
    {"a": 1},
]
FIELDS = ["token", "tokens", "payload", "app", "id", "priority", "expiration", "push_type", "topic", "collapse_id"]
FIELDS += ["send_at", "attempts", "enqueued_at"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
job_fields = st.fixed_dictionaries(
    {},
    optional={
        "token": st.sampled_from([TOKEN, TOKEN.upper(), "<" + TOKEN + ">", "nothex"]) | json_values,
        "tokens": st.lists(st.sampled_from([TOKEN, "ab" * 32, "zz"]), max_size=4) | json_values,
        "payload": st.just({"aps": {"alert": "hi"}}) | json_values,
        "app": st.sampled_from(["default", "legacy", "nope"]) | json_values,
        "id": st.text(max_size=40) | json_values,
        "priority": st.sampled_from([10, 5, 1]) | json_values,
        "expiration": st.integers() | json_values,
        "push_type": st.sampled_from(["alert", "background", "voip"]) | st.text(max_size=12),
        "topic": st.sampled_from(["com.example.app"]) | st.text(max_size=20),
        "collapse_id": st.text(max_size=70),
        "send_at": st.floats() | json_values,
        "attempts": st.integers() | json_values,
        "enqueued_at": st.floats() | json_values,
    },
)


def check(raw: bytes) -> tuple[list[Notification], list[Rejected]]:
    """Parse ``raw``: only known rejection reasons, never silence, and every notification encodes as a request."""
    good, bad = JobParser(LIMITS).parse(raw)
    assert [] == [r.reason for r in bad if r.reason not in REASONS]
    assert good or bad, "a job vanished without an outcome"
    for n in good:
        encode(n)
    return good, bad


def encode(n: Notification) -> None:
    """The notification's request headers encode, and decode back with the same values, free of control characters."""
    block = RequestEncoder().block(
        RequestTemplate("api.push.apple.com", "com.example.app", None),
        n.token,
        n.apns_id,
        len(n.payload),
        n.push_type,
        effective_priority(n.push_type, n.priority),
        n.expiration,
        n.collapse_id,
        n.topic,
    )
    headers = dict(hpack.Decoder().decode(block))
    assert [] == [(k, v) for k, v in headers.items() if any(c in v for c in CONTROLS)]
    assert n.apns_id == headers["apns-id"]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_a_rejection_at_worst(raw):
    """Any bytes at all parse into notifications or rejections with a known reason."""
    check(raw)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_values_are_a_rejection_at_worst(value):
    """Any JSON value (not only objects) parses into notifications or known rejections."""
    check(msgspec.json.encode(value))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(job_fields)
def test_arbitrary_job_objects_are_a_rejection_at_worst(fields):
    """Job objects whose fields hold anything parse into encodable notifications or known rejections."""
    check(msgspec.json.encode(fields))


@pytest.mark.parametrize("depth", [100, 1_000, 10_000, 200_000])
@pytest.mark.parametrize("where", ["payload", "whole", "payload_string", "id", "tokens"])
def test_deep_nesting_anywhere_is_not_json_or_valid(where, depth):
    """Nesting of any depth, anywhere in the job, is either a valid job or not_json: never a RecursionError."""
    nest = b"[" * depth + b"]" * depth
    raws = {
        "payload": b'{"token":"%s","payload":{"a":%s}}' % (TOKEN.encode(), nest),
        "whole": nest,
        "payload_string": b'{"token":"%s","payload":"%s"}' % (TOKEN.encode(), b"[" * depth),
        "id": b'{"token":"%s","payload":{},"id":%s}' % (TOKEN.encode(), nest),
        "tokens": b'{"tokens":%s,"payload":{}}' % nest,
    }

    _, bad = check(raws[where])

    expected = ("not_json", "not_object", "bad_field", "payload_too_large", "bad_payload")
    assert [] == [r.reason for r in bad if r.reason not in expected]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", WRONG_VALUES, ids=repr)
def test_every_field_with_every_wrong_type_is_rejected_not_raised(field, value):
    """Each field holding each JSON type parses into notifications or a known rejection."""
    check(msgspec.json.encode({"token": TOKEN, "payload": {"aps": {}}, field: value}))


@pytest.mark.parametrize("field", sorted(HEADER_FIELDS))
@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_header_values_with_any_control_character_are_rejected_with_their_reason(field, char, where):
    """A control character anywhere in id, topic, collapse_id or push_type rejects the job with that field's reason."""
    base = {"id": "0a0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a", "topic": "com.example.app", "collapse_id": "server-1"}
    base["push_type"] = "alert"
    value = base[field]
    value = {"start": char + value, "middle": value[:3] + char + value[3:], "end": value + char}[where]

    good, bad = check(msgspec.json.encode({"token": TOKEN, "payload": {}, field: value}))

    assert ([], [HEADER_FIELDS[field]]) == (good, [r.reason for r in bad])


def test_a_uuid_with_a_trailing_newline_is_rejected_not_sent():
    """The reported case: a UUID id followed by LF was used as apns-id as it was; now it is bad_id."""
    good, bad = check(b'{"token":"%s","payload":{},"id":"0a0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a\\n"}' % TOKEN.encode())

    assert ([], ["bad_id"]) == (good, [r.reason for r in bad])


@pytest.mark.parametrize("attempts", [-1, -1_000_000, 10**7])
def test_attempts_out_of_range_are_rejected(attempts):
    """A job's own attempts must be a whole number from 0 to 1,000,000."""
    _, bad = check(msgspec.json.encode({"token": TOKEN, "payload": {}, "attempts": attempts}))

    assert ["bad_attempts"] == [r.reason for r in bad]


@pytest.mark.parametrize("field", ["send_at", "enqueued_at", "expiration", "attempts"])
@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"NaN", b"Infinity"])
def test_numbers_beyond_a_float_are_not_json_never_an_infinity(field, number):
    """JSON has no NaN or infinity, and a number too large for a float is refused: no time can be non-finite."""
    _, bad = check(b'{"token":"%s","payload":{},"%s":%s}' % (TOKEN.encode(), field.encode(), number))

    assert ["not_json"] == [r.reason for r in bad]


def test_a_fan_out_of_thousands_of_bad_tokens_is_one_rejection_holding_the_job_once():
    """3,000 invalid tokens become one rejection whose job is no larger than the input."""
    raw = msgspec.json.encode({"tokens": [f"zz{i:062d}" for i in range(3000)], "payload": {"aps": {"alert": "x"}}})

    good, bad = check(raw)

    assert ([], 1, 3000) == (good, len(bad), len(bad[0].tokens or {}))
    assert len(bad[0].raw) <= len(raw)


@pytest.mark.parametrize(
    ("step", "job"),
    [
        ("_plain", {"token": TOKEN, "payload": {}}),  # the common shape's fast path
        ("_common", {"token": TOKEN, "payload": {}, "priority": 5}),  # the full path
    ],
)
def test_a_bug_while_validating_dead_letters_the_job_as_internal_error(monkeypatch, step, job):
    """An unexpected exception inside the parser costs the job (internal_error:<Class>), not the caller."""
    parser = JobParser(LIMITS)
    monkeypatch.setattr(parser, step, lambda *args: 1 / 0)

    good, bad = parser.parse(msgspec.json.encode(job))

    assert ([], ["internal_error:ZeroDivisionError"]) == (good, [r.reason for r in bad])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(max_size=30),
    st.one_of(st.none(), st.text(max_size=30)),
    st.one_of(st.none(), st.text(max_size=30)),
)
@example("a", "\ud800", None)  # lone surrogates: st.text() leaves them out, Python callers can pass them
@example("\udfff", None, None)
@example("a", None, "x\ud800")
def test_the_header_encoder_fed_any_text_encodes_or_rejects_the_job(topic, collapse_id, push_type):
    """Behind the parser, the encoder itself turns a value HTTP/2 forbids into a job rejection, never a bad field."""
    try:
        block = RequestEncoder().block(
            RequestTemplate("api.push.apple.com", None, None), TOKEN, "a", 2, push_type, None, None, collapse_id, topic
        )
    except JobError as exc:
        assert "bad_header_value" == exc.reason
        return
    headers = dict(hpack.Decoder().decode(block))
    assert [] == [v for v in headers.values() if "\0" in v or "\r" in v or "\n" in v or v != v.strip(" \t")]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"token":"%s","payload":{"aps":{"alert":"\xff"}}}',  # the common shape (fast path)
        b'{"token":"%s","payload":{"\xc3":1},"priority":5}',  # the full path
        b'{"token":"%s","payload":"{\\"a\\":\\"\xe2\x82\\"}"}',  # a pre-encoded payload string
        b'{"tokens":["%s"],"payload":{"a":"\xed\xa0\x80"}}',  # a UTF-8-encoded surrogate
        b'{"token":"%s","payload":{},"note":"\xff"}',  # a key apnsd does not read
    ],
)
def test_bytes_that_are_not_utf8_anywhere_in_the_job_are_not_json(raw):
    """JSON is UTF-8: invalid bytes inside the payload (which is kept as pushed) reject the job, never reach APNs."""
    good, bad = check(raw.replace(b"%s", TOKEN.encode()))

    assert ([], ["not_json"]) == (good, [r.reason for r in bad])
