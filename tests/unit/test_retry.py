"""Retry policy by reason and by time: outages back off for minutes, throttling delays a token, time ends retries."""

from __future__ import annotations

import random

import pytest

from apnsd.core.retry import RetryPolicy, decide

NOW = 1_800_000_000.0
POLICY = RetryPolicy()


def next_try(reason: str, status: int | None = None, attempts: int = 0, **kw: object) -> tuple[float | None, bool]:
    """Delay until the next try (None = give up) and whether it spends an attempt."""
    policy = kw.pop("policy", POLICY)
    d = decide(
        policy,  # type: ignore[arg-type]
        status,
        reason,
        attempts,
        kw.get("failing_since"),  # type: ignore[arg-type]
        kw.get("expiration"),  # type: ignore[arg-type]
        NOW,
        random.Random(1),
    )
    return (None if d.at is None else d.at - NOW), d.counted


@pytest.mark.parametrize(
    "reason,status", [("InternalServerError", 500), ("ServiceUnavailable", 503), ("Shutdown", 503), ("", 502)]
)
def test_an_outage_answer_backs_off_for_at_least_half_a_minute_and_grows_to_minutes(reason, status):
    """500/503/Shutdown wait outage_backoff (with jitter down to half) at first and minutes after a few tries."""
    first, _ = next_try(reason, status)
    fifth, _ = next_try(reason, status, attempts=4)

    assert 30.0 <= first <= 60.0
    assert 450.0 <= fifth <= 900.0


def test_too_many_requests_waits_the_throttle_delay():
    """429 TooManyRequests delays that token by throttle_delay (jitter down to half)."""
    delay, counted = next_try("TooManyRequests", 429)

    assert (True, True) == (30.0 <= delay <= 60.0, counted)


@pytest.mark.parametrize("reason", ["ExpiredProviderToken", "TooManyProviderTokenUpdates", "UnrelatedKeyIdInToken"])
def test_provider_token_answers_retry_soon_without_spending_an_attempt(reason):
    """A provider-token problem is the token's fault: a short delay and no attempt counted."""
    delay, counted = next_try(reason, 403, attempts=50, policy=RetryPolicy(max_attempts=3))

    assert (True, False) == (delay is not None and delay <= 2.0, counted)


def test_an_hour_long_outage_does_not_give_up():
    """An hour of 503s keeps retrying: only retry_for (24 h by default) ends it, not the attempt count."""
    delay, _ = next_try("ServiceUnavailable", 503, attempts=12, failing_since=NOW - 3600)

    assert delay is not None and delay <= 900.0


def test_retries_end_after_retry_for():
    """A notification failing for longer than retry_for gives up."""
    assert (None, True) == next_try("ServiceUnavailable", 503, attempts=3, failing_since=NOW - 86_400)


def test_retries_end_when_the_expiration_passes_before_the_next_try():
    """A next try that would fall after the notification's expiration gives up instead."""
    assert (None, True) == next_try("ServiceUnavailable", 503, expiration=int(NOW) + 10)


def test_max_attempts_still_caps_counted_tries_when_set():
    """max_attempts > 0 ends counted retries after that many attempts."""
    assert (None, True) == next_try("InternalServerError", 500, attempts=2, policy=RetryPolicy(max_attempts=3))
