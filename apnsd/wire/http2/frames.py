"""HTTP/2 frames for the client core: constants, builders and payload parsers (RFC 9113 §6)."""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
ERROR_NAMES = {
    NO_ERROR: "NO_ERROR",
    PROTOCOL_ERROR: "PROTOCOL_ERROR",
    INTERNAL_ERROR: "INTERNAL_ERROR",
    FLOW_CONTROL_ERROR: "FLOW_CONTROL_ERROR",
    STREAM_CLOSED: "STREAM_CLOSED",
    FRAME_SIZE_ERROR: "FRAME_SIZE_ERROR",
    REFUSED_STREAM: "REFUSED_STREAM",
    CANCEL: "CANCEL",
    COMPRESSION_ERROR: "COMPRESSION_ERROR",
}

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
MIN_FRAME_SIZE = 16_384
MAX_FRAME_SIZE = 2**24 - 1
MAX_STREAM_ID = 2**31 - 1

# A frame header is 24-bit length, 8-bit type, 8-bit flags, 31-bit stream id: packing
# length and type together as one 32-bit word makes it a single struct call.
FRAME_HEAD = struct.Struct(">IBI")
_U32 = struct.Struct(">I")
_U16_U32 = struct.Struct(">HI")
_GOAWAY = struct.Struct(">II")


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One whole frame."""
    return FRAME_HEAD.pack(len(payload) << 8 | ftype, flags, stream_id) + payload


def settings_frame(settings: dict[int, int]) -> bytes:
    """A SETTINGS frame carrying ``settings`` (identifier → value)."""
    return frame(SETTINGS, 0, 0, b"".join(_U16_U32.pack(k, v) for k, v in settings.items()))


def window_update_frame(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame for a stream, or for the connection when ``stream_id`` is 0."""
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream_frame(stream_id: int, error_code: int) -> bytes:
    """An RST_STREAM frame."""
    return frame(RST_STREAM, 0, stream_id, _U32.pack(error_code))


def goaway_frame(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    """A GOAWAY frame."""
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, error_code) + debug)


def header_frames(stream_id: int, block: bytes, end_stream: bool, max_frame_size: int) -> bytes:
    """HEADERS followed by as many CONTINUATION frames as ``block`` needs."""
    flags = FLAG_END_STREAM if end_stream else 0
    if len(block) <= max_frame_size:
        return frame(HEADERS, flags | FLAG_END_HEADERS, stream_id, block)
    chunks = [block[i : i + max_frame_size] for i in range(0, len(block), max_frame_size)]
    out = [frame(HEADERS, flags, stream_id, chunks[0])]
    out.extend(frame(CONTINUATION, 0, stream_id, c) for c in chunks[1:-1])
    out.append(frame(CONTINUATION, FLAG_END_HEADERS, stream_id, chunks[-1]))
    return b"".join(out)


def unpack_u32(payload: bytes | bytearray | memoryview) -> int:
    """The big-endian 32-bit word at the start of ``payload``."""
    return int(_U32.unpack_from(payload)[0])


def unpack_settings(payload: bytes | bytearray) -> list[tuple[int, int]]:
    """The (identifier, value) pairs of a SETTINGS payload whose length is a multiple of 6."""
    return [_U16_U32.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def unpack_goaway(payload: bytes | bytearray) -> tuple[int, int, bytes]:
    """Last stream id, error code and debug data of a GOAWAY payload of at least 8 bytes."""
    last, code = _GOAWAY.unpack_from(payload)
    return last & MAX_STREAM_ID, code, bytes(payload[8:])
