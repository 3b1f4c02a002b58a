"""When a retryable notification is tried again, by the reason it failed, and when it gives up (by time)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from apnsd.core.pacing import retry_delay

# APNs is down or going away: back off for minutes, as Apple asks, rather than seconds.
OUTAGE_REASONS = frozenset({"InternalServerError", "ServiceUnavailable", "Shutdown"})
OUTAGE_STATUSES = frozenset({500, 502, 503, 504})
# Too many pushes to one device: that token waits; others are unaffected.
THROTTLE_REASONS = frozenset({"TooManyRequests"})
# The provider token, not the notification, was at fault: fix the token and try again without counting it.
UNCOUNTED_REASONS = frozenset({"ExpiredProviderToken", "TooManyProviderTokenUpdates", "UnrelatedKeyIdInToken"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """One app's retry settings (see ``AppConfig``)."""

    backoff: float = 2.0  # first delay for other retryable answers (stream reset, IdleTimeout, binary 1/255)
    outage_backoff: float = 60.0  # first delay after 500/503/Shutdown; doubles per attempt
    outage_backoff_max: float = 900.0  # longest delay between two tries of one notification
    throttle_delay: float = 60.0  # first delay after 429 TooManyRequests; doubles per attempt
    retry_for: float = 86_400.0  # give up this long after the first retryable failure
    max_attempts: int = 0  # 0 = no count limit: time (retry_for, expiration) decides


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Try again at ``at`` (``counted``: whether it spends an attempt), or give up (``at`` None) and why."""

    at: float | None
    counted: bool = True
    gave_up: str = ""


def decide(
    policy: RetryPolicy,
    status: int | None,
    reason: str,
    attempts: int,
    failing_since: float | None,
    expiration: int | None,
    now: float,
    rng: random.Random,
) -> RetryDecision:
    """The next try of a notification whose latest answer was retryable, or the end of its retries."""
    counted = reason not in UNCOUNTED_REASONS
    if counted and policy.max_attempts and attempts + 1 >= policy.max_attempts:
        return RetryDecision(None, gave_up=f"gave up after {policy.max_attempts} attempt(s) (max_attempts)")
    if reason in OUTAGE_REASONS or status in OUTAGE_STATUSES:
        delay = retry_delay(attempts, policy.outage_backoff, rng, policy.outage_backoff_max)
    elif reason in THROTTLE_REASONS:
        delay = retry_delay(attempts, policy.throttle_delay, rng, policy.outage_backoff_max)
    elif not counted:
        delay = retry_delay(0, policy.backoff, rng)
    else:
        delay = retry_delay(attempts, policy.backoff, rng, policy.outage_backoff_max)
    at = now + delay
    if expiration and at >= expiration:
        return RetryDecision(None, gave_up="gave up: the notification's expiration passes before the next try")
    if at > (failing_since if failing_since is not None else now) + policy.retry_for:
        return RetryDecision(None, gave_up=f"gave up: still failing after retry_for = {policy.retry_for:g} s")
    return RetryDecision(at, counted)
