"""Reads :status from a response header block in O(1), for a peer whose HPACK dynamic table is empty.

The client advertises SETTINGS_HEADER_TABLE_SIZE = 0, so the server's encoder can keep nothing in
its dynamic table: every entry it inserts is evicted at once, and no block can refer to an earlier
one. The decoder therefore has no state to maintain, and since ``:status`` must be the first field
of a response, the rest of the block can be skipped. Full HPACK decoding was the largest single
cost per request at high rates.
"""

from __future__ import annotations

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman

from apnsd.errors import ProtocolError

STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}
STATUS_NAME_INDEXES = frozenset(STATIC_STATUS)
STATIC_TABLE_SIZE = 61


def _integer(block: bytes | bytearray, pos: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer with an N-bit prefix at ``pos``; returns (value, next position)."""
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block):
            raise ProtocolError("truncated HPACK integer")
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos
        if shift > 28:
            raise ProtocolError("HPACK integer too large")


def _string(block: bytes | bytearray, pos: int) -> tuple[bytes, int]:
    if pos >= len(block):
        raise ProtocolError("truncated HPACK string")
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise ProtocolError("truncated HPACK string")
    raw = block[pos:end]
    if not huffman:
        return bytes(raw), end
    try:
        return decode_huffman(raw), end
    except HPACKDecodingError as exc:  # a gateway's bad Huffman code fails the connection, not the loop
        raise ProtocolError(f"bad Huffman-coded string: {exc}") from None


def response_status(block: bytes | bytearray) -> int | None:
    """The :status of a response header block (its first field, as RFC 9113 requires).

    None when the block is valid HPACK but does not start with a valid :status (a malformed
    response); ProtocolError when it is not HPACK a table-less peer can send.
    """
    pos, n = 0, len(block)
    while pos < n and block[pos] & 0xE0 == 0x20:  # dynamic table size updates
        size, pos = _integer(block, pos, 5)
        if size:
            raise ProtocolError(f"server raised its HPACK table to {size} although we allowed 0")
    if pos >= n:
        raise ProtocolError("empty response header block")
    first = block[pos]
    if first & 0x80:
        index, _ = _integer(block, pos, 7)
        if index > STATIC_TABLE_SIZE:
            raise ProtocolError(f"reference to dynamic table entry {index} although we allowed none")
        return STATIC_STATUS.get(index)
    if first & 0x40:
        index, pos = _integer(block, pos, 6)
    else:
        index, pos = _integer(block, pos, 4)
    if index == 0:
        name, pos = _string(block, pos)
        if name != b":status":
            return None
    elif index > STATIC_TABLE_SIZE:
        raise ProtocolError(f"reference to dynamic table entry {index} although we allowed none")
    elif index not in STATUS_NAME_INDEXES:
        return None
    value, _ = _string(block, pos)
    return int(value) if len(value) == 3 and value.isdigit() else None


def response_headers(block: bytes | bytearray) -> dict[str, str]:
    """Every field of a response header block from a table-less peer, by lower-case name (the last one wins).

    For the few answers whose headers matter (the channel management API's ``apns-channel-id``),
    not the delivery path, which reads ``:status`` alone.
    """
    from hpack.table import HeaderTable

    static = HeaderTable.STATIC_TABLE
    out: dict[str, str] = {}
    pos, n = 0, len(block)
    while pos < n:
        first = block[pos]
        if first & 0xE0 == 0x20:
            size, pos = _integer(block, pos, 5)
            if size:
                raise ProtocolError(f"server raised its HPACK table to {size} although we allowed 0")
            continue
        if first & 0x80:
            index, pos = _integer(block, pos, 7)
            if not 0 < index <= STATIC_TABLE_SIZE:
                raise ProtocolError(f"reference to table entry {index} although we allowed no dynamic table")
            name, value = static[index - 1]
        else:
            index, pos = _integer(block, pos, 6 if first & 0x40 else 4)
            if index == 0:
                name, pos = _string(block, pos)
            elif index <= STATIC_TABLE_SIZE:
                name = static[index - 1][0]
            else:
                raise ProtocolError(f"reference to table entry {index} although we allowed no dynamic table")
            value, pos = _string(block, pos)
        out[name.decode("utf-8", "replace").lower()] = value.decode("utf-8", "replace")
    return out


def response_ids(block: bytes | bytearray) -> tuple[str, str]:
    """The ``apns-id`` and ``apns-unique-id`` values of a response header block ("" when absent)."""
    fields = response_headers(block)
    return fields.get("apns-id", ""), fields.get("apns-unique-id", "")
