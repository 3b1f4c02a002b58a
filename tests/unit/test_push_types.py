"""Push types by default: inference from topic and payload, Apple's priority and topic-suffix rules."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from apnsd.core.jobs import JobParser
from apnsd.core.push_types import PUSH_TYPE_SUFFIXES, infer_push_type, is_silent, topic_for

TOKEN = "ab" * 32
LIMITS = {"default": ("http2", 4096, 5120)}
SILENT = {"aps": {"content-available": 1}, "sync": 7}


def parse(**fields: Any) -> tuple[list[Any], list[Any]]:
    """Parse one job with the daemon's parser (token defaults to a valid one)."""
    fields.setdefault("token", TOKEN)
    return JobParser(LIMITS).parse(msgspec.json.encode(fields))


def push_type_of(**fields: Any) -> str:
    """The push type the parser gives a valid job."""
    good, bad = parse(**fields)
    assert [] == bad
    return good[0].push_type


def rejection(**fields: Any) -> str:
    """The reason the parser rejects a job."""
    good, bad = parse(**fields)
    assert [] == good
    return bad[0].reason


@pytest.mark.parametrize(
    "payload,expected",
    [
        ({"aps": {"alert": "hi"}}, "alert"),
        ({"aps": {"badge": 1}}, "alert"),
        (SILENT, "background"),
        ({"aps": {"content-available": 1, "alert": "hi"}}, "alert"),
        ({"aps": {"content-available": 1, "badge": 2}}, "alert"),
        ({"note": "content-available"}, "alert"),
        ({"aps": {}}, "alert"),
    ],
)
def test_a_job_without_push_type_gets_background_only_for_a_content_available_only_aps(payload, expected):
    """A job without push_type is background when its aps holds only content-available, else alert."""
    assert expected == push_type_of(payload=payload)


@pytest.mark.parametrize("push_type", sorted(t for t, s in PUSH_TYPE_SUFFIXES.items() if s))
def test_the_topic_suffix_decides_the_push_type_first(push_type):
    """A topic ending in a push type's suffix gives that type, even for a silent-looking payload."""
    assert push_type == push_type_of(payload=SILENT, topic="com.example.app" + PUSH_TYPE_SUFFIXES[push_type])


def test_an_mdm_topic_gives_the_mdm_push_type():
    """A topic in Apple's MDM namespace gives push type mdm."""
    assert "mdm" == infer_push_type("com.apple.mgmt.External.1234", b'{"mdm":"x"}')


def test_an_explicit_push_type_is_kept():
    """A job's own push_type wins over inference."""
    assert "alert" == push_type_of(payload=SILENT, push_type="alert")


def test_background_with_priority_ten_is_rejected_given_or_inferred():
    """Priority 10 with a background push (given or inferred) is bad_priority, as Apple calls it an error."""
    assert ["bad_priority", "bad_priority"] == [
        rejection(payload=SILENT, priority=10),
        rejection(payload={"aps": {"alert": "x"}}, push_type="background", priority=10),
    ]


def test_an_explicit_topic_without_the_types_suffix_is_rejected():
    """push_type voip with a bare bundle-id topic is bad_topic naming the suffix it needs."""
    good, bad = parse(payload={"aps": {}}, push_type="voip", topic="com.example.app")

    assert ([], "bad_topic") == (good, bad[0].reason)
    assert "'.voip'" in bad[0].detail


def test_an_explicit_topic_with_the_suffix_is_accepted():
    """push_type liveactivity with a topic ending in .push-type.liveactivity passes."""
    assert "liveactivity" == push_type_of(
        payload={"aps": {}}, push_type="liveactivity", topic="com.example.app.push-type.liveactivity"
    )


def test_a_topic_inferred_voip_job_gets_the_voip_payload_limit():
    """A job whose topic ends in .voip may carry up to 5120 bytes, the VoIP limit."""
    payload = {"aps": {}, "x": "y" * 5000}
    assert ("voip", "payload_too_large") == (
        push_type_of(payload=payload, topic="com.example.app.voip"),
        rejection(payload=payload),
    )


@pytest.mark.parametrize(
    "bundle,push_type,expected",
    [
        ("com.example.app", "voip", "com.example.app.voip"),
        ("com.example.app", "liveactivity", "com.example.app.push-type.liveactivity"),
        ("com.example.app", "alert", "com.example.app"),
        ("com.example.app.voip", "voip", "com.example.app.voip"),
        (None, "voip", None),
    ],
)
def test_topic_for_appends_the_push_types_suffix_once(bundle, push_type, expected):
    """The app's topic gets its push type's suffix, never twice, and no topic stays no topic."""
    assert expected == topic_for(bundle, push_type)


@pytest.mark.parametrize("payload", [b"not json", b"[1]", b'{"aps": "content-available"}'])
def test_is_silent_is_false_for_malformed_payloads(payload):
    """A payload that is not an object with an aps object is never taken for a silent push."""
    assert False is is_silent(payload)
