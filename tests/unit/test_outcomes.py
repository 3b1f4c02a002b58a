"""The answer → outcome tables: what is an unregistration, what is dead, what is retried."""

from __future__ import annotations

import pytest

from apnsd.core.outcomes import Kind, Outcome, binary_outcome, http2_outcome


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        (410, "Unregistered", Kind.UNREGISTERED),
        (410, "ExpiredToken", Kind.UNREGISTERED),
        (400, "BadDeviceToken", Kind.DEAD),
        (400, "BadTopic", Kind.DEAD),
        (403, "InvalidProviderToken", Kind.DEAD),
        (429, "TooManyRequests", Kind.RETRY),
        (503, "ServiceUnavailable", Kind.RETRY),
        (200, "", Kind.DELIVERED),
    ],
)
def test_http2_answers_map_to_their_kind(status: int, reason: str, expected: Kind) -> None:
    """Each documented HTTP/2 answer maps to the outcome kind the README's table gives."""
    assert expected == http2_outcome(status, reason).kind


def test_bad_device_token_is_dead_lettered_with_its_reason() -> None:
    """BadDeviceToken (also the answer for a token of the other environment) is a dead letter, never unregistered."""
    assert Outcome(Kind.DEAD, 400, "BadDeviceToken") == http2_outcome(400, "BadDeviceToken")


def test_unregistered_keeps_apples_timestamp() -> None:
    """A 410 keeps Apple's timestamp so applications can compare it with the token's last registration."""
    assert Outcome(Kind.UNREGISTERED, 410, "Unregistered", 1_700_000_000_000) == http2_outcome(
        410, "Unregistered", 1_700_000_000_000
    )


def test_binary_status_8_is_an_unregistration() -> None:
    """Binary status 8 (invalid token) goes to the unregistered store, as the binary interface intends."""
    assert Outcome(Kind.UNREGISTERED, 8, "InvalidToken") == binary_outcome(8)
