"""Sans-IO legacy binary protocol: notifications (commands 0, 1, 2), error responses (command 8), feedback."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apnsd.errors import ProtocolError

if TYPE_CHECKING:
    import msgspec

COMMAND_SIMPLE, COMMAND_ENHANCED, COMMAND_FRAME = 0, 1, 2
COMMAND_ERROR = 8
ITEM_TOKEN, ITEM_PAYLOAD, ITEM_ID, ITEM_EXPIRY, ITEM_PRIORITY = 1, 2, 3, 4, 5
ERROR_RESPONSE_SIZE = 6
MAX_FRAME_LENGTH = 65_536

_FRAME_HEAD = struct.Struct(">BI")
_SIMPLE_HEAD = struct.Struct(">BH")  # command 0: command, token length
_ENHANCED_HEAD = struct.Struct(">BIIH")  # command 1: command, identifier, expiry, token length
_LENGTH = struct.Struct(">H")
_ITEM_HEAD = struct.Struct(">BH")
_ERROR = struct.Struct(">BBI")
_FEEDBACK_HEAD = struct.Struct(">IH")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded notification; ``command`` says which format carried it (0 simple, 1 enhanced, 2 frame)."""

    token: bytes
    payload: bytes
    identifier: int | None = None
    expiry: int | None = None
    priority: int | None = None
    command: int = COMMAND_FRAME


class MalformedInput(ProtocolError):
    """Bytes that are not a notification; ``decoded`` holds the whole notifications that came before them."""

    def __init__(self, message: str, decoded: list[Frame]) -> None:
        super().__init__(message)
        self.decoded = decoded


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """The 6-byte packet APNs sends before closing: status and the offending notification's id."""

    status: int
    identifier: int


def encode_frame(token: bytes, payload: bytes, identifier: int, expiry: int = 0, priority: int = 10) -> bytes:
    """One command-2 notification with all five items, in the order 1, 2, 3, 4, 5."""
    return b"".join(frame_parts(token, payload, identifier, expiry, priority))


# A frame in three parts, so that the payload goes into the joined write as it is (any bytes-like object,
# no copy): everything before the payload (frame header, the token item, the payload item's header), the
# payload, and everything after it (items 3, 4 and 5: identifier, expiry, priority).
_TAIL = struct.Struct(">BHIBHIBHB")
TAIL_SIZE = _TAIL.size
_HEADS: dict[int, struct.Struct] = {}
# Bytes a frame adds around its token and payload: frame header 5, item headers 5 × 3, items 3-5 4 + 4 + 1.
FRAME_OVERHEAD = 5 + 15 + 9


def frame_parts(
    token: bytes, payload: bytes | memoryview | msgspec.Raw, identifier: int, expiry: int = 0, priority: int = 10
) -> tuple[bytes, bytes | memoryview | msgspec.Raw, bytes]:
    """One command-2 notification as (head, payload, tail): ``b"".join`` of them is ``encode_frame``'s bytes.

    The whole frame is ``len(token) + len(payload) + FRAME_OVERHEAD`` bytes."""
    tl, pl = len(token), len(payload)
    head = _HEADS.get(tl) or _head(tl)
    return (
        head.pack(COMMAND_FRAME, tl + pl + FRAME_OVERHEAD - 5, ITEM_TOKEN, tl, token, ITEM_PAYLOAD, pl),
        payload,
        _TAIL.pack(ITEM_ID, 4, identifier, ITEM_EXPIRY, 4, expiry, ITEM_PRIORITY, 1, priority),
    )


def _head(token_length: int) -> struct.Struct:
    """The frame header, the token item and the payload item's header, for tokens of this length (cached)."""
    head = struct.Struct(f">BIBH{token_length}sBH")
    if len(_HEADS) < 256:  # token lengths are few (32 bytes, all of them, today)
        _HEADS[token_length] = head
    return head


def decode_frames(buf: bytes | bytearray | memoryview) -> tuple[list[Frame], int]:
    """Decode every whole notification (command 0, 1 or 2) at the start of ``buf``; returns them and the
    bytes consumed. Any other command, or a malformed notification, raises MalformedInput (a ProtocolError)
    carrying the notifications decoded before it."""
    frames: list[Frame] = []
    try:
        return _decode_into(frames, memoryview(buf))
    except ProtocolError as exc:
        raise MalformedInput(str(exc), frames) from None


def _decode_into(frames: list[Frame], view: memoryview) -> tuple[list[Frame], int]:
    """Append whole notifications from ``view`` to ``frames``; returns them and the bytes they took."""
    pos, end = 0, len(view)
    while pos < end:
        command = view[pos]
        if command == COMMAND_FRAME:
            if end - pos < 5:
                break
            _, length = _FRAME_HEAD.unpack_from(view, pos)
            if length > MAX_FRAME_LENGTH:
                raise ProtocolError(f"frame length {length} is too large")
            if end - pos - 5 < length:
                break
            frames.append(_decode_items(view[pos + 5 : pos + 5 + length]))
            pos += 5 + length
        elif command == COMMAND_SIMPLE or command == COMMAND_ENHANCED:
            found = _decode_legacy(view, pos, end)
            if found is None:
                break
            frame, pos = found
            frames.append(frame)
        else:
            raise ProtocolError(f"unknown command {command} at offset {pos}")
    return frames, pos


def _decode_legacy(view: memoryview, pos: int, end: int) -> tuple[Frame, int] | None:
    """One command-0 or command-1 notification at ``pos`` and the offset after it; None if incomplete."""
    if view[pos] == COMMAND_SIMPLE:
        head, identifier, expiry = _SIMPLE_HEAD, None, None
        if end - pos < head.size:
            return None
        _, token_length = head.unpack_from(view, pos)
    else:
        head = _ENHANCED_HEAD
        if end - pos < head.size:
            return None
        _, identifier, expiry, token_length = head.unpack_from(view, pos)
    at = pos + head.size + token_length
    if end - at < _LENGTH.size:
        return None
    (payload_length,) = _LENGTH.unpack_from(view, at)
    stop = at + _LENGTH.size + payload_length
    if stop > end:
        return None
    token = bytes(view[pos + head.size : at])
    payload = bytes(view[at + _LENGTH.size : stop])
    return Frame(token, payload, identifier, expiry, None, int(view[pos])), stop


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
