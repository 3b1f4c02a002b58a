"""Sans-IO APNs gateway emulator over HTTP/2 on h2's server side: bytes in, bytes out.

It validates requests as APNs documents (status + ``{"reason": ...}``), records every answer
in a MockRecord, advertises one stream until the first accepted request like APNs, and
injects faults (rejected token prefixes and error bursts with any of Apple's reasons, GOAWAY with
any reason, abrupt close, a stalled link), applies the per-connection provider-token rules, answers
a token of the other environment with BadDeviceToken and, in sandbox mode, sends apns-unique-id. Reasons APNs
does not document, chosen here: a body that is not a JSON object gets 400 ``BadPayload``; a
topic without the suffix its push type needs gets 400 ``BadTopic``. The socket server that
drives it lives in ``apnsd.testing.mock``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import msgspec

from apnsd.core.headers import UUID
from apnsd.core.jobs import MAX_COLLAPSE_ID, MAX_TOKEN_BYTES, MIN_TOKEN_BYTES, PUSH_TYPE_SUFFIXES
from apnsd.testing.record import MockRecord, Received

PAYLOAD_LIMIT, VOIP_PAYLOAD_LIMIT = 4096, 5120
# Apple's table of error reasons and their statuses ("Handling notification responses from APNs").
APPLE_REASONS: dict[str, int] = {
    "BadCollapseId": 400,
    "BadDeviceToken": 400,
    "BadExpirationDate": 400,
    "BadMessageId": 400,
    "BadPriority": 400,
    "BadTopic": 400,
    "DeviceTokenNotForTopic": 400,
    "DuplicateHeaders": 400,
    "IdleTimeout": 400,
    "InvalidPushType": 400,
    "MissingDeviceToken": 400,
    "MissingTopic": 400,
    "PayloadEmpty": 400,
    "TopicDisallowed": 400,
    "BadCertificate": 403,
    "BadCertificateEnvironment": 403,
    "ExpiredProviderToken": 403,
    "Forbidden": 403,
    "InvalidProviderToken": 403,
    "MissingProviderToken": 403,
    "UnrelatedKeyIdInToken": 403,
    "BadEnvironmentKeyIdInToken": 403,
    "BadPath": 404,
    "MethodNotAllowed": 405,
    "ExpiredToken": 410,
    "Unregistered": 410,
    "PayloadTooLarge": 413,
    "TooManyProviderTokenUpdates": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}
# Which environment a token belongs to, for the mock: tokens starting with the other environment's
# marker are answered BadDeviceToken, as APNs answers a sandbox token sent to production. Unmarked
# tokens are valid in both.
ENVIRONMENT_TOKEN_PREFIXES = {"production": "9e0d0c75", "sandbox": "5a1db0c5"}  # 32 bits: no random token collides
TOKEN_UPDATE_INTERVAL = 1200.0  # APNs accepts a new provider token on a connection at most every 20 minutes
_PATH_PREFIX = "/3/device/"
_BROADCAST_PREFIX = "/4/broadcasts/apps/"
_HEX = frozenset("0123456789abcdefABCDEF")
_UUID = UUID  # what Apple accepts as apns-id: the same full-string rule the client applies
_GC_EVERY = 256  # answered streams between sweeps of h2's closed streams
_json = msgspec.json.Decoder()


@dataclass(frozen=True)
class Http2Faults:
    """How the emulated gateway behaves: limits, validation inputs and injected faults."""

    max_concurrent_streams: int = 1000
    initial_streams: int = 1  # advertised until the first accepted request, like APNs
    reject_prefixes: tuple[tuple[str, int, str], ...] = ()  # (token hex prefix, status, reason)
    burst_status: tuple[int, str, int] | None = None  # (status, reason, count) for the server's first valid requests
    burst_after: int = 0  # valid requests answered normally before the burst starts
    goaway_after: int = 0  # GOAWAY and close after N answered requests on a connection; 0 = never
    close_after: int = 0  # drop the connection without GOAWAY right after answering its N-th request; 0 = never
    once: bool = True  # goaway/close fire on the server's first connection only
    allowed_topics: tuple[str, ...] = ()  # empty = any topic
    kill_prefixes: tuple[str, ...] = ()  # a request for such a token ends the connection: GOAWAY PROTOCOL_ERROR
    jwt_public_key: object | None = None  # set = token auth: ES256 provider tokens required
    jwt_key_id: str | None = None  # expected JWT "kid" under token auth; None = any
    jwt_team_id: str | None = None  # expected JWT "iss" under token auth; None = any
    goaway_reason: str = (
        "Shutdown"  # the reason in the GOAWAY that goaway_after sends (any of Apple's, e.g. IdleTimeout)
    )
    idle_timeout: float = 0.0  # GOAWAY IdleTimeout after this many seconds without a request; 0 = never
    stall_after: int = 0  # after N answered requests, read but never answer or ACK anything (a dead link); 0 = never
    environment: str = "production"  # "sandbox" adds apns-unique-id to answers; see ENVIRONMENT_TOKEN_PREFIXES
    unregistered_age: float = 86_400.0  # a 410's timestamp: when the token was last seen valid, this long ago


def body_verdict(body: bytes, limit: int) -> tuple[int, str]:
    """Status and reason for a request body: present, within ``limit`` bytes, a JSON object."""
    if not body:
        return 400, "PayloadEmpty"
    if len(body) > limit:
        return 413, "PayloadTooLarge"
    try:
        if not isinstance(_json.decode(body), dict):
            return 400, "BadPayload"
    except msgspec.DecodeError:
        return 400, "BadPayload"
    return 200, ""


class FaultState:
    """What the connections of one mock server share: connection count and the burst budget."""

    def __init__(self) -> None:
        from apnsd.testing.channels_mock import ChannelRegistry

        self._lock = threading.Lock()
        self._connections = 0
        self._burst_used = 0
        self.channels = ChannelRegistry()  # Live Activity broadcast channels, shared with the management API

    def next_connection(self) -> int:
        """The 0-based index of a new connection."""
        with self._lock:
            self._connections += 1
            return self._connections - 1

    def take_burst(self, count: int, after: int = 0) -> bool:
        """True for the server's calls after the first ``after``, ``count`` of them: those get the burst status."""
        with self._lock:
            self._burst_used += 1
            return after < self._burst_used <= after + count


class _ServerConnection(h2.connection.H2Connection):
    """h2's server connection without its per-stream walk over every open stream.

    h2 counts open streams by iterating all of them whenever a stream opens (O(n) per request
    at 1,000 concurrent streams) and turns excess into a connection error; the gateway counts
    streams itself, refuses excess streams with RST_STREAM, and sweeps closed streams in batches.
    """

    @property
    def open_inbound_streams(self) -> int:
        """Always 0, so h2 never enforces the limit itself."""
        return 0

    def sweep_closed_streams(self) -> None:
        """Let h2 move closed streams out of its stream table."""
        self._open_streams(1)


@dataclass(slots=True)
class _Request:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)


class Http2GatewayConnection:
    """One client connection to the emulated APNs gateway."""

    def __init__(self, faults: Http2Faults, state: FaultState, record: MockRecord, now: Callable[[], float]) -> None:
        self._faults = faults
        self._state = state
        self._record = record
        self._now = now
        index = state.next_connection()
        self._faulty = not faults.once or index == 0
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self._h2 = _ServerConnection(config=config)
        self._h2.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: faults.initial_streams}
        )
        self._requests: dict[int, _Request] = {}
        self._unsent: dict[int, bytes] = {}  # response bodies waiting for the client's window
        self._open = 0
        self._answered = 0
        self._raised = faults.initial_streams == faults.max_concurrent_streams
        self._jwt_seen: tuple[str, int, str] = ("", -1, "")  # (token, whole second, verdict) of the last check
        self._jwt_current = ""  # the provider token in use on this connection, and since when
        self._jwt_since = 0.0
        self._first_kid: object = None  # the key id of the connection's first accepted token
        self.stalled = False  # a dead link: bytes are read and dropped, nothing is ever written
        self.closed = False  # the socket owner should close the connection
        self.abrupt = False  # ... without a TLS close_notify

    def initiate(self) -> bytes:
        """The server preface: SETTINGS with MAX_CONCURRENT_STREAMS = faults.initial_streams."""
        self._h2.initiate_connection()
        return self._h2.data_to_send()

    def receive(self, data: bytes) -> bytes:
        """Process bytes from the client; returns the bytes to write back."""
        if self.closed or self.stalled:
            return b""
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True  # h2 has queued a GOAWAY naming the error
            return self._h2.data_to_send()
        answered: list[Received] = []
        # Requests completed by this read are answered after every stream it opened has been
        # counted, as a server working on them concurrently would: a client that opens more
        # streams than allowed in one burst is caught even though each request is answered at once.
        complete: list[tuple[int, _Request]] = []
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                # header_encoding='utf-8' makes h2 hand over (str, str) pairs.
                self._open_stream(ev.stream_id, cast(list[tuple[str, str]], ev.headers))
            elif isinstance(ev, h2.events.DataReceived):
                self._h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                req = self._requests.get(ev.stream_id)
                if req is not None:
                    req.body += ev.data
            elif isinstance(ev, h2.events.StreamEnded):
                req = self._requests.pop(ev.stream_id, None)
                if req is not None:
                    complete.append((ev.stream_id, req))
            elif isinstance(ev, h2.events.StreamReset):
                if (
                    self._requests.pop(ev.stream_id, None) is not None
                    or self._unsent.pop(ev.stream_id, None) is not None
                ):
                    self._open -= 1
            elif isinstance(ev, h2.events.WindowUpdated):
                self._flush_bodies()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True  # h2 sends nothing after the client's GOAWAY
            if self.closed:
                break
        for sid, req in complete:
            if self.closed or self.stalled:
                break
            answered.append(self._answer(sid, req))
        if answered:
            self._record.add(answered)
        out = self._h2.data_to_send()
        return b"" if self.stalled and not answered else out

    @property
    def idle(self) -> bool:
        """True when no request is open or waiting for its answer."""
        return not self._requests and not self._unsent and not self.closed

    def idle_goaway(self) -> bytes:
        """GOAWAY with reason IdleTimeout, as APNs ends a connection left unused; the connection closes."""
        self._h2.close_connection(error_code=0, additional_data=b'{"reason":"IdleTimeout"}')
        self.closed = True
        return self._h2.data_to_send()

    def _open_stream(self, sid: int, headers: list[tuple[str, str]]) -> None:
        """A new request stream: count it against the acknowledged limit, refuse it if over."""
        if self._faults.kill_prefixes and any(
            value.startswith("/3/device/" + p)
            for name, value in headers
            if name == ":path"
            for p in self._faults.kill_prefixes
        ):
            # what a strict server does with a malformed request: end the connection, naming this stream as
            # the last one it processed
            self._h2.close_connection(error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR, last_stream_id=sid)
            self.closed = True
            return
        allowed = self._h2.local_settings.max_concurrent_streams
        self._open += 1
        self._record.streams(self._open, allowed)
        if self._open > allowed:
            self._h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            self._open -= 1
            return
        self._requests[sid] = _Request(headers)

    def _answer(self, sid: int, req: _Request) -> Received:
        """Judge a complete request, send the answer, and apply the connection faults."""
        h: dict[str, str] = {}
        duplicate = False
        for name, value in req.headers:
            duplicate = duplicate or name in h
            h[name] = value
        body = bytes(req.body)
        status, reason = self._judge(h, duplicate, body)
        path = h.get(":path", "")
        broadcast = path.startswith(_BROADCAST_PREFIX)
        ident = h.get("apns-request-id" if broadcast else "apns-id", "")
        if not _UUID.fullmatch(ident):
            ident = str(uuid.uuid4())
        try:
            self._respond(sid, status, reason, ident, broadcast)
        except h2.exceptions.StreamClosedError:  # the client reset it after sending it whole
            self._unsent.pop(sid, None)
            self._open -= 1
        if status == 200 and not self._raised:
            self._raised = True
            self._h2.update_settings(
                {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self._faults.max_concurrent_streams}
            )
        self._answered += 1
        if self._answered % _GC_EVERY == 0:
            self._h2.sweep_closed_streams()
        self._apply_connection_faults(sid)
        token = path[len(_PATH_PREFIX) :] if path.startswith(_PATH_PREFIX) else ""
        channel = h.get("apns-channel-id", "") if broadcast else ""
        if not self._record.keep_payloads:  # long benchmark runs keep only the verdicts
            return Received(token, b"", ident, status, reason, channel=channel)
        return Received(token, body, ident, status, reason, tuple(req.headers), channel)

    def _judge(self, h: dict[str, str], duplicate: bool, body: bytes) -> tuple[int, str]:
        """Status and reason for a request: validation first, then the injected rejections."""
        status, reason = self._validate(h, duplicate, body)
        if status != 200:
            return status, reason
        burst = self._faults.burst_status
        if burst is not None and self._state.take_burst(burst[2], self._faults.burst_after):
            return burst[0], burst[1]
        token = h[":path"][len(_PATH_PREFIX) :].lower()
        for prefix, status, reason in self._faults.reject_prefixes:
            if token.startswith(prefix.lower()):
                return status, reason
        return 200, ""

    def _validate(self, h: dict[str, str], duplicate: bool, body: bytes) -> tuple[int, str]:
        """The checks APNs documents, in the order a request is read: method, path, auth, headers, body."""
        if h.get(":method") != "POST":
            return 405, "MethodNotAllowed"
        path = h.get(":path", "")
        if path.startswith(_BROADCAST_PREFIX):
            return self._validate_broadcast(h, duplicate, body)
        if not path.startswith(_PATH_PREFIX):
            return 404, "BadPath"
        token = path[len(_PATH_PREFIX) :]
        if not token:
            return 400, "MissingDeviceToken"
        if len(token) % 2 or not 2 * MIN_TOKEN_BYTES <= len(token) <= 2 * MAX_TOKEN_BYTES or not _HEX.issuperset(token):
            return 400, "BadDeviceToken"
        status, reason = self._auth_verdict(h, duplicate)
        if status:
            return status, reason
        if self._other_environment(token):
            return 400, "BadDeviceToken"
        push_type = h.get("apns-push-type")
        if push_type is not None and push_type not in PUSH_TYPE_SUFFIXES:
            return 400, "InvalidPushType"
        reason = self._check_topic(h.get("apns-topic"), push_type)
        if reason:
            return 400, reason
        priority = h.get("apns-priority")
        if priority is not None and priority not in ("10", "5", "1"):
            return 400, "BadPriority"
        if priority == "10" and push_type == "background":  # Apple: background pushes must use 5
            return 400, "BadPriority"
        expiration = h.get("apns-expiration")
        if expiration is not None and not (expiration.isascii() and expiration.isdigit()):
            return 400, "BadExpirationDate"
        collapse_id = h.get("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID:
            return 400, "BadCollapseId"
        if "apns-id" in h and not _UUID.fullmatch(h["apns-id"]):
            return 400, "BadMessageId"
        return body_verdict(body, VOIP_PAYLOAD_LIMIT if push_type == "voip" else PAYLOAD_LIMIT)

    def _auth_verdict(self, h: dict[str, str], duplicate: bool) -> tuple[int, str]:
        """(0, "") when headers are not repeated and the provider token (under token auth) is valid."""
        if duplicate:
            return 400, "DuplicateHeaders"
        if self._faults.jwt_public_key is not None:
            reason = self._check_provider_token(h.get("authorization"))
            if reason:
                return APPLE_REASONS[reason], reason
        return 0, ""

    def _validate_broadcast(self, h: dict[str, str], duplicate: bool, body: bytes) -> tuple[int, str]:
        """A Live Activity broadcast: auth as any request, then the channel rules (channels_mock)."""
        from apnsd.testing.channels_mock import judge_broadcast

        status, reason = self._auth_verdict(h, duplicate)
        if status:
            return status, reason
        return judge_broadcast(h, body, self._state.channels, self._faults.allowed_topics)

    def _check_topic(self, topic: str | None, push_type: str | None) -> str:
        """'' when the topic is acceptable for this connection and push type, else the reason."""
        allowed = self._faults.allowed_topics
        if topic is None:
            # a single-topic certificate implies its topic; token auth and multi-topic certs do not
            if self._faults.jwt_public_key is not None or len(allowed) > 1:
                return "MissingTopic"
            topic = allowed[0] if allowed else None
        elif not topic:
            return "BadTopic"
        elif allowed and topic not in allowed:
            return "TopicDisallowed"
        suffix = PUSH_TYPE_SUFFIXES.get(push_type or "", "")
        if topic is not None and suffix and not topic.endswith(suffix):
            return "BadTopic"
        return ""

    def _check_provider_token(self, authorization: str | None) -> str:
        """'' for a valid ``bearer <jwt>``, else the 403 reason; verdicts are reused within a second."""
        if not authorization:
            return "MissingProviderToken"
        scheme, _, jwt = authorization.partition(" ")
        if scheme.lower() != "bearer" or not jwt:
            return "InvalidProviderToken"
        now = self._now()
        token, second, verdict = self._jwt_seen
        if token == jwt and second == int(now):
            return verdict  # ES256 verification costs more than the rest of a request
        from apnsd.gateway.credentials import decode_token, verify_token  # pyOpenSSL & co. only under token auth

        faults = self._faults
        ok, verdict = verify_token(jwt, faults.jwt_public_key, now, key_id=faults.jwt_key_id)  # type: ignore[arg-type]
        if ok and faults.jwt_team_id is not None and decode_token(jwt)[1].get("iss") != faults.jwt_team_id:
            verdict = "InvalidProviderToken"
        if not verdict:
            verdict = self._check_token_change(jwt, now)
        self._jwt_seen = (jwt, int(now), verdict)
        return verdict

    def _check_token_change(self, jwt: str, now: float) -> str:
        """APNs' per-connection token rules: one key per connection, a new token at most every 20 minutes."""
        from apnsd.gateway.credentials import decode_token

        kid = decode_token(jwt)[0].get("kid")
        if self._first_kid is None:
            self._first_kid = kid
        elif kid != self._first_kid:
            return "UnrelatedKeyIdInToken"
        if jwt != self._jwt_current:
            if self._jwt_current and now - self._jwt_since < TOKEN_UPDATE_INTERVAL:
                return "TooManyProviderTokenUpdates"
            self._jwt_current, self._jwt_since = jwt, now
        return ""

    def _other_environment(self, token: str) -> bool:
        """True for a token marked as belonging to the environment this gateway is not."""
        marker = ENVIRONMENT_TOKEN_PREFIXES.get(
            "sandbox" if self._faults.environment == "production" else "production", ""
        )
        return token[: len(marker)].lower() == marker

    def _respond(self, sid: int, status: int, reason: str, ident: str, broadcast: bool = False) -> None:
        """200 with apns-id and no body; errors with a JSON reason (and a timestamp for 410). In sandbox
        mode every answer also carries apns-unique-id, as Apple's development environment does.

        A broadcast is answered, as Apple does, with apns-request-id (and apns-unique-id on success).
        """
        sandbox = self._faults.environment == "sandbox"
        if broadcast:
            ids = [("apns-request-id", ident)] + ([("apns-unique-id", str(uuid.uuid4()))] if status == 200 else [])
        else:
            ids = [("apns-id", ident)] + ([("apns-unique-id", str(uuid.uuid4()))] if sandbox else [])
        if status == 200:
            self._h2.send_headers(sid, [(":status", "200"), *ids], end_stream=True)
            self._open -= 1
            return
        error: dict[str, object] = {"reason": reason}
        if status == 410:
            error["timestamp"] = int((self._now() - self._faults.unregistered_age) * 1000)
        body = msgspec.json.encode(error)
        self._h2.send_headers(
            sid,
            [
                (":status", str(status)),
                *ids,
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            ],
        )
        self._unsent[sid] = body
        self._send_body(sid)

    def _flush_bodies(self) -> None:
        """Send waiting error bodies as far as the client's flow-control windows allow."""
        for sid in list(self._unsent):
            self._send_body(sid)

    def _send_body(self, sid: int) -> None:
        body = self._unsent[sid]
        n = min(len(body), self._h2.local_flow_control_window(sid), self._h2.max_outbound_frame_size)
        if n <= 0:
            return
        self._h2.send_data(sid, body[:n], end_stream=n == len(body))
        if n == len(body):
            del self._unsent[sid]
            self._open -= 1  # the stream is closed now: the client had ended its side
        else:
            self._unsent[sid] = body[n:]

    def _apply_connection_faults(self, sid: int) -> None:
        """GOAWAY or abrupt close once this connection has answered enough requests."""
        if not self._faulty:
            return
        if self._answered == self._faults.close_after:
            self.closed = self.abrupt = True
        elif self._answered == self._faults.stall_after:
            self.stalled = True
        elif self._answered == self._faults.goaway_after:
            # Streams below this one still being received were not processed: name the last
            # stream below all of them, so the client may safely resend everything above it.
            pending = [s for s in self._requests if s < sid]
            last = min(pending) - 2 if pending else sid
            self._h2.close_connection(
                error_code=0,
                additional_data=msgspec.json.encode({"reason": self._faults.goaway_reason}),
                last_stream_id=max(last, 0),
            )
            self.closed = True
