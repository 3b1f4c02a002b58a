"""Sans-IO APNs gateway emulator over HTTP/2 on h2's server side: bytes in, bytes out.

It validates requests as APNs documents (status + ``{"reason": ...}``), records every answer
in a MockRecord, advertises one stream until the first accepted request like APNs, and
injects faults (rejected token prefixes, error bursts, GOAWAY, abrupt close). Reasons APNs
does not document, chosen here: a body that is not a JSON object gets 400 ``BadPayload``; a
topic without the suffix its push type needs gets 400 ``BadTopic``. The socket server that
drives it lives in ``apnsd.testing.mock``.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import msgspec

from apnsd.core.jobs import MAX_COLLAPSE_ID, MAX_TOKEN_BYTES, MIN_TOKEN_BYTES, PUSH_TYPE_SUFFIXES
from apnsd.testing.record import MockRecord, Received

PAYLOAD_LIMIT, VOIP_PAYLOAD_LIMIT = 4096, 5120
PROTOCOL_ERROR = 1
REFUSED_STREAM = 0x7
_PATH_PREFIX = "/3/device/"
_HEX = frozenset("0123456789abcdefABCDEF")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_GC_EVERY = 256  # answered streams between sweeps of h2's closed streams
_json = msgspec.json.Decoder()


@dataclass(frozen=True)
class Http2Faults:
    """How the emulated gateway behaves: limits, validation inputs and injected faults."""

    max_concurrent_streams: int = 1000
    initial_streams: int = 1  # advertised until the first accepted request, like APNs
    reject_prefixes: tuple[tuple[str, int, str], ...] = ()  # (token hex prefix, status, reason)
    burst_status: tuple[int, str, int] | None = None  # (status, reason, count) for the server's first valid requests
    goaway_after: int = 0  # GOAWAY and close after N answered requests on a connection; 0 = never
    close_after: int = 0  # drop the connection without GOAWAY right after answering its N-th request; 0 = never
    once: bool = True  # goaway/close fire on the server's first connection only
    allowed_topics: tuple[str, ...] = ()  # empty = any topic
    kill_prefixes: tuple[str, ...] = ()  # a request for such a token ends the connection: GOAWAY PROTOCOL_ERROR
    jwt_public_key: object | None = None  # set = token auth: ES256 provider tokens required
    jwt_key_id: str | None = None  # expected JWT "kid" under token auth; None = any
    jwt_team_id: str | None = None  # expected JWT "iss" under token auth; None = any


class FaultState:
    """What the connections of one mock server share: connection count and the burst budget."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections = 0
        self._burst_used = 0

    def next_connection(self) -> int:
        """The 0-based index of a new connection."""
        with self._lock:
            self._connections += 1
            return self._connections - 1

    def take_burst(self, count: int) -> bool:
        """True for the server's first ``count`` calls: that request gets the burst status."""
        with self._lock:
            if self._burst_used >= count:
                return False
            self._burst_used += 1
            return True


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
        self.closed = False  # the socket owner should close the connection
        self.abrupt = False  # ... without a TLS close_notify

    def initiate(self) -> bytes:
        """The server preface: SETTINGS with MAX_CONCURRENT_STREAMS = faults.initial_streams."""
        self._h2.initiate_connection()
        return self._h2.data_to_send()

    def receive(self, data: bytes) -> bytes:
        """Process bytes from the client; returns the bytes to write back."""
        if self.closed:
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
                self._open_stream(ev.stream_id, ev.headers)
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
                if self._requests.pop(ev.stream_id, None) is not None or self._unsent.pop(ev.stream_id, None):
                    self._open -= 1
            elif isinstance(ev, h2.events.WindowUpdated):
                self._flush_bodies()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True  # h2 sends nothing after the client's GOAWAY
            if self.closed:
                break
        for sid, req in complete:
            if self.closed:
                break
            answered.append(self._answer(sid, req))
        if answered:
            self._record.add(answered)
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
            self._h2.close_connection(error_code=PROTOCOL_ERROR, last_stream_id=sid)
            self.closed = True
            return
        allowed = self._h2.local_settings.max_concurrent_streams
        self._open += 1
        self._record.streams(self._open, allowed)
        if self._open > allowed:
            self._h2.reset_stream(sid, REFUSED_STREAM)
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
        ident = h.get("apns-id", "")
        if not _UUID.fullmatch(ident):
            ident = str(uuid.uuid4())
        try:
            self._respond(sid, status, reason, ident)
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
        path = h.get(":path", "")
        token = path[len(_PATH_PREFIX) :] if path.startswith(_PATH_PREFIX) else ""
        if not self._record.keep_payloads:  # long benchmark runs keep only the verdicts
            return Received(token, b"", ident, status, reason)
        return Received(token, body, ident, status, reason, tuple(req.headers))

    def _judge(self, h: dict[str, str], duplicate: bool, body: bytes) -> tuple[int, str]:
        """Status and reason for a request: validation first, then the injected rejections."""
        status, reason = self._validate(h, duplicate, body)
        if status != 200:
            return status, reason
        burst = self._faults.burst_status
        if burst is not None and self._state.take_burst(burst[2]):
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
        if not path.startswith(_PATH_PREFIX):
            return 404, "BadPath"
        token = path[len(_PATH_PREFIX) :]
        if not token:
            return 400, "MissingDeviceToken"
        if len(token) % 2 or not 2 * MIN_TOKEN_BYTES <= len(token) <= 2 * MAX_TOKEN_BYTES or not _HEX.issuperset(token):
            return 400, "BadDeviceToken"
        if duplicate:
            return 400, "DuplicateHeaders"
        if self._faults.jwt_public_key is not None:
            reason = self._check_provider_token(h.get("authorization"))
            if reason:
                return 403, reason
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
        if not body:
            return 400, "PayloadEmpty"
        if len(body) > (VOIP_PAYLOAD_LIMIT if push_type == "voip" else PAYLOAD_LIMIT):
            return 413, "PayloadTooLarge"
        try:
            if not isinstance(_json.decode(body), dict):
                return 400, "BadPayload"
        except msgspec.DecodeError:
            return 400, "BadPayload"
        return 200, ""

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
        self._jwt_seen = (jwt, int(now), verdict)
        return verdict

    def _respond(self, sid: int, status: int, reason: str, ident: str) -> None:
        """200 with apns-id and no body; errors with a JSON reason (and a timestamp for 410)."""
        if status == 200:
            self._h2.send_headers(sid, [(":status", "200"), ("apns-id", ident)], end_stream=True)
            self._open -= 1
            return
        error: dict[str, object] = {"reason": reason}
        if status == 410:
            error["timestamp"] = int(self._now() * 1000)
        body = msgspec.json.encode(error)
        self._h2.send_headers(
            sid,
            [
                (":status", str(status)),
                ("apns-id", ident),
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
        elif self._answered == self._faults.goaway_after:
            # Streams below this one still being received were not processed: name the last
            # stream below all of them, so the client may safely resend everything above it.
            pending = [s for s in self._requests if s < sid]
            last = min(pending) - 2 if pending else sid
            self._h2.close_connection(
                error_code=0, additional_data=b'{"reason":"Shutdown"}', last_stream_id=max(last, 0)
            )
            self.closed = True
