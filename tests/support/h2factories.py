"""Test factories for the HTTP/2 cores: h2 reference peers, byte pumps, expected headers, raw frames."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

from apnsd.testing.http2_mock import FaultState, Http2Faults, Http2GatewayConnection
from apnsd.testing.record import MockRecord
from apnsd.wire.http2.connection import Event, H2ClientConnection, RequestTemplate

TOKEN = "ab" * 32
APNS_ID = "123e4567-e89b-42d3-a456-426614174000"
PAYLOAD = b'{"aps":{"alert":"hello"}}'
TOPIC = "com.example.app"
TEMPLATE = RequestTemplate("api.push.apple.com", TOPIC)
NOW = 1_700_000_000.0
S = h2.settings.SettingCodes
_FRAME_HEAD = struct.Struct(">IBI")


def apns_id(n: int) -> str:
    """A distinct canonical apns-id for request number ``n``."""
    return f"123e4567-e89b-42d3-a456-{n:012x}"


def h2_server(**settings: int) -> h2.connection.H2Connection:
    """An initiated h2 server; keyword settings by name, e.g. max_concurrent_streams=100."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    values = {S[name.upper()]: value for name, value in settings.items()}
    conn.local_settings = h2.settings.Settings(client=False, initial_values=values)
    conn.max_inbound_frame_size = conn.local_settings.max_frame_size  # h2 copies it at construction only
    conn.initiate_connection()
    return conn


def h2_client(**settings: int) -> h2.connection.H2Connection:
    """An initiated h2 client, the reference peer for the gateway emulator."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    values = {S[name.upper()]: value for name, value in settings.items()}
    conn.local_settings = h2.settings.Settings(client=True, initial_values=values)
    conn.initiate_connection()
    return conn


@dataclass
class ClientPair:
    """Our client wired to an h2 server in memory; the server's events are kept for inspection."""

    client: H2ClientConnection
    server: h2.connection.H2Connection
    server_events: list[h2.events.Event] = field(default_factory=list)

    def to_server(self) -> list[h2.events.Event]:
        """Deliver the client's pending bytes; returns (and keeps) the server's events."""
        events = self.server.receive_data(self.client.data_to_send())
        self.server_events += events
        return events

    def to_client(self) -> list[Event]:
        """Deliver the server's pending bytes; returns the client's events."""
        return self.client.receive_data(self.server.data_to_send())

    def requests(self) -> dict[int, list[tuple[str, str]]]:
        """Headers of every request the server has seen, by stream id."""
        return {e.stream_id: list(e.headers) for e in self.server_events if isinstance(e, h2.events.RequestReceived)}

    def bodies(self) -> dict[int, bytes]:
        """Body bytes the server has received, by stream id."""
        out: dict[int, bytes] = {}
        for e in self.server_events:
            if isinstance(e, h2.events.DataReceived):
                out[e.stream_id] = out.get(e.stream_id, b"") + e.data
        return out

    def ended(self) -> list[int]:
        """Streams whose request the server has received completely, in order."""
        return [e.stream_id for e in self.server_events if isinstance(e, h2.events.StreamEnded)]

    def answer(self, stream_id: int, status: int = 200, body: bytes = b"", ident: str = APNS_ID) -> None:
        """Queue an APNs-style answer on the server: headers, then the body if any."""
        self.server.send_headers(stream_id, [(":status", str(status)), ("apns-id", ident)], end_stream=not body)
        if body:
            self.server.send_data(stream_id, body, end_stream=True)

    def ack_data(self) -> None:
        """Let the server return every received DATA byte to the client's windows."""
        for e in self.server_events:
            if isinstance(e, h2.events.DataReceived) and e.flow_controlled_length:
                self.server.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                e.flow_controlled_length = 0  # acknowledged once


def client_pair(**server_settings: int) -> ClientPair:
    """Our client connected to an h2 server with ``server_settings``, prefaces exchanged."""
    pair = ClientPair(H2ClientConnection(), h2_server(**server_settings))
    pair.client.initiate()
    pair.to_server()
    pair.to_client()
    pair.to_server()  # the client's SETTINGS ACK
    pair.server_events.clear()
    return pair


def send(
    client: H2ClientConnection,
    n: int = 0,
    token: str = TOKEN,
    payload: bytes = PAYLOAD,
    template: RequestTemplate = TEMPLATE,
    **options: Any,
) -> int:
    """Queue request number ``n`` with defaults for everything not given."""
    return client.send_request(template, token, apns_id(n), payload, **options)


def expected_headers(
    template: RequestTemplate = TEMPLATE,
    token: str = TOKEN,
    ident: str = APNS_ID,
    length: int = len(PAYLOAD),
    *,
    push_type: str | None = None,
    priority: int | None = None,
    expiration: int | None = None,
    collapse_id: str | None = None,
    topic: str | None = None,
) -> list[tuple[str, str]]:
    """The header list an h2 server must decode from our request, in order."""
    headers = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", template.authority),
        (":path", f"/3/device/{token}"),
    ]
    if (topic or template.topic) is not None:
        headers.append(("apns-topic", topic or template.topic or ""))
    for name, value in (
        ("apns-push-type", push_type),
        ("apns-priority", priority),
        ("apns-expiration", expiration),
        ("apns-collapse-id", collapse_id),
    ):
        if value is not None:
            headers.append((name, str(value)))
    headers += [("apns-id", ident), ("content-length", str(length))]
    if template.authorization:
        headers.append(("authorization", template.authorization))
    return headers


def frames_in(data: bytes) -> list[tuple[int, int, int, int]]:
    """(type, flags, stream id, length) of each frame in ``data``, skipping a client preface."""
    if data.startswith(b"PRI * HTTP/2.0"):
        data = data[24:]
    out, pos = [], 0
    while pos < len(data):
        word, flags, sid = _FRAME_HEAD.unpack_from(data, pos)
        out.append((word & 0xFF, flags, sid & 0x7FFFFFFF, word >> 8))
        pos += 9 + (word >> 8)
    return out


def raw_frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """Any frame, valid or not, for feeding to the client."""
    return _FRAME_HEAD.pack(len(payload) << 8 | ftype, flags, stream_id) + payload


@dataclass
class GatewayPair:
    """The gateway emulator wired to a client in memory (ours or h2's), with its record."""

    gateway: Http2GatewayConnection
    record: MockRecord
    state: FaultState


def gateway(
    faults: Http2Faults | None = None,
    state: FaultState | None = None,
    record: MockRecord | None = None,
    now: float = NOW,
) -> GatewayPair:
    """A fresh gateway connection; pass ``state`` to share burst/once counters between connections."""
    record = record or MockRecord()
    state = state or FaultState()
    return GatewayPair(Http2GatewayConnection(faults or Http2Faults(), state, record, lambda: now), record, state)


def request_headers(
    token: str = TOKEN,
    *,
    method: str = "POST",
    path: str | None = None,
    topic: str | None = TOPIC,
    extra: tuple[tuple[str, str], ...] = (),
) -> list[tuple[str, str]]:
    """Request headers for the h2 reference client; ``topic=None`` leaves apns-topic out."""
    headers = [
        (":method", method),
        (":scheme", "https"),
        (":authority", "api.push.apple.com"),
        (":path", path if path is not None else f"/3/device/{token}"),
    ]
    if topic is not None:
        headers.append(("apns-topic", topic))
    return headers + list(extra)


@dataclass
class Answer:
    """What a client saw in reply to one request."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    reset: int | None = None  # RST_STREAM error code, if reset


@dataclass
class RefClient:
    """h2's client wired to the gateway emulator in memory, for requests our client cannot make."""

    conn: h2.connection.H2Connection
    gw: GatewayPair
    events: list[h2.events.Event] = field(default_factory=list)

    def pump(self) -> None:
        """Exchange bytes until neither side has anything more to say."""
        while (out := self.conn.data_to_send()) and not self.gw.gateway.closed:
            back = self.gw.gateway.receive(out)
            if back:
                for e in self.conn.receive_data(back):
                    self.events.append(e)
                    if isinstance(e, h2.events.DataReceived):
                        self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)

    def request(self, headers: list[tuple[str, str]], body: bytes = PAYLOAD, end: bool = True) -> int:
        """Queue a request (not sent until pump); returns its stream id."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end and not body)
        if body:
            self.conn.send_data(sid, body, end_stream=end)
        return sid

    def answers(self) -> dict[int, Answer]:
        """Every reply so far, by stream id."""
        out: dict[int, Answer] = {}
        for e in self.events:
            if isinstance(e, h2.events.ResponseReceived):
                headers = dict(e.headers)
                out[e.stream_id] = Answer(int(headers.pop(":status")), headers)
            elif isinstance(e, h2.events.DataReceived):
                out[e.stream_id].body += e.data
            elif isinstance(e, h2.events.StreamReset):
                out[e.stream_id] = Answer(0, {}, reset=e.error_code)
        return out


def ref_client(gw: GatewayPair, read_preface: bool = True, **settings: int) -> RefClient:
    """h2's client connected to ``gw``; ``read_preface=False`` leaves the server's SETTINGS unread."""
    ref = RefClient(h2_client(**settings), gw)
    preface = gw.gateway.initiate()
    if read_preface:
        ref.events += ref.conn.receive_data(preface)
        ref.pump()
    return ref


@dataclass
class OurClient:
    """Our client wired to the gateway emulator in memory."""

    client: H2ClientConnection
    gw: GatewayPair
    events: list[Event] = field(default_factory=list)

    def pump(self) -> list[Event]:
        """Exchange bytes until quiet (or the gateway closes); returns the new events."""
        start = len(self.events)
        while (out := self.client.data_to_send()) and not self.gw.gateway.closed:
            self.events += self.client.receive_data(self.gw.gateway.receive(out))
        return self.events[start:]

    def push(self, n: int = 0, **options: Any) -> list[Event]:
        """Send request number ``n`` and pump; returns the new events."""
        send(self.client, n, **options)
        return self.pump()


def our_client(gw: GatewayPair) -> OurClient:
    """Our client connected to ``gw``, prefaces exchanged."""
    ours = OurClient(H2ClientConnection(), gw)
    ours.client.initiate()
    ours.events += ours.client.receive_data(gw.gateway.initiate())
    ours.pump()
    return ours
