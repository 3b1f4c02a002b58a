"""The O(1) :status reader agrees with the hpack reference decoder on every block a table-less encoder makes."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apnsd.errors import ProtocolError
from apnsd.wire.http2.status import response_ids, response_status

statuses = st.sampled_from([200, 204, 206, 304, 400, 403, 404, 405, 410, 413, 429, 500, 503])
header_values = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=0, max_size=40)
extra_headers = st.lists(
    st.tuples(st.sampled_from(["apns-id", "server", "date", "content-type", "x-custom"]), header_values), max_size=4
)


def table_less_encoder() -> hpack.Encoder:
    """An encoder bound by SETTINGS_HEADER_TABLE_SIZE = 0, as our client advertises."""
    enc = hpack.Encoder()
    enc.header_table_size = 0
    return enc


@given(status=statuses, extra=extra_headers, huffman=st.booleans(), sensitive=st.booleans())
def test_status_matches_reference_decoder(status, extra, huffman, sensitive):
    """For any response block, the fast reader returns the status hpack decodes."""
    enc = table_less_encoder()
    headers = [(":status", str(status), sensitive)] + [(k, v, False) for k, v in extra]
    for _ in range(2):  # the second block has no table size update in front
        block = enc.encode(
            [hpack.HeaderTuple(k, v) if not s else hpack.NeverIndexedHeaderTuple(k, v) for k, v, s in headers],
            huffman=huffman,
        )
        expected = int(dict(_reference(block))[":status"])
        assert expected == response_status(block)


id_headers = st.lists(
    st.tuples(st.sampled_from(["apns-id", "apns-unique-id", "server", "date", "content-length"]), header_values),
    max_size=5,
    unique_by=lambda kv: kv[0],
)


@given(status=statuses, extra=id_headers, huffman=st.booleans(), sensitive=st.booleans())
def test_ids_match_reference_decoder(status, extra, huffman, sensitive):
    """For any response block, response_ids returns the apns-id and apns-unique-id hpack decodes."""
    enc = table_less_encoder()
    headers = [(":status", str(status)), *extra]
    for _ in range(2):
        block = enc.encode(
            [hpack.NeverIndexedHeaderTuple(k, v) if sensitive else hpack.HeaderTuple(k, v) for k, v in headers],
            huffman=huffman,
        )
        decoded = dict(_reference(block))
        assert (decoded.get("apns-id", ""), decoded.get("apns-unique-id", "")) == response_ids(block)


def _reference(block: bytes) -> list[tuple[str, str]]:
    dec = hpack.Decoder()
    dec.header_table_size = 0
    return dec.decode(block)


def test_literal_status_with_literal_name_is_read():
    """A :status sent as a literal name and value (no static index) is understood."""
    block = bytes([0x00, 7]) + b":status" + bytes([3]) + b"410"
    assert 410 == response_status(block)


@pytest.mark.parametrize(
    "block",
    [b"", b"\x3f\xe1\x1f\x88", b"\xbe", b"\x48\x05", b"\x7f\x01\x03200", b"\x48\x81\xff", b"\x08\x83\xff\xff\xff"],
)
def test_blocks_a_table_less_peer_cannot_send_are_protocol_errors(block):
    """Empty blocks, dynamic references, raised tables, truncated strings and bad Huffman codes are HPACK errors."""
    with pytest.raises(ProtocolError):
        response_status(block)


def test_a_bad_huffman_code_after_the_status_is_a_protocol_error():
    """An undecodable Huffman string among the other fields (read for apns-id on errors) is an HPACK error too."""
    with pytest.raises(ProtocolError):
        response_ids(b"\x8c\x40\x81\xff\x01x")


@pytest.mark.parametrize("block", [b"\x82", b"\x00\x03abc\x03200", b"\x48\x02ok"])
def test_blocks_without_a_valid_status_first_give_none(block):
    """Valid HPACK that does not open with a three-digit :status is a malformed response: None."""
    assert None is response_status(block)
