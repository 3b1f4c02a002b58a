"""Values of the HTTP/2 client core: the request template, the events it returns, its errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from apnsd.errors import GatewayError, ProtocolError
from apnsd.wire.http2.frames import ERROR_NAMES


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """The header values shared by every request of one app on one connection."""

    authority: str
    topic: str | None = None
    authorization: str | None = None  # "bearer <jwt>"; a rotated JWT means a new template


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """APNs answered a request: status, the reason/timestamp of an error body, and (when read) the
    response's apns-id and apns-unique-id (development environment only)."""

    stream_id: int
    status: int
    reason: str = ""
    timestamp_ms: int | None = None
    apns_id: str = field(default="", compare=False)  # metadata: events are equal by what APNs decided
    unique_id: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The server reset a stream before answering; REFUSED_STREAM (7) means it never processed it."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The server is closing: streams above ``last_stream_id`` were not processed."""

    last_stream_id: int
    error_code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """The server's settings after a SETTINGS frame (already acknowledged)."""

    max_concurrent_streams: int
    initial_window_size: int
    max_frame_size: int


@dataclass(frozen=True, slots=True)
class PingAcked:
    """The server answered one of our PINGs."""

    payload: bytes


Event = ResponseReceived | StreamReset | GoAwayReceived | SettingsChanged | PingAcked
# What receive_data returns: events, and with ``compact`` a plain 200 as just its stream id.
CompactEvent = Event | int


class NoStreamAvailable(GatewayError):
    """No stream can be opened now: the concurrency limit is reached, or the connection is ending."""


def effective_priority(push_type: str | None, priority: int | None) -> int | None:
    """The apns-priority to send: background pushes default to 5, since Apple rejects 10 for them."""
    if priority is None and push_type == "background":
        return 5
    return priority


_json = msgspec.json.Decoder()


def decode_response_reason(body: bytes) -> tuple[str, int | None]:
    """Reason and timestamp (ms) from an APNs error body ``{"reason": ..., "timestamp": ...}``."""
    try:
        obj = _json.decode(body)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested deeper than the decoder goes
        return "", None
    if not isinstance(obj, dict):
        return "", None
    reason, ts = obj.get("reason"), obj.get("timestamp")
    return (reason if isinstance(reason, str) else "", ts if isinstance(ts, int) and not isinstance(ts, bool) else None)


class H2ProtocolError(ProtocolError):
    """The server broke HTTP/2; a GOAWAY is queued. ``events`` are the answers read before the fault."""

    def __init__(self, error_code: int, message: str, events: list[CompactEvent]) -> None:
        super().__init__(f"{ERROR_NAMES.get(error_code, error_code)}: {message}")
        self.error_code = error_code
        self.events = events
