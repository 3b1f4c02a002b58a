"""Sans-IO APNs client over HTTP/2: requests in, bytes out; bytes in, response events out.

A purpose-built client connection rather than ``h2.H2Connection``: APNs needs one request
shape, so header blocks are assembled from cached HPACK byte strings, the open-stream count
is a ``len()``, and incoming frames are parsed with ``struct`` in one loop. ``h2`` and
``hpack`` stay the reference the tests hold these bytes against. Responses are read for
``:status`` alone, with the server's HPACK table held at size 0 by our SETTINGS.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import NoReturn

from apnsd.errors import ProtocolError
from apnsd.wire.http2 import frames as f
from apnsd.wire.http2.events import (
    CompactEvent,
    Event,
    GoAwayReceived,
    H2ProtocolError,
    NoStreamAvailable,
    PingAcked,
    RequestTemplate,
    ResponseReceived,
    SettingsChanged,
    StreamReset,
    decode_response_reason,
    effective_priority,
)
from apnsd.wire.http2.hpack import TABLE_SIZE_ZERO, RequestEncoder
from apnsd.wire.http2.status import response_ids, response_status

__all__ = [
    "CompactEvent",
    "Event",
    "GoAwayReceived",
    "H2ClientConnection",
    "H2ProtocolError",
    "NoStreamAvailable",
    "PingAcked",
    "RequestTemplate",
    "ResponseReceived",
    "SettingsChanged",
    "StreamReset",
    "decode_response_reason",
    "effective_priority",
]

# What we tell the server. Responses are tiny, so the receive windows are made large once
# and topped up rarely; push is refused because APNs never pushes.
LOCAL_INITIAL_WINDOW = 1 << 20
LOCAL_CONNECTION_WINDOW = 1 << 24
LOCAL_SETTINGS = {
    f.SETTINGS_HEADER_TABLE_SIZE: 0,
    f.SETTINGS_ENABLE_PUSH: 0,
    f.SETTINGS_INITIAL_WINDOW_SIZE: LOCAL_INITIAL_WINDOW,
}
# Streams allowed before the server's first SETTINGS arrives. RFC 9113 leaves the limit
# unbounded and some clients guess 100, but APNs may answer with 1 (token auth) and punishes
# excess with a GOAWAY that kills every in-flight stream; waiting costs one round trip once.
STREAMS_BEFORE_SETTINGS = 1
UNLIMITED_STREAMS = 2**31 - 1
MAX_INBOUND_FRAME = f.MIN_FRAME_SIZE  # we never raise SETTINGS_MAX_FRAME_SIZE
# APNs answers with a few headers and a JSON body of ~100 bytes; a gateway that sends far more (a header block
# continued without end, a body streamed without end) is not APNs, and would otherwise grow memory without bound.
MAX_HEADER_BLOCK = 64 * 1024
MAX_RESPONSE_BODY = 64 * 1024
# With keep_responses (the channel management API), a body is a result: listing 10,000 channels is ~300 KB.
MAX_KEPT_RESPONSE_BODY = 4 * 1024 * 1024
_NO_TEMPLATE = RequestTemplate("")  # send_raw's requests carry their own header block
_END_BOTH = f.FLAG_END_STREAM | f.FLAG_END_HEADERS
_HEAD = f.FRAME_HEAD.pack
_unpack_u32 = struct.Struct(">I").unpack_from
_HEADERS, _WINDOW_UPDATE, _SETTINGS = f.HEADERS, f.WINDOW_UPDATE, f.SETTINGS
_MAX_STREAM_ID, _MAX_WINDOW = f.MAX_STREAM_ID, f.MAX_WINDOW
_STATUS_200 = 0x88  # HPACK: indexed static entry 8, ":status: 200"
_TABLE_ZERO = TABLE_SIZE_ZERO[0]  # HPACK: dynamic table size update to 0


class _Stream:
    """One request in flight: the body still to send and the response so far."""

    __slots__ = ("body", "data", "id", "ids", "local_done", "received", "remote_done", "sent", "status", "window")

    def __init__(self, stream_id: int, window: int, body: bytes | None) -> None:
        self.id = stream_id
        self.window = window  # what the server lets us send on this stream
        self.body = body  # None once fully sent or abandoned
        self.sent = 0
        self.local_done = body is None
        self.remote_done = False
        self.status: int | None = None
        self.ids: tuple[str, str] | None = None  # (apns-id, apns-unique-id) when they were read
        self.data: bytearray | None = None
        self.received = 0  # DATA bytes since our last WINDOW_UPDATE for this stream


class H2ClientConnection:
    """One client-side HTTP/2 connection to APNs, free of I/O: feed bytes in, drain bytes out."""

    def __init__(self, read_ids: bool = False, compact: bool = False) -> None:
        # apns-id / apns-unique-id are read from every response when read_ids, else only from errors:
        # a 200's apns-id is the one we sent, and skipping the walk keeps the hot path at :status alone.
        self.read_ids = read_ids
        # compact: a plain 200 (no ids to read, no body) comes back as its stream id, an int, instead of a
        # ResponseReceived; building that frozen event cost more than the rest of reading the answer.
        self.compact = compact
        self._out = bytearray()
        self._in = bytearray()
        self._events: list[CompactEvent] = []
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._peer_max_streams = STREAMS_BEFORE_SETTINGS
        self._peer_window = f.DEFAULT_WINDOW
        self._peer_max_frame = f.MIN_FRAME_SIZE
        self._send_window = f.DEFAULT_WINDOW
        # Bodies waiting for flow control: a FIFO of streams held up by the connection window
        # (a deque: repeatedly popping the head of a dict degrades to O(n)), and the streams
        # held up by their own window, keyed for their WINDOW_UPDATE.
        self._ready: deque[_Stream] = deque()
        self._stalled: dict[int, _Stream] = {}
        self._recv_unacked = 0
        self._block_stream = 0  # stream whose header block continues in CONTINUATION frames
        self._block: list[bytes] = []
        self._block_end_stream = False
        self._settings_seen = False
        self._table_update_due = True
        self._encoder = RequestEncoder()
        self.goaway: GoAwayReceived | None = None
        self.closing = False  # we sent GOAWAY
        self.failed = False
        # Off on the delivery path, which reads :status alone. On, every answer's header block and
        # body are kept in ``full_responses`` (stream id → (header block, body)) for the caller.
        self.keep_responses = False
        self.full_responses: dict[int, tuple[bytes, bytes]] = {}

    def initiate(self) -> None:
        """Queue the connection preface, our SETTINGS and a connection window top-up."""
        self._out += f.PREFACE + f.settings_frame(LOCAL_SETTINGS)
        self._out += f.window_update_frame(0, LOCAL_CONNECTION_WINDOW - f.DEFAULT_WINDOW)

    def data_to_send(self) -> bytes:
        """Everything queued for the socket since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def next_stream_id(self) -> int:
        """The id the next request will get."""
        return self._next_id

    @property
    def open_streams(self) -> int:
        """Streams opened and not yet closed on both sides."""
        return len(self._streams)

    @property
    def available_streams(self) -> int:
        """How many more requests may be sent now without exceeding the server's limit."""
        if self.goaway or self.closing or self.failed:
            return 0
        ids_left = (f.MAX_STREAM_ID - self._next_id) // 2 + 1
        return max(0, min(self._peer_max_streams - len(self._streams), ids_left))

    @property
    def streams_exhausted(self) -> bool:
        """True once every client stream id is used: the caller must open a new connection."""
        return self._next_id > f.MAX_STREAM_ID

    @property
    def max_concurrent_streams(self) -> int:
        """The server's current stream limit (``STREAMS_BEFORE_SETTINGS`` until it has sent one)."""
        return self._peer_max_streams

    @property
    def blocked_bytes(self) -> int:
        """Request body bytes waiting for the server to open its flow-control windows."""
        waiting = (*self._ready, *self._stalled.values())
        return sum(len(s.body) - s.sent for s in waiting if s.body is not None)

    @property
    def carries_nothing(self) -> bool:
        """True when no request can complete: the server allows no stream at all, or every open stream still
        waits for a flow-control window to send its body (so the server cannot have processed any of them)."""
        if self.goaway or self.closing or self.failed:
            return False
        if not self._streams:
            return self._peer_max_streams == 0
        return all(s.body is not None for s in self._streams.values())

    def send_request(
        self,
        template: RequestTemplate,
        token_hex: str,
        apns_id: str,
        payload: bytes,
        *,
        push_type: str | None = None,
        priority: int | None = None,
        expiration: int | None = None,
        collapse_id: str | None = None,
        topic: str | None = None,
        block: bytes | None = None,
    ) -> int:
        """Queue one POST /3/device/<token>, or the request of a ready header ``block``; returns its stream id."""
        sid = self._next_id
        streams = self._streams
        if (
            len(streams) >= self._peer_max_streams
            or sid > f.MAX_STREAM_ID
            or self.goaway is not None
            or self.closing
            or self.failed
        ):
            raise NoStreamAvailable("no HTTP/2 stream available on this connection")
        if block is None:
            block = self._encoder.block(
                template, token_hex, apns_id, len(payload), push_type, priority, expiration, collapse_id, topic
            )
        if self._table_update_due:
            # Size 0 keeps the server's decoder table empty whatever SETTINGS_HEADER_TABLE_SIZE it
            # chose (RFC 7541 §4.2 wants an update after each change); we never index anyway.
            block = TABLE_SIZE_ZERO + block
            self._table_update_due = False
        self._next_id = sid + 2
        n = len(payload)
        window = self._peer_window
        out = self._out
        if 0 < n <= self._send_window and n <= window and n <= self._peer_max_frame and not self._ready:
            # the common case: the headers in one frame, the whole body in one frame and in both windows
            streams[sid] = _Stream(sid, window - n, None)
            if len(block) <= self._peer_max_frame:
                out += _HEAD(len(block) << 8 | f.HEADERS, f.FLAG_END_HEADERS, sid)
                out += block
            else:
                out += f.header_frames(sid, block, False, self._peer_max_frame)
            out += _HEAD(n << 8 | f.DATA, f.FLAG_END_STREAM, sid)
            out += payload
            self._send_window -= n
            return sid
        s = _Stream(sid, window, payload or None)
        streams[sid] = s
        out += f.header_frames(sid, block, not payload, self._peer_max_frame)
        if n:
            self._ready.append(s)
            self._flush_data()
        return sid

    def send_broadcast(
        self,
        template: RequestTemplate,
        bundle_id: str,
        channel_id: str,
        request_id: str,
        payload: bytes,
        *,
        priority: int,
        expiration: int,
        topic: str,
    ) -> int:
        """Queue one Live Activity broadcast, POST /4/broadcasts/apps/<bundle id>; returns its stream id."""
        block = self._encoder.broadcast_block(
            template, bundle_id, channel_id, request_id, len(payload), priority, expiration, topic
        )
        return self.send_request(template, "", "", payload, block=block)

    def send_raw(self, block: bytes, payload: bytes = b"") -> int:
        """Queue a request from a ready header block (``hpack.request_block``); returns its stream id."""
        return self.send_request(_NO_TEMPLATE, "", "", payload, block=block)

    def ping(self, payload: bytes = b"\0" * 8) -> None:
        """Queue a PING; the server's answer comes back as PingAcked."""
        if len(payload) != 8:
            raise ValueError("a PING payload is exactly 8 bytes")
        self._out += f.frame(f.PING, 0, 0, payload)

    def cancel(self, stream_id: int) -> None:
        """Give up on an open request: RST_STREAM(CANCEL), and the stream is forgotten (a late answer is ignored)."""
        if stream_id in self._streams:
            self._drop(stream_id)
            self._out += f.rst_stream_frame(stream_id, f.CANCEL)

    def close(self, error_code: int = f.NO_ERROR) -> None:
        """Queue a GOAWAY; answers on streams already open are still read."""
        if not self.closing:
            self.closing = True
            self._out += f.goaway_frame(0, error_code)  # 0: the server opened no streams

    def receive_data(self, data: bytes | bytearray) -> list[CompactEvent]:
        """Feed bytes read from the socket; returns the events they complete."""
        if self.failed:
            raise H2ProtocolError(f.PROTOCOL_ERROR, "the connection already failed", [])
        if self._in:
            self._in += data
            buf: bytes | bytearray = self._in
        else:
            buf = data
        events: list[CompactEvent] = []
        self._events = events
        pos, end = 0, len(buf)
        unpack = f.FRAME_HEAD.unpack_from
        streams = self._streams
        # The common answer, read inline: HEADERS with END_STREAM|END_HEADERS whose block opens with :status 200
        # (static index 8), after an optional table size update to 0. Else _on_headers reads it.
        plain = not self.read_ids and not self.keep_responses
        while end - pos >= 9:
            word, flags, sid = unpack(buf, pos)
            length, ftype = word >> 8, word & 0xFF
            if not self._settings_seen and ftype != _SETTINGS:
                self._fail(
                    f.PROTOCOL_ERROR,
                    f"expected the server's SETTINGS first, got frame type {ftype} (is this an HTTP/2 server?)",
                )
            if length > MAX_INBOUND_FRAME:
                self._fail(f.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds {MAX_INBOUND_FRAME}")
            start = pos + 9
            if end - start < length:
                break
            pos = start + length
            sid &= _MAX_STREAM_ID
            if self._block_stream and (ftype != f.CONTINUATION or sid != self._block_stream):
                self._fail(f.PROTOCOL_ERROR, "header block interrupted before END_HEADERS")
            if ftype == _HEADERS:
                s = streams.get(sid) if plain and flags == _END_BOTH and length >= 2 else None
                if (
                    s is not None
                    and s.status is None
                    and s.local_done
                    and (buf[start] == _STATUS_200 or (buf[start] == _TABLE_ZERO and buf[start + 1] == _STATUS_200))
                ):
                    del streams[sid]
                    s.remote_done = True
                    s.status = 200
                    events.append(sid if self.compact else ResponseReceived(sid, 200))
                else:
                    self._on_headers(flags, sid, buf[start:pos])
            elif ftype == _WINDOW_UPDATE and length == 4 and sid in streams and not self._ready:
                # a stream's window opened (nginx sends one per request): nothing waits to be sent
                s = streams[sid]
                increment = _unpack_u32(buf, start)[0] & _MAX_WINDOW
                s.window += increment
                if not increment or s.window > _MAX_WINDOW or sid in self._stalled:
                    s.window -= increment
                    self._on_control(ftype, flags, sid, buf[start:pos])  # the rare cases, and their errors
            elif ftype == f.DATA:
                self._on_data(flags, sid, buf[start:pos])
            else:
                self._on_control(ftype, flags, sid, buf[start:pos])
        if buf is self._in:
            del self._in[:pos]
        elif pos < end:
            self._in += buf[pos:]
        return events

    def _fail(self, code: int, message: str) -> NoReturn:
        """Queue GOAWAY and raise: the connection cannot continue."""
        self.failed = True
        self._out += f.goaway_frame(0, code, message.encode()[:256])
        raise H2ProtocolError(code, message, self._events)

    def _known(self, sid: int) -> bool:
        """Whether ``sid`` is one of our open streams; frames on never-opened streams are fatal."""
        if sid in self._streams:
            return True
        if sid == 0 or sid % 2 == 0 or sid >= self._next_id:
            self._fail(f.PROTOCOL_ERROR, f"frame on stream {sid}, which we never opened")
        return False  # closed already (answered, reset, or beyond a GOAWAY): ignore

    def _on_headers(self, flags: int, sid: int, payload: bytes | bytearray) -> None:
        payload = self._unpad(flags, payload)
        if flags & f.FLAG_PRIORITY:
            payload = payload[5:]
        if flags & f.FLAG_END_HEADERS:
            self._on_block(sid, payload, bool(flags & f.FLAG_END_STREAM))
        else:
            self._block_stream, self._block = sid, [bytes(payload)]
            self._block_end_stream = bool(flags & f.FLAG_END_STREAM)

    def _on_continuation(self, flags: int, sid: int, payload: bytes | bytearray) -> None:
        if not self._block_stream:
            self._fail(f.PROTOCOL_ERROR, "CONTINUATION without a HEADERS frame")
        self._block.append(bytes(payload))
        if len(self._block) * MAX_INBOUND_FRAME > MAX_HEADER_BLOCK and sum(map(len, self._block)) > MAX_HEADER_BLOCK:
            self._fail(f.PROTOCOL_ERROR, f"header block continued beyond {MAX_HEADER_BLOCK} bytes")
        if flags & f.FLAG_END_HEADERS:
            block, self._block, self._block_stream = b"".join(self._block), [], 0
            self._on_block(sid, block, self._block_end_stream)

    def _on_block(self, sid: int, block: bytes | bytearray, end_stream: bool) -> None:
        """A complete response header block (or trailers) for ``sid``; only :status is read.

        We advertise SETTINGS_HEADER_TABLE_SIZE = 0, so the server's HPACK table stays empty and a
        block can be read without decoding the ones before it (see http2_status).
        """
        if not self._known(sid):
            return
        s = self._streams[sid]
        if s.remote_done:
            self._fail(f.STREAM_CLOSED, f"HEADERS on stream {sid} after its response ended")
        if s.status is None:
            try:
                status = response_status(block)
            except ProtocolError as exc:
                self._fail(f.COMPRESSION_ERROR, f"undecodable response header block: {exc}")
            if status is None:
                self._fail(f.PROTOCOL_ERROR, f"response on stream {sid} without a valid :status")
            elif status < 200:  # informational; the final response follows
                return
            s.status = status
            if status != 200 or self.read_ids:
                try:
                    s.ids = response_ids(block)
                except ProtocolError as exc:
                    self._fail(f.COMPRESSION_ERROR, f"undecodable response header block: {exc}")
            if self.keep_responses:
                self.full_responses[sid] = (bytes(block), b"")
        if end_stream:
            self._finish(s)

    def _finish(self, s: _Stream) -> None:
        """The response on ``s`` is complete."""
        reason, ts = decode_response_reason(bytes(s.data)) if s.data else ("", None)
        if self.keep_responses and s.id in self.full_responses:
            self.full_responses[s.id] = (self.full_responses[s.id][0], bytes(s.data or b""))
        if s.ids is None:
            self._events.append(ResponseReceived(s.id, s.status or 0, reason, ts))
        else:
            self._events.append(ResponseReceived(s.id, s.status or 0, reason, ts, *s.ids))
        s.remote_done = True
        if s.local_done:
            del self._streams[s.id]

    def _on_data(self, flags: int, sid: int, payload: bytes | bytearray) -> None:
        n = len(payload)  # padding counts against flow control too
        self._recv_unacked += n
        if self._recv_unacked >= LOCAL_CONNECTION_WINDOW // 2:
            self._out += f.window_update_frame(0, self._recv_unacked)
            self._recv_unacked = 0
        if not self._known(sid):
            return
        s = self._streams[sid]
        if s.status is None or s.remote_done:
            self._fail(f.PROTOCOL_ERROR, f"DATA on stream {sid} outside a response body")
        payload = self._unpad(flags, payload)
        if s.data is None:
            s.data = bytearray(payload)
        else:
            s.data += payload
            cap = MAX_KEPT_RESPONSE_BODY if self.keep_responses else MAX_RESPONSE_BODY
            if len(s.data) > cap:
                self._fail(f.PROTOCOL_ERROR, f"response body on stream {sid} beyond {cap} bytes")
        if flags & f.FLAG_END_STREAM:
            self._finish(s)
            return
        s.received += n
        if s.received >= LOCAL_INITIAL_WINDOW // 2:
            self._out += f.window_update_frame(sid, s.received)
            s.received = 0

    def _unpad(self, flags: int, payload: bytes | bytearray) -> bytes | bytearray:
        if not flags & f.FLAG_PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            self._fail(f.PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1 : len(payload) - payload[0]]

    def _on_control(self, ftype: int, flags: int, sid: int, payload: bytes | bytearray) -> None:
        """Every frame type but HEADERS and DATA."""
        n = len(payload)
        if ftype == f.WINDOW_UPDATE:
            if n != 4:
                self._fail(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
            self._on_window_update(sid, f.unpack_u32(payload) & f.MAX_WINDOW)
        elif ftype == f.CONTINUATION:
            self._on_continuation(flags, sid, payload)
        elif ftype in (f.SETTINGS, f.PING, f.GOAWAY) and sid:
            self._fail(f.PROTOCOL_ERROR, f"frame type {ftype} on stream {sid}")
        elif ftype == f.SETTINGS:
            if flags & f.FLAG_ACK:
                if n:
                    self._fail(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            elif n % 6:
                self._fail(f.FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
            else:
                self._on_settings(payload)
        elif ftype == f.PING:
            if n != 8:
                self._fail(f.FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if flags & f.FLAG_ACK:
                self._events.append(PingAcked(bytes(payload)))
            else:
                self._out += f.frame(f.PING, f.FLAG_ACK, 0, bytes(payload))
        elif ftype == f.RST_STREAM:
            if n != 4:
                self._fail(f.FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
            if self._known(sid):
                s = self._drop(sid)
                if not s.remote_done:  # a reset after a complete answer only stops our upload
                    self._events.append(StreamReset(sid, f.unpack_u32(payload)))
        elif ftype == f.GOAWAY:
            if n < 8:
                self._fail(f.FRAME_SIZE_ERROR, "GOAWAY payload shorter than 8 bytes")
            self._on_goaway(payload)
        elif ftype == f.PUSH_PROMISE:
            self._fail(f.PROTOCOL_ERROR, "PUSH_PROMISE although we disabled push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks

    def _on_window_update(self, sid: int, increment: int) -> None:
        if increment == 0:
            self._fail(f.PROTOCOL_ERROR, f"WINDOW_UPDATE of 0 on stream {sid}")
        if sid == 0:
            self._send_window += increment
            if self._send_window > f.MAX_WINDOW:
                self._fail(f.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        elif self._known(sid):
            s = self._streams[sid]
            s.window += increment
            if s.window > f.MAX_WINDOW:
                self._fail(f.FLOW_CONTROL_ERROR, f"stream {sid} window above 2^31-1")
            if s.window > 0 and sid in self._stalled:
                self._ready.append(self._stalled.pop(sid))
        self._flush_data()

    def _on_settings(self, payload: bytes | bytearray) -> None:
        if not self._settings_seen:
            self._settings_seen = True
            self._peer_max_streams = UNLIMITED_STREAMS  # RFC 9113's default when the server names none
        for ident, value in f.unpack_settings(payload):
            if ident == f.SETTINGS_MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
            elif ident == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    self._fail(f.FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value} above 2^31-1")
                self._set_peer_window(value)
            elif ident == f.SETTINGS_MAX_FRAME_SIZE:
                if not f.MIN_FRAME_SIZE <= value <= f.MAX_FRAME_SIZE:
                    self._fail(f.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self._peer_max_frame = value
            elif ident == f.SETTINGS_HEADER_TABLE_SIZE:
                self._table_update_due = True
            elif ident == f.SETTINGS_ENABLE_PUSH and value > 1:
                self._fail(f.PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
        self._out += f.frame(f.SETTINGS, f.FLAG_ACK, 0)
        self._events.append(SettingsChanged(self._peer_max_streams, self._peer_window, self._peer_max_frame))
        self._flush_data()

    def _set_peer_window(self, value: int) -> None:
        """Apply a new SETTINGS_INITIAL_WINDOW_SIZE, shifting the windows of streams still uploading."""
        delta, self._peer_window = value - self._peer_window, value
        if not delta:
            return
        for s in (*self._ready, *self._stalled.values()):
            s.window += delta
            if s.window > f.MAX_WINDOW:
                self._fail(f.FLOW_CONTROL_ERROR, f"stream {s.id} window above 2^31-1")
        for sid in [sid for sid, s in self._stalled.items() if s.window > 0]:
            self._ready.append(self._stalled.pop(sid))

    def _on_goaway(self, payload: bytes | bytearray) -> None:
        last, code, debug = f.unpack_goaway(payload)
        reason = decode_response_reason(debug)[0] or debug.decode("utf-8", "replace")
        self.goaway = GoAwayReceived(last, code, reason)
        self._events.append(self.goaway)
        for sid in [sid for sid in self._streams if sid > last]:  # never processed; never answered
            self._drop(sid)

    def _drop(self, sid: int) -> _Stream:
        """Forget a stream and any body bytes it still had to send."""
        s = self._streams.pop(sid)
        s.body = None
        self._stalled.pop(sid, None)
        return s

    def _flush_data(self) -> None:
        """Send queued body bytes as far as the connection and stream windows allow."""
        ready, out = self._ready, self._out
        while ready and self._send_window > 0:
            s = ready[0]
            if s.body is None:  # reset or dropped while waiting
                ready.popleft()
                continue
            if s.window <= 0:
                self._stalled[ready.popleft().id] = s
                continue
            left = len(s.body) - s.sent
            n = min(left, self._send_window, s.window, self._peer_max_frame)
            end = n == left
            out += f.FRAME_HEAD.pack(n << 8 | f.DATA, f.FLAG_END_STREAM if end else 0, s.id)
            out += s.body[s.sent : s.sent + n]
            s.sent += n
            s.window -= n
            self._send_window -= n
            if end:
                ready.popleft()
                s.body, s.local_done = None, True
                if s.remote_done:
                    del self._streams[s.id]
