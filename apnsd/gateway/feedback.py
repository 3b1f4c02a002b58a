"""Polls the legacy binary feedback service and records the tokens it reports as unregistered."""

from __future__ import annotations

import select
import time
from functools import partial

import msgspec

from apnsd.config import AppConfig
from apnsd.core.jobs import MAX_TOKEN_BYTES, MIN_TOKEN_BYTES
from apnsd.errors import GatewayError
from apnsd.gateway.credentials import AppCredentials, client_context, verify_hostname
from apnsd.gateway.transport import TlsTransport
from apnsd.wire import binary

# A tuple is 38 bytes: this is ~1.7 million tokens in one poll. A service sending more (one streaming without end)
# is read no further, so that it cannot grow the daemon's memory without bound.
MAX_FEEDBACK_BYTES = 64 * 1024 * 1024


def poll_feedback(app: AppConfig, creds: AppCredentials) -> list[tuple[int, str]]:
    """Connect once, read every (timestamp, token) tuple until the service closes (or the cap), and return those
    whose token has a device token's length."""
    host, port = app.feedback_gateway()
    t = TlsTransport(
        host,
        port,
        client_context(creds.identity, app.ca_file),
        timeout=app.connect_timeout,
        verify_host=verify_hostname,
        proxy=app.proxy,
        newer_context=partial(client_context, creds.identity, app.ca_file, tls13=True),
    )
    t.connect()
    buf = bytearray()
    deadline = time.monotonic() + app.connect_timeout
    try:
        while not t.closed and time.monotonic() < deadline and len(buf) < MAX_FEEDBACK_BYTES:
            select.select([t.fileno()], [], [], max(0.0, deadline - time.monotonic()))
            try:
                buf += t.read()
            except GatewayError:
                break
    finally:
        t.close()
    tuples, _ = binary.parse_feedback(buf[:MAX_FEEDBACK_BYTES])
    return [(ts, token.hex()) for ts, token in tuples if MIN_TOKEN_BYTES <= len(token) <= MAX_TOKEN_BYTES]


def unregistered_entries(app_name: str, tuples: list[tuple[int, str]], now: float) -> dict[str, bytes]:
    """The unregistered-store values for feedback tuples (Apple's time in milliseconds)."""
    return {
        token: msgspec.json.encode(
            {"app": app_name, "reason": "Feedback", "status": None, "timestamp_ms": ts * 1000, "time": round(now, 3)}
        )
        for ts, token in tuples
    }
