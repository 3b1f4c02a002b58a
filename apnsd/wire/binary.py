"""Sans-IO legacy binary protocol: command-2 frames, error responses (command 8), feedback tuples."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from apnsd.errors import ProtocolError

COMMAND_FRAME = 2
COMMAND_ERROR = 8
ITEM_TOKEN, ITEM_PAYLOAD, ITEM_ID, ITEM_EXPIRY, ITEM_PRIORITY = 1, 2, 3, 4, 5
ERROR_RESPONSE_SIZE = 6
MAX_FRAME_LENGTH = 65_536

_FRAME_HEAD = struct.Struct(">BI")
_ITEM_HEAD = struct.Struct(">BH")
_ERROR = struct.Struct(">BBI")
_FEEDBACK_HEAD = struct.Struct(">IH")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded command-2 notification."""

    token: bytes
    payload: bytes
    identifier: int | None = None
    expiry: int | None = None
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """The 6-byte packet APNs sends before closing: status and the offending notification's id."""

    status: int
    identifier: int


def encode_frame(token: bytes, payload: bytes, identifier: int, expiry: int = 0, priority: int = 10) -> bytes:
    """One command-2 notification with all five items, in the order 1, 2, 3, 4, 5."""
    tl, pl = len(token), len(payload)
    layout = _LAYOUTS.get((tl, pl)) or _layout(tl, pl)
    return layout.pack(
        COMMAND_FRAME,
        tl + pl + 24,
        ITEM_TOKEN,
        tl,
        token,
        ITEM_PAYLOAD,
        pl,
        payload,
        ITEM_ID,
        4,
        identifier,
        ITEM_EXPIRY,
        4,
        expiry,
        ITEM_PRIORITY,
        1,
        priority,
    )


_LAYOUTS: dict[tuple[int, int], struct.Struct] = {}


def _layout(token_length: int, payload_length: int) -> struct.Struct:
    """The whole frame as one struct for these lengths (one C call per frame; cached, few distinct)."""
    layout = struct.Struct(f">BIBH{token_length}sBH{payload_length}sBHIBHIBHB")
    if len(_LAYOUTS) < 4096:
        _LAYOUTS[(token_length, payload_length)] = layout
    return layout


def decode_frames(buf: bytes | bytearray | memoryview) -> tuple[list[Frame], int]:
    """Decode every whole frame at the start of ``buf``; returns them and the bytes consumed."""
    frames: list[Frame] = []
    view = memoryview(buf)
    pos, end = 0, len(view)
    while end - pos >= 5:
        command, length = _FRAME_HEAD.unpack_from(view, pos)
        if command != COMMAND_FRAME:
            raise ProtocolError(f"unsupported command {command} at offset {pos}")
        if length > MAX_FRAME_LENGTH:
            raise ProtocolError(f"frame length {length} is too large")
        if end - pos - 5 < length:
            break
        frames.append(_decode_items(view[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return frames, pos


def _decode_items(items: memoryview) -> Frame:
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(items):
        if len(items) - pos < 3:
            raise ProtocolError("truncated item header")
        item, size = _ITEM_HEAD.unpack_from(items, pos)
        pos += 3
        if pos + size > len(items):
            raise ProtocolError(f"item {item} overruns its frame")
        if item in fields:
            raise ProtocolError(f"item {item} appears twice")
        fields[item] = bytes(items[pos : pos + size])
        pos += size
    if ITEM_TOKEN not in fields or ITEM_PAYLOAD not in fields:
        raise ProtocolError("frame lacks a device token or a payload")
    ident, expiry, prio = fields.get(ITEM_ID), fields.get(ITEM_EXPIRY), fields.get(ITEM_PRIORITY)
    for name, value, size in (("identifier", ident, 4), ("expiry", expiry, 4), ("priority", prio, 1)):
        if value is not None and len(value) != size:
            raise ProtocolError(f"{name} item has {len(value)} bytes, expected {size}")
    return Frame(
        fields[ITEM_TOKEN],
        fields[ITEM_PAYLOAD],
        int.from_bytes(ident, "big") if ident is not None else None,
        int.from_bytes(expiry, "big") if expiry is not None else None,
        prio[0] if prio is not None else None,
    )


def encode_error_response(status: int, identifier: int) -> bytes:
    """The gateway's 6-byte error packet."""
    return _ERROR.pack(COMMAND_ERROR, status, identifier)


def parse_error_response(data: bytes) -> ErrorResponse:
    """Parse the 6-byte error packet; anything else is a protocol error."""
    if len(data) < ERROR_RESPONSE_SIZE:
        raise ProtocolError(f"error response truncated to {len(data)} bytes")
    command, status, identifier = _ERROR.unpack_from(data)
    if command != COMMAND_ERROR:
        raise ProtocolError(f"expected error response command 8, got {command}")
    return ErrorResponse(status, identifier)


def encode_feedback(timestamp: int, token: bytes) -> bytes:
    """One feedback-service tuple."""
    return _FEEDBACK_HEAD.pack(timestamp, len(token)) + token


def parse_feedback(buf: bytes | bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Every whole (timestamp, token) tuple at the start of ``buf`` and the bytes consumed."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while len(buf) - pos >= 6:
        ts, size = _FEEDBACK_HEAD.unpack_from(buf, pos)
        if len(buf) - pos - 6 < size:
            break
        out.append((ts, bytes(buf[pos + 6 : pos + 6 + size])))
        pos += 6 + size
    return out, pos
