"""Property tests: the common job shape's fast path gives exactly what the full parser gives, or declines."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apnsd.core.jobs import JobParser, JobSpec, Notification, Rejected

TOKEN = "c9d4c07cfbbc26d6ef87a44d53e169831096a5d5fd82547556659dddf715defc"
LIMITS = {"default": ("http2", 4096, 5120), "legacy": ("binary", 256, 5120)}
UUID = "9A0C3E4B-1D2F-4A5B-8C6D-7E8F9A0B1C2D"


class FullParser(JobParser):
    """The parser with its fast path switched off: every job takes the full path."""

    def _plain(self, raw: bytes, spec: JobSpec, batch: Any) -> Notification | None:
        """Always decline."""
        return None


def parsers() -> tuple[JobParser, JobParser]:
    """A parser and its full-path twin, with the same (fixed) generated apns-id."""
    fast, full = JobParser(LIMITS), FullParser(LIMITS)
    fast.new_id = full.new_id = lambda: "generated"  # type: ignore[method-assign]
    return fast, full


def fields(n: Notification) -> dict[str, Any]:
    """Every field of a notification (they compare by identity), the job id as its readers see it."""
    out = {name: getattr(n, name) for name in n.__struct_fields__ if name != "_job_id"}
    return {**out, "job_id": n.job_id}


def outcome(parsed: tuple[list[Notification], list[Rejected]]) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """The notifications' fields, and the rejections."""
    good, bad = parsed
    return [fields(n) for n in good], bad


tokens = st.one_of(
    st.just(TOKEN),
    st.just(TOKEN.upper()),
    st.just(f"<{TOKEN[:8]} {TOKEN[8:]}>"),
    st.just(TOKEN + "\n"),
    st.just(TOKEN[:-1]),
    st.just(TOKEN[:62]),
    st.just("ab" * 100),
    st.just("ab" * 101),
    st.just(TOKEN[:-1] + "g"),
    st.just(""),
    st.text("0123456789abcdefABCDEF <>\t", max_size=210),
)
payloads = st.one_of(
    st.just({"aps": {"alert": "hi"}}),
    st.just({"aps": {"content-available": 1}}),
    st.just({"aps": {"alert": "x" * 300}}),  # over the binary app's 256-byte limit
    st.just({"aps": {"alert": "x" * 230, "pad": " "}}),
    st.just('{"aps": {"alert": "pre-encoded"}}'),
    st.just({"aps": {"alert": "content-available"}}),
    st.just([]),
    st.just(None),
    st.just(7),
    st.dictionaries(st.text(max_size=8), st.text(max_size=40), max_size=4),
)
ids = st.one_of(
    st.just(UUID),
    st.just(UUID.lower()),
    st.just(UUID[:-1] + "g"),
    st.just("x" * 36),
    st.just("x" * 256),
    st.just("x" * 257),
    st.just(""),
    st.just(" a"),
    st.just("a "),
    st.just("a\nb"),
    st.just("a\u2028b"),
    st.text(max_size=40),
)
# Fields the fast path takes as they are, and options whose presence sends a job to the full path.
plain_fields = st.fixed_dictionaries(
    {"app": st.sampled_from(["default", "legacy", "legacy", "other"])},
    optional={
        "id": ids,
        "attempts": st.one_of(st.integers(-2, 3), st.sampled_from([1_000_000, 1_000_001, 2**40])),
        "enqueued_at": st.floats(allow_nan=False, allow_infinity=False),
        "send_at": st.floats(0, 2e9),
        "failing_since": st.floats(0, 2e9),
        "unknown": st.text(max_size=5),
    },
)
options = st.fixed_dictionaries(
    {},
    optional={
        "priority": st.sampled_from([5, 10, 1]),
        "expiration": st.sampled_from([0, 1790000000]),
        "topic": st.sampled_from(["com.example.app", "com.example.app.voip"]),
        "push_type": st.sampled_from(["alert", "voip", "background"]),
        "collapse_id": st.sampled_from(["c1"]),
        "tokens": st.lists(tokens, max_size=2),
        "channel": st.sampled_from(["dGVzdA=="]),
    },
)
extras = st.one_of(plain_fields, st.builds(lambda a, b: {**a, **b}, plain_fields, options))


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(tokens, payloads, extras)
@example(TOKEN, {"aps": {"alert": "x" * 300}}, {"app": "legacy"})  # over the limit by itself
@example(TOKEN, {"aps": {"alert": "x"}}, {"app": "legacy", "id": "a "})  # a trailing space
def test_the_fast_path_and_the_full_parser_agree_on_every_job(token, payload, extra):
    """For any job near the common shape, both parsers give the same notifications and the same rejections."""
    raw = msgspec.json.encode({"token": token, "payload": payload, **extra})
    fast, full = parsers()

    assert outcome(full.parse(raw)) == outcome(fast.parse(raw))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_the_fast_path_and_the_full_parser_agree_on_arbitrary_bytes(raw):
    """Whatever bytes a queue element holds, both parsers give the same outcome."""
    fast, full = parsers()

    assert outcome(full.parse(raw)) == outcome(fast.parse(raw))


def test_the_common_shape_takes_the_fast_path():
    """A one-token job without options is decided by the fast path itself, not handed on."""
    raw = msgspec.json.encode({"token": TOKEN, "id": "job-1", "payload": {"aps": {"alert": "hi"}}, "app": "legacy"})
    fast, _ = parsers()

    note = fast._plain(raw, msgspec.json.decode(raw, type=JobSpec), None)

    assert note is not None
    assert (bytes.fromhex(TOKEN), "job-1", "") == (note.token_bytes, note.job_id, note.apns_id)
