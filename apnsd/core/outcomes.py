"""Result values for notifications, and the tables that map APNs answers to them."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    """What becomes of a notification once the gateway has answered (or could not)."""

    DELIVERED = "delivered"
    UNREGISTERED = "unregistered"
    DEAD = "dead"
    RETRY = "retry"  # counted attempt, sent again later with backoff


@dataclass(frozen=True, slots=True)
class Outcome:
    """The gateway's verdict on one notification."""

    kind: Kind
    status: int | None = None
    reason: str = ""
    timestamp_ms: int | None = None


DELIVERED = Outcome(Kind.DELIVERED, 200)

BINARY_STATUS_REASONS = {
    0: "NoErrors",
    1: "ProcessingError",
    2: "MissingDeviceToken",
    3: "MissingTopic",
    4: "MissingPayload",
    5: "InvalidTokenSize",
    6: "InvalidTopicSize",
    7: "InvalidPayloadSize",
    8: "InvalidToken",
    10: "Shutdown",
    128: "ProtocolError",
    255: "Unknown",
}
_BINARY_RETRY = frozenset({1, 255})
# Error responses whose identifier names the last notification the gateway processed, not a rejected one:
# 0 (No errors encountered: clients treat the id as accepted) and 10 (Shutdown).
BINARY_PROCESSED = frozenset({0, 10})


def binary_outcome(status: int) -> Outcome:
    """The outcome for the notification a binary error response (command 8) names."""
    reason = BINARY_STATUS_REASONS.get(status, f"Status{status}")
    if status == 8:
        return Outcome(Kind.UNREGISTERED, status, reason)
    if status in _BINARY_RETRY:
        return Outcome(Kind.RETRY, status, reason)
    return Outcome(Kind.DEAD, status, reason)


# Only answers that say the token itself is gone. 400 BadDeviceToken is not one of them: Apple also gives it
# for a token of the other environment (every Xcode debug build registers a sandbox token), and an
# application that prunes what lands in the unregistered store would delete valid tokens.
UNREGISTERED_REASONS = frozenset({"Unregistered", "ExpiredToken"})
BAD_DEVICE_TOKEN = "BadDeviceToken"
# A broadcast to a channel that was deleted (or never existed in this environment): like a gone token, the
# application must stop using it. Recorded in the channels-gone store, not with the tokens.
CHANNEL_NOT_REGISTERED = "ChannelNotRegistered"
# A job naming a configured app, pushed onto a queue that app does not read: requeued to the app's own queue.
WRONG_QUEUE = "wrong_queue"
RETRY_REASONS = frozenset(
    {
        "ExpiredProviderToken",
        "TooManyProviderTokenUpdates",
        "TooManyRequests",
        "InternalServerError",
        "ServiceUnavailable",
        "Shutdown",
        "IdleTimeout",
    }
)
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def http2_outcome(status: int, reason: str = "", timestamp_ms: int | None = None) -> Outcome:
    """The outcome for one HTTP/2 response status and Apple's reason."""
    if status == 200:
        return DELIVERED
    if reason in UNREGISTERED_REASONS or status == 410 or reason == CHANNEL_NOT_REGISTERED:
        return Outcome(Kind.UNREGISTERED, status, reason or "Unregistered", timestamp_ms)
    if reason in RETRY_REASONS or status in _RETRY_STATUSES:
        return Outcome(Kind.RETRY, status, reason or f"HTTP{status}")
    return Outcome(Kind.DEAD, status, reason or f"HTTP{status}")
