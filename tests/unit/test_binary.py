"""The sans-IO legacy binary protocol, checked against byte vectors written by hand from the fact sheet.

Every expected byte string here is spelled out from apns-protocol.md §1.3 (command-2 frame), §1.4 (error
response) and §1.7 (feedback tuple); none is produced by the encoder under test.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apnsd.errors import ProtocolError
from apnsd.wire.binary import (
    FRAME_OVERHEAD,
    ErrorResponse,
    Frame,
    MalformedInput,
    decode_frames,
    encode_error_response,
    encode_feedback,
    encode_frame,
    frame_parts,
    parse_error_response,
    parse_feedback,
)

TOKEN_HEX = "c9d4c07cfbbc26d6ef87a44d53e169831096a5d5fd82547556659dddf715defc"
TOKEN = bytes.fromhex(TOKEN_HEX)
PAYLOAD = b'{"aps":{"alert":"This is the alert text","badge":1,"sound":"default"}}'  # n = 70 bytes
IDENT = 0x01020304
EXPIRY = 1_790_000_000  # 0x6AB13B80

# command 2, frame length 56 + 70 = 126 = 0x7e, then items 1..5, each: id (1), length (2, BE), data.
VECTOR = (
    bytes.fromhex("020000007e")
    + bytes.fromhex("010020")
    + bytes.fromhex(TOKEN_HEX)
    + bytes.fromhex("020046")
    + PAYLOAD
    + bytes.fromhex("03000401020304")
    + bytes.fromhex("0400046ab13b80")
    + bytes.fromhex("0500010a")
)

# A second, differently shaped frame as Pushy 0.4 sent it: identifier first, expiry and priority omitted.
OTHER_TOKEN = bytes(range(32))
SHORT_FRAME = (
    bytes.fromhex("020000002f")  # 7 + 35 + 5 = 47
    + bytes.fromhex("0300040000002a")
    + bytes.fromhex("010020")
    + OTHER_TOKEN
    + bytes.fromhex("020002")
    + b"{}"
)


def test_frame_encodes_to_the_hand_written_bytes():
    """A 32-byte token, a 70-byte payload, an identifier, an expiry and priority 10 encode byte for byte."""
    assert VECTOR == encode_frame(TOKEN, PAYLOAD, IDENT, EXPIRY, 10)


def test_frame_sizes_follow_the_fact_sheet_formula():
    """With a 32-byte token and all five items the frame length is 56 + n and the wire size 61 + n."""
    frame = encode_frame(TOKEN, PAYLOAD, IDENT, EXPIRY, 10)

    assert 56 + len(PAYLOAD) == int.from_bytes(frame[1:5], "big")
    assert 61 + len(PAYLOAD) == len(frame)


def test_frame_parts_join_to_the_hand_written_bytes_around_a_payload_view():
    """The three parts of a frame, its payload a msgspec view into a job, join to the hand-written vector."""
    job = b'{"payload":' + PAYLOAD + b"}"
    view = msgspec.json.decode(job, type=dict[str, msgspec.Raw])["payload"]

    head, payload, tail = frame_parts(TOKEN, view, IDENT, EXPIRY, 10)

    assert (VECTOR, view) == (head + bytes(payload) + tail, payload)
    assert len(VECTOR) == len(TOKEN) + len(PAYLOAD) + FRAME_OVERHEAD


def test_encoder_defaults_are_store_nothing_and_immediate():
    """Without expiry and priority the frame carries expiry 0 (do not store) and priority 10."""
    expected = VECTOR[:-18] + bytes.fromhex("03000401020304040004000000000500010a")

    assert expected == encode_frame(TOKEN, PAYLOAD, IDENT)


def test_hand_written_frame_decodes_to_its_fields():
    """The hand-written vector decodes to its token, payload, identifier, expiry and priority."""
    assert ([Frame(TOKEN, PAYLOAD, IDENT, EXPIRY, 10)], len(VECTOR)) == decode_frames(VECTOR)


def test_items_in_any_order_with_optional_items_omitted_decode():
    """Items may come in any order and items 4 and 5 may be left out; missing ones decode as None."""
    assert ([Frame(OTHER_TOKEN, b"{}", 42, None, None)], 52) == decode_frames(SHORT_FRAME)


def test_several_concatenated_frames_decode_in_order():
    """Frames written back to back in one buffer all decode, in order, consuming the whole buffer."""
    buf = VECTOR + SHORT_FRAME + VECTOR

    frames, used = decode_frames(buf)

    assert [
        Frame(TOKEN, PAYLOAD, IDENT, EXPIRY, 10),
        Frame(OTHER_TOKEN, b"{}", 42, None, None),
        Frame(TOKEN, PAYLOAD, IDENT, EXPIRY, 10),
    ] == frames
    assert len(buf) == used


@pytest.mark.parametrize("cut", [0, 1, 4, 5, 6, 40, len(SHORT_FRAME) - 1])
def test_partial_frame_is_left_unconsumed(cut):
    """A frame cut short stays in the buffer: whole frames before it decode and the count stops before it."""
    frames, used = decode_frames(VECTOR + SHORT_FRAME[:cut])

    assert ([Frame(TOKEN, PAYLOAD, IDENT, EXPIRY, 10)], len(VECTOR)) == (frames, used)


def test_empty_buffer_decodes_to_nothing():
    """An empty buffer holds no frames and consumes nothing."""
    assert ([], 0) == decode_frames(b"")


def test_decoder_accepts_memoryview_and_bytearray():
    """The decoder reads bytes, bytearray and memoryview buffers alike."""
    expected = ([Frame(TOKEN, PAYLOAD, IDENT, EXPIRY, 10)], len(VECTOR))

    assert expected == decode_frames(bytearray(VECTOR))
    assert expected == decode_frames(memoryview(VECTOR))


TOKEN_ITEM = bytes.fromhex("010020") + TOKEN
PAYLOAD_ITEM = bytes.fromhex("020002") + b"{}"

MALFORMED = {
    "unknown command 3": bytes.fromhex("0300000005") + PAYLOAD_ITEM,
    "an error response sent to the gateway": bytes.fromhex("080800000001"),
    "frame length over 64 KiB": bytes.fromhex("0200010001"),
    "truncated item header": bytes.fromhex("02000000020100"),
    "item overruns its frame": bytes.fromhex("0200000005010020aabb"),
    "token item twice": bytes.fromhex("020000004a") + TOKEN_ITEM + TOKEN_ITEM + PAYLOAD_ITEM,
    "no payload": bytes.fromhex("0200000023") + TOKEN_ITEM,
    "no token": bytes.fromhex("0200000005") + PAYLOAD_ITEM,
    "3-byte identifier": bytes.fromhex("020000002e") + TOKEN_ITEM + PAYLOAD_ITEM + bytes.fromhex("030003000001"),
    "5-byte expiry": bytes.fromhex("0200000030") + TOKEN_ITEM + PAYLOAD_ITEM + bytes.fromhex("0400050000000000"),
    "2-byte priority": bytes.fromhex("020000002d") + TOKEN_ITEM + PAYLOAD_ITEM + bytes.fromhex("050002000a"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_frames_raise_protocol_error(name):
    """Unsupported commands, oversized or inconsistent frames and bad item sizes are protocol errors."""
    with pytest.raises(ProtocolError):
        decode_frames(MALFORMED[name])


def test_malformed_frame_after_good_ones_is_still_an_error():
    """A bad frame following good ones in the same buffer raises rather than being skipped."""
    with pytest.raises(ProtocolError):
        decode_frames(VECTOR + MALFORMED["no payload"])


def test_malformed_input_carries_the_notifications_before_it():
    """The error for bad bytes holds the whole notifications decoded before them, so none is dropped."""
    with pytest.raises(MalformedInput) as caught:
        decode_frames(VECTOR + MALFORMED["unknown command 3"])

    assert [Frame(TOKEN, PAYLOAD, IDENT, EXPIRY, 10)] == caught.value.decoded
    assert f"unknown command 3 at offset {len(VECTOR)}" == str(caught.value)


# Command 0 (§1.1): command, token length (2), token, payload length (2), payload.
SIMPLE = bytes.fromhex("000020") + TOKEN + bytes.fromhex("0046") + PAYLOAD
# Command 1 (§1.2): command, identifier (4), expiry (4), token length (2), token, payload length (2), payload.
ENHANCED = bytes.fromhex("01010203046ab13b800020") + TOKEN + bytes.fromhex("0046") + PAYLOAD


def test_simple_format_decodes_without_identifier_or_expiry():
    """A command-0 notification decodes to its token and payload, with no identifier, expiry or priority."""
    assert ([Frame(TOKEN, PAYLOAD, None, None, None, 0)], 37 + 70) == decode_frames(SIMPLE)


def test_enhanced_format_decodes_with_identifier_and_expiry():
    """A command-1 notification decodes to its identifier, expiry, token and payload (45 + n bytes)."""
    assert ([Frame(TOKEN, PAYLOAD, IDENT, EXPIRY, None, 1)], 45 + 70) == decode_frames(ENHANCED)


def test_all_three_formats_mixed_decode_in_order():
    """Commands 0, 1 and 2 back to back in one buffer decode in order and consume it all."""
    buf = SIMPLE + VECTOR + ENHANCED

    frames, used = decode_frames(buf)

    assert [0, 2, 1] == [f.command for f in frames]
    assert len(buf) == used


@pytest.mark.parametrize("cut", [1, 2, 3, 20, 35, 36, 37 + 69])
def test_partial_simple_notification_is_left_unconsumed(cut):
    """A command-0 notification cut anywhere stays in the buffer after the whole ones before it."""
    assert ([Frame(TOKEN, PAYLOAD, IDENT, EXPIRY, 10)], len(VECTOR)) == decode_frames(VECTOR + SIMPLE[:cut])


@pytest.mark.parametrize("cut", [1, 8, 10, 11, 43, 44, 45 + 69])
def test_partial_enhanced_notification_is_left_unconsumed(cut):
    """A command-1 notification cut anywhere stays in the buffer after the whole ones before it."""
    assert ([Frame(TOKEN, PAYLOAD, IDENT, EXPIRY, 10)], len(VECTOR)) == decode_frames(VECTOR + ENHANCED[:cut])


def test_error_response_packet_parses():
    """Command 8, status 8 (invalid token) and the 4-byte identifier parse from the 6-byte packet."""
    assert ErrorResponse(8, 0x01020304) == parse_error_response(bytes.fromhex("080801020304"))


@pytest.mark.parametrize(
    ("status", "identifier", "packet"),
    [
        (8, 42, "08080000002a"),
        (10, 7, "080a00000007"),
        (128, 0, "088000000000"),
        (255, 0xFFFFFFFF, "08ffffffffff"),
    ],
)
def test_error_response_packet_encodes(status, identifier, packet):
    """The gateway's error packet is command 8, one status byte, and the identifier big-endian."""
    assert bytes.fromhex(packet) == encode_error_response(status, identifier)


@pytest.mark.parametrize("packet", ["", "08", "0808000000", "020800000001", "000000000000"])
def test_truncated_or_foreign_error_response_is_a_protocol_error(packet):
    """Fewer than 6 bytes, or a command other than 8, is not an error response."""
    with pytest.raises(ProtocolError):
        parse_error_response(bytes.fromhex(packet))


FEEDBACK_1 = bytes.fromhex("5f5e10000020") + TOKEN  # 1600000000
FEEDBACK_2 = bytes.fromhex("6ab13b800020") + OTHER_TOKEN  # 1790000000


def test_feedback_tuple_encodes_to_the_hand_written_bytes():
    """A feedback tuple is a 4-byte timestamp, a 2-byte token length and the token."""
    assert FEEDBACK_1 == encode_feedback(1_600_000_000, TOKEN)


def test_feedback_stream_parses_whole_tuples_and_counts_consumed_bytes():
    """Whole tuples parse in order; a trailing partial tuple is left for the next read."""
    for partial in (b"", FEEDBACK_1[:3], FEEDBACK_1[:6], FEEDBACK_1[:-1]):
        assert ([(1_600_000_000, TOKEN), (1_790_000_000, OTHER_TOKEN)], 76) == parse_feedback(
            FEEDBACK_1 + FEEDBACK_2 + partial
        )


# --- properties ------------------------------------------------------------------------------

frames_st = st.builds(
    Frame,
    token=st.binary(min_size=32, max_size=100),
    payload=st.binary(min_size=0, max_size=2048),
    identifier=st.integers(0, 2**32 - 1),
    expiry=st.integers(0, 2**32 - 1),
    priority=st.sampled_from([10, 5]) | st.integers(0, 255),
)


def _encode(f: Frame) -> bytes:
    return encode_frame(f.token, f.payload, f.identifier, f.expiry, f.priority)


@settings(max_examples=300, deadline=None)
@given(frames_st)
def test_any_frame_round_trips(frame):
    """Any token of 32-100 bytes, payload up to 2048 bytes, identifier, expiry and priority decode as encoded."""
    wire = _encode(frame)

    assert ([frame], len(wire)) == decode_frames(wire)
    assert 3 + len(frame.token) + 3 + len(frame.payload) + 18 == int.from_bytes(wire[1:5], "big")


@settings(max_examples=200, deadline=None)
@given(st.lists(frames_st, min_size=1, max_size=8), st.data())
def test_concatenated_stream_split_anywhere_decodes_to_the_same_frames(frames, data):
    """A stream of frames fed in chunks cut at arbitrary points decodes to exactly the frames sent."""
    wire = b"".join(_encode(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    buf = bytearray()
    out: list[Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=False):
        buf += wire[start:end]
        got, used = decode_frames(buf)
        del buf[:used]
        out += got

    assert frames == out
    assert b"" == bytes(buf)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(min_size=0, max_size=100)), max_size=10), st.integers(0, 5)
)
def test_feedback_tuples_round_trip(tuples, tail):
    """Encoded feedback tuples parse back unchanged, and a cut-off tail is not consumed."""
    wire = b"".join(encode_feedback(ts, tok) for ts, tok in tuples)
    extra = encode_feedback(1, b"\x01" * 32)[:tail]

    assert (tuples, len(wire)) == parse_feedback(wire + extra)
