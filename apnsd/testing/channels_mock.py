"""The mock's Live Activity broadcast side: a channel registry, broadcast judging, and the channel management API.

Requests and answers follow Apple's "Sending channel management requests to APNs", "Sending broadcast
push notification requests to APNs" and its broadcast error table: 201 + ``apns-channel-id`` on create,
200 + JSON on read and list, 204 on delete, 200 on a broadcast, and 400 ``MissingChannelId`` /
``BadChannelId`` / ``ChannelNotRegistered`` / ``BadExpirationDate`` ... otherwise. Choices where Apple is
silent: reading or deleting an unknown channel is 400 ``ChannelNotRegistered``; a body that is not JSON
is 400 ``BadRequestPayload`` on the management API and 400 ``BadPayload`` on a broadcast.
"""

from __future__ import annotations

import base64
import os
import threading
import uuid
from dataclasses import dataclass, field

import msgspec

from apnsd.core.headers import UUID
from apnsd.core.jobs import PUSH_TYPE_SUFFIXES, parse_channel_id
from apnsd.errors import JobError
from apnsd.testing.http2_mock import Http2GatewayConnection, _Request, body_verdict
from apnsd.testing.record import Received

BROADCAST_PREFIX = "/4/broadcasts/apps/"
MANAGE_PREFIX = "/1/apps/"
BROADCAST_PAYLOAD_LIMIT = 5120
MAX_CHANNELS = 10_000  # per app and environment, as Apple allows
_json = msgspec.json.Decoder()


@dataclass
class ChannelRegistry:
    """The channels the mock knows, shared by its gateway and management connections (thread-safe)."""

    channels: dict[str, tuple[str, int]] = field(default_factory=dict)  # channel id → (bundle id, policy)
    requests: list[tuple[str, str, int, str]] = field(default_factory=list)  # (method, path, status, reason)
    connections: int = 0  # TLS connections to the management API
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def create(self, bundle: str, policy: int) -> str | None:
        """A new random channel id, or None when the app has MAX_CHANNELS already."""
        with self._lock:
            if sum(1 for b, _ in self.channels.values() if b == bundle) >= MAX_CHANNELS:
                return None
            channel = base64.b64encode(os.urandom(16)).decode()
            self.channels[channel] = (bundle, policy)
            return channel

    def policy(self, bundle: str, channel: str) -> int | None:
        """The channel's message-storage policy, or None when the app has no such channel."""
        with self._lock:
            entry = self.channels.get(channel)
        return entry[1] if entry is not None and entry[0] == bundle else None

    def delete(self, bundle: str, channel: str) -> bool:
        """Remove a channel; False when the app had no such channel."""
        with self._lock:
            if self.channels.get(channel, ("", 0))[0] != bundle:
                return False
            del self.channels[channel]
            return True

    def of(self, bundle: str) -> list[str]:
        """Every channel id of one app."""
        with self._lock:
            return [c for c, (b, _) in self.channels.items() if b == bundle]

    def connected(self) -> None:
        """Count one completed TLS handshake on the management port."""
        with self._lock:
            self.connections += 1

    def note(self, method: str, path: str, status: int, reason: str) -> None:
        """Record one management request and its answer."""
        with self._lock:
            self.requests.append((method, path, status, reason))


def _bundle_problem(bundle: str, allowed: tuple[str, ...]) -> tuple[int, str]:
    """(0, "") when the credentials may use this bundle id, else the status and reason."""
    if not bundle or "/" in bundle:
        return 404, "BadPath"
    if any(suffix and bundle.endswith(suffix) for suffix in PUSH_TYPE_SUFFIXES.values()):
        return 400, "TopicDisallowed"  # Apple: no push type suffix on the bundle id
    if allowed and bundle not in allowed:
        return 403, "TopicMismatch"
    return 0, ""


def _channel_problem(h: dict[str, str]) -> str:
    """'' when the request names a well-formed channel id, else the reason."""
    channel = h.get("apns-channel-id")
    if channel is None:
        return "MissingChannelId"
    try:
        parse_channel_id(channel)
    except JobError:
        return "BadChannelId"
    return ""


def judge_broadcast(
    h: dict[str, str], body: bytes, registry: ChannelRegistry, allowed: tuple[str, ...]
) -> tuple[int, str]:
    """Status and reason for POST /4/broadcasts/apps/<bundle id> (method and auth already checked)."""
    status, reason = _bundle_problem(h[":path"][len(BROADCAST_PREFIX) :], allowed)
    if status:
        return status, reason
    bundle = h[":path"][len(BROADCAST_PREFIX) :]
    reason = _channel_problem(h)
    if reason:
        return 400, reason
    push_type = h.get("apns-push-type")
    if push_type is None:
        return 400, "MissingPushType"
    if push_type.lower() != "liveactivity":
        return 400, "InvalidPushType"
    if h.get("apns-priority") not in ("10", "5", "1"):
        return 400, "BadPriority"
    expiration = h.get("apns-expiration", "")
    if not (expiration.isascii() and expiration.isdigit()):
        return 400, "BadExpirationDate"
    if "apns-request-id" in h and not UUID.fullmatch(h["apns-request-id"]):
        return 400, "BadMessageId"
    policy = registry.policy(bundle, h["apns-channel-id"])
    if policy is None:
        return 400, "ChannelNotRegistered"
    if policy == 0 and int(expiration) != 0:
        return 400, "BadExpirationDate"  # Apple: a no-storage channel takes expiration 0 only
    return body_verdict(body, BROADCAST_PAYLOAD_LIMIT)


class ChannelApiConnection(Http2GatewayConnection):
    """One client connection to the mock's channel management API (its own port)."""

    def _answer(self, sid: int, req: _Request) -> Received:
        h: dict[str, str] = dict(req.headers)
        request_id = h.get("apns-request-id", "")
        if not UUID.fullmatch(request_id):
            request_id = str(uuid.uuid4())
        status, reason, extra, body = self._manage(h, bytes(req.body))
        self._state.channels.note(h.get(":method", ""), h.get(":path", ""), status, reason)
        headers = [(":status", str(status)), ("apns-request-id", request_id), *extra]
        if status >= 400:
            body = msgspec.json.encode({"reason": reason})
        if body:
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        self._h2.send_headers(sid, headers, end_stream=not body)
        if body:
            self._unsent[sid] = body
            self._send_body(sid)
        else:
            self._open -= 1
        return Received("", b"", request_id, status, reason)

    def _manage(self, h: dict[str, str], body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Status, reason, extra response headers and JSON body for one management request."""
        path, method = h.get(":path", ""), h.get(":method", "")
        bundle, _, resource = path[len(MANAGE_PREFIX) :].partition("/")
        if not path.startswith(MANAGE_PREFIX) or resource not in ("channels", "all-channels"):
            return 404, "BadPath", [], b""
        if method not in (("GET",) if resource == "all-channels" else ("GET", "POST", "DELETE")):
            return 405, "MethodNotAllowed", [], b""
        if self._faults.jwt_public_key is not None:
            reason = self._check_provider_token(h.get("authorization"))
            if reason:
                return 403, reason, [], b""
        status, reason = _bundle_problem(bundle, self._faults.allowed_topics)
        if status:
            return status, reason, [], b""
        registry = self._state.channels
        if resource == "all-channels":
            return 200, "", [], msgspec.json.encode({"channels": registry.of(bundle)})
        if method == "POST":
            return self._create(bundle, body)
        reason = _channel_problem(h)
        if reason:
            return 400, reason, [], b""
        channel = h["apns-channel-id"]
        if method == "GET":
            policy = registry.policy(bundle, channel)
            if policy is None:
                return 400, "ChannelNotRegistered", [], b""
            return 200, "", [], msgspec.json.encode({"message-storage-policy": policy, "push-type": "LiveActivity"})
        if not registry.delete(bundle, channel):
            return 400, "ChannelNotRegistered", [], b""
        return 204, "", [], b""

    def _create(self, bundle: str, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        try:
            spec = _json.decode(body)
        except msgspec.DecodeError:
            return 400, "BadRequestPayload", [], b""
        if not isinstance(spec, dict) or set(spec) != {"message-storage-policy", "push-type"}:
            return 400, "BadRequestParams", [], b""
        if spec["push-type"] != "LiveActivity":
            return 400, "InvalidPushType", [], b""
        policy = spec["message-storage-policy"]
        if type(policy) is not int or policy not in (0, 1):
            return 400, "BadRequestParams", [], b""
        channel = self._state.channels.create(bundle, policy)
        if channel is None:
            return 400, "CannotCreateChannelConfig", [], b""
        return 201, "", [("apns-channel-id", channel)], b""
