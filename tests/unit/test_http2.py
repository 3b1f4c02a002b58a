"""The HTTP/2 client core, held against h2's server side as the reference implementation."""

from __future__ import annotations

import h2.events
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apnsd.core.jobs import PUSH_TYPE_SUFFIXES
from apnsd.errors import JobError
from apnsd.wire.http2 import frames as f
from apnsd.wire.http2.connection import (
    MAX_RESPONSE_BODY,
    GoAwayReceived,
    H2ClientConnection,
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
from tests.support.h2factories import (
    APNS_ID,
    TEMPLATE,
    TOPIC,
    apns_id,
    client_pair,
    expected_headers,
    frames_in,
    h2_server,
    raw_frame,
    send,
)

AUTH_TEMPLATE = RequestTemplate("api.sandbox.push.apple.com:2197", TOPIC, "bearer eyJhbGciOiJFUzI1NiJ9.e30.sig")


def test_preface_settings_and_window_reach_h2() -> None:
    """The client's preface carries ENABLE_PUSH=0, a 1 MiB stream window and a 16 MiB connection window."""
    client = H2ClientConnection()
    client.initiate()
    events = h2_server().receive_data(client.data_to_send())
    changed = {int(k): v.new_value for k, v in events[0].changed_settings.items()}
    assert {f.SETTINGS_ENABLE_PUSH: 0, f.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 20} == {
        k: changed[k] for k in (f.SETTINGS_ENABLE_PUSH, f.SETTINGS_INITIAL_WINDOW_SIZE)
    }
    assert (0, (1 << 24) - 65535) == (events[1].stream_id, events[1].delta)


def test_first_server_settings_reported_and_acknowledged() -> None:
    """The server's first SETTINGS becomes a SettingsChanged event and is acknowledged."""
    pair = client_pair(max_concurrent_streams=250, initial_window_size=1000, max_frame_size=20000)
    assert (250, 250) == (pair.client.max_concurrent_streams, pair.client.available_streams)
    pair.server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 7})
    assert [SettingsChanged(7, 1000, 20000)] == pair.to_client()
    assert [h2.events.SettingsAcknowledged] == [type(e) for e in pair.to_server()]


def test_one_stream_before_server_settings() -> None:
    """Until the server's SETTINGS arrive the client allows a single stream."""
    client = H2ClientConnection()
    client.initiate()
    send(client)
    assert (1, 0) == (client.open_streams, client.available_streams)


@pytest.mark.parametrize("push_type", sorted(PUSH_TYPE_SUFFIXES))
def test_headers_per_push_type_decode_exactly(push_type: str) -> None:
    """For every push type, h2 decodes exactly the expected header list from the client's block."""
    pair = client_pair()
    topic = TOPIC + PUSH_TYPE_SUFFIXES[push_type]
    priority = effective_priority(push_type, None)
    sid = send(pair.client, push_type=push_type, priority=priority, topic=topic)
    pair.to_server()
    assert {
        sid: expected_headers(push_type=push_type, priority=priority, topic=topic, ident=apns_id(0))
    } == pair.requests()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"priority": 10},
        {"priority": 5},
        {"priority": 1},
        {"expiration": 0},
        {"expiration": 4_102_444_800},
        {"collapse_id": "score-update"},
        {"collapse_id": "é" * 32},
        {"topic": "com.example.other"},
        {"topic": TOPIC},
        {"push_type": "alert", "priority": 10, "expiration": 1, "collapse_id": "c", "topic": "com.example.x"},
    ],
)
@pytest.mark.parametrize("template", [TEMPLATE, AUTH_TEMPLATE, RequestTemplate("localhost:8443", None)])
def test_headers_per_option_decode_exactly(options: dict[str, object], template: RequestTemplate) -> None:
    """Each optional header, the token auth header and topic overrides decode to the expected list."""
    pair = client_pair()
    sid = send(pair.client, template=template, **options)  # type: ignore[arg-type]
    pair.to_server()
    assert {sid: expected_headers(template, ident=apns_id(0), **options)} == pair.requests()  # type: ignore[arg-type]


def test_header_blocks_stay_valid_across_templates_and_table_size_changes() -> None:
    """Rotating the JWT template and the server shrinking its HPACK table keep every block decodable."""
    pair = client_pair()
    second = RequestTemplate(AUTH_TEMPLATE.authority, TOPIC, "bearer rotated")
    sids = [send(pair.client, 0, template=AUTH_TEMPLATE)]
    pair.server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    pair.to_server()
    pair.to_client()
    sids.append(send(pair.client, 1, template=second))
    sids.append(send(pair.client, 2, template=AUTH_TEMPLATE))
    pair.to_server()
    expected = {
        sids[0]: expected_headers(AUTH_TEMPLATE, ident=apns_id(0)),
        sids[1]: expected_headers(second, ident=apns_id(1)),
        sids[2]: expected_headers(AUTH_TEMPLATE, ident=apns_id(2)),
    }
    assert expected == pair.requests()


def test_cached_header_parts_follow_each_request() -> None:
    """Requests alternating body lengths, push types and token lengths (up to 100 bytes) decode exactly."""
    pair = client_pair()
    cases = [
        (i, "ab" * (32 + 34 * (i % 3)), b"{}" if i % 2 else b'{"aps":{}}', ("alert", "voip")[i % 2]) for i in range(6)
    ]
    sids = [send(pair.client, i, token=t, payload=p, push_type=k) for i, t, p, k in cases]
    pair.to_server()
    expected = {
        sid: expected_headers(token=t, ident=apns_id(i), length=len(p), push_type=k)
        for sid, (i, t, p, k) in zip(sids, cases, strict=True)
    }
    assert expected == pair.requests()


@pytest.mark.parametrize(
    ("template", "options"),
    [
        (TEMPLATE, {"collapse_id": "a\0b"}),
        (TEMPLATE, {"collapse_id": " padded"}),
        (TEMPLATE, {"topic": "com.example.app\r\nx-injected: 1"}),
        (TEMPLATE, {"push_type": "alert\n"}),
        (RequestTemplate("api.push.apple.com", TOPIC, "bearer token\n"), {}),
    ],
)
def test_values_http2_forbids_are_refused_before_a_stream_opens(
    template: RequestTemplate, options: dict[str, str]
) -> None:
    """NUL/CR/LF or surrounding whitespace in a header value raise JobError and send nothing."""
    pair = client_pair(max_concurrent_streams=100)
    with pytest.raises(JobError):
        send(pair.client, template=template, **options)  # type: ignore[arg-type]
    assert (b"", 0, 100) == (pair.client.data_to_send(), pair.client.open_streams, pair.client.available_streams)


def test_huge_header_block_uses_continuation() -> None:
    """A header block larger than the server's frame size is split into HEADERS + CONTINUATION."""
    pair = client_pair()
    template = RequestTemplate("api.push.apple.com", TOPIC, "bearer " + "x" * 40_000)
    send(pair.client, template=template)
    out = pair.client.data_to_send()
    types = [t for t, _, _, _ in frames_in(out)]
    assert [f.HEADERS, f.CONTINUATION, f.CONTINUATION, f.DATA] == types
    pair.server_events += pair.server.receive_data(out)
    assert [expected_headers(template, ident=apns_id(0))] == list(pair.requests().values())


def test_thousand_requests_never_exceed_the_limit() -> None:
    """1,000 requests against a limit of 100 keep at most 100 streams open, and each answer finds its id."""
    pair = client_pair(max_concurrent_streams=100, initial_window_size=1 << 20)
    pair.server.increment_flow_control_window(1 << 24)
    pair.to_client()
    sent, answered, peak, ids = 0, 0, 0, {}
    responses: dict[int, str | None] = {}
    while answered < 1000:
        while sent < 1000 and pair.client.available_streams:
            ids[send(pair.client, sent)] = apns_id(sent)
            sent += 1
        peak = max(peak, pair.client.open_streams)
        pair.to_server()  # h2 raises TooManyStreamsError past the limit
        for sid in pair.ended()[answered:][:37]:  # answer a few at a time
            pair.answer(sid, ident=ids[sid])  # h2 indexes each apns-id in its HPACK table
            answered += 1
        pair.ack_data()
        responses.update((e.stream_id, ids[e.stream_id]) for e in pair.to_client() if isinstance(e, ResponseReceived))
    assert (100, 0, ids) == (peak, pair.client.open_streams, responses)


def test_settings_lowered_then_raised_mid_flight() -> None:
    """A limit lowered to 1 stops new streams until all but one close; raising it to 500 frees them."""
    pair = client_pair(max_concurrent_streams=100)
    sids = [send(pair.client, i) for i in range(50)]
    pair.to_server()
    pair.server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    pair.to_client()
    observed = [pair.client.available_streams]
    for sid in sids[:49]:
        pair.answer(sid)
    pair.to_client()
    observed.append(pair.client.available_streams)
    pair.answer(sids[49])
    pair.to_client()
    observed.append(pair.client.available_streams)
    pair.to_server()
    send(pair.client, 50)
    pair.server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 500})
    pair.to_server()
    pair.to_client()
    observed.append(pair.client.available_streams)
    assert [0, 0, 1, 499] == observed


def test_small_stream_window_queues_body_until_window_update() -> None:
    """With a 100-byte stream window the body waits for WINDOW_UPDATEs and arrives byte-exact."""
    pair = client_pair(initial_window_size=100)
    body = b'{"aps":{"alert":"' + b"y" * 230 + b'"}}'
    sid = send(pair.client, payload=body)
    pair.to_server()
    progress = [(len(pair.bodies()[sid]), pair.client.blocked_bytes)]
    while sid not in pair.ended():
        pair.ack_data()
        pair.to_client()
        pair.to_server()
        progress.append((len(pair.bodies()[sid]), pair.client.blocked_bytes))
    assert [(100, 150), (200, 50), (250, 0)] == progress
    assert body == pair.bodies()[sid]


def test_exhausted_connection_window_releases_on_window_update() -> None:
    """Bodies beyond the 65,535-byte connection window are held, then sent after a WINDOW_UPDATE."""
    pair = client_pair(initial_window_size=1 << 20, max_concurrent_streams=100)
    bodies = {send(pair.client, i, payload=bytes([65 + i]) * 4000): bytes([65 + i]) * 4000 for i in range(20)}
    pair.to_server()
    held = (sum(map(len, pair.bodies().values())), pair.client.blocked_bytes)
    pair.ack_data()
    pair.to_client()
    pair.to_server()
    assert ((65_535, 80_000 - 65_535), bodies, sorted(bodies)) == (held, pair.bodies(), sorted(pair.ended()))


def test_initial_window_change_applies_to_open_streams() -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE changes shift the window of a stream that is mid-upload."""
    pair = client_pair(initial_window_size=100)
    body = b"z" * 1000
    sid = send(pair.client, payload=body)
    pair.to_server()
    pair.server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 600})
    pair.to_client()
    pair.to_server()
    raised = len(pair.bodies()[sid])
    pair.server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 50})
    pair.to_client()  # window now 50 - 600 = -550
    pair.to_server()
    pair.server.increment_flow_control_window(600, stream_id=sid)
    pair.to_client()
    pair.to_server()
    assert (600, 650) == (raised, len(pair.bodies()[sid]))


@pytest.mark.parametrize("max_frame_size", [16_384, 20_000])
def test_data_split_at_max_frame_size(max_frame_size: int) -> None:
    """A body larger than SETTINGS_MAX_FRAME_SIZE goes out in frames no larger than it."""
    pair = client_pair(max_frame_size=max_frame_size, initial_window_size=1 << 20)
    pair.server.increment_flow_control_window(1 << 20)
    pair.to_client()
    body = bytes(range(256)) * 160
    sid = send(pair.client, payload=body)
    out = pair.client.data_to_send()
    sizes = [n for t, _, _, n in frames_in(out) if t == f.DATA]
    pair.server_events += pair.server.receive_data(out)
    assert ([max_frame_size, max_frame_size, len(body) - 2 * max_frame_size], body) == (sizes, pair.bodies()[sid])


def test_error_responses_carry_their_apns_id_and_unique_id() -> None:
    """An error answer's apns-id and apns-unique-id are read; a 200's are skipped unless read_ids is set."""
    pair = client_pair()
    sids = [send(pair.client, i) for i in range(2)]
    pair.to_server()
    pair.server.send_headers(sids[0], [(":status", "200"), ("apns-id", apns_id(0))], end_stream=True)
    pair.server.send_headers(
        sids[1], [(":status", "400"), ("apns-id", apns_id(1)), ("apns-unique-id", apns_id(9))], end_stream=False
    )
    pair.server.send_data(sids[1], b'{"reason":"BadTopic"}', end_stream=True)
    events = pair.to_client()
    assert [("", ""), (apns_id(1), apns_id(9))] == [(e.apns_id, e.unique_id) for e in events]


def test_read_ids_reads_them_from_successful_responses_too() -> None:
    """With read_ids (the development environment) a 200's apns-id and apns-unique-id are read."""
    pair = client_pair()
    pair.client.read_ids = True
    sid = send(pair.client, 0)
    pair.to_server()
    pair.server.send_headers(
        sid, [(":status", "200"), ("apns-id", apns_id(0)), ("apns-unique-id", apns_id(7))], end_stream=True
    )
    assert [(200, apns_id(0), apns_id(7))] == [(e.status, e.apns_id, e.unique_id) for e in pair.to_client()]


def test_responses_map_to_status_reason_and_timestamp() -> None:
    """200, 400 and 410 answers become ResponseReceived with Apple's reason and timestamp."""
    pair = client_pair()
    sids = [send(pair.client, i) for i in range(4)]
    pair.to_server()
    pair.answer(sids[0], ident=apns_id(0))
    pair.answer(sids[1], 400, b'{"reason":"BadDeviceToken"}', apns_id(1))
    pair.answer(sids[2], 410, b'{"reason":"Unregistered","timestamp":1700000000123}', apns_id(2))
    pair.answer(sids[3], 500, b"<html>oops</html>", apns_id(3))
    assert [
        ResponseReceived(sids[0], 200),
        ResponseReceived(sids[1], 400, "BadDeviceToken"),
        ResponseReceived(sids[2], 410, "Unregistered", 1_700_000_000_123),
        ResponseReceived(sids[3], 500),
    ] == pair.to_client()
    assert 0 == pair.client.open_streams


def test_compact_reports_a_plain_200_as_its_stream_id() -> None:
    """With compact, a 200 without a body is its stream id; other answers stay ResponseReceived, in order."""
    pair = client_pair()
    pair.client.compact = True
    sids = [send(pair.client, i) for i in range(3)]
    pair.to_server()
    pair.answer(sids[0], ident=apns_id(0))
    pair.answer(sids[1], 400, b'{"reason":"BadDeviceToken"}', apns_id(1))
    pair.answer(sids[2], ident=apns_id(2))
    assert [sids[0], ResponseReceived(sids[1], 400, "BadDeviceToken"), sids[2]] == pair.to_client()
    assert 0 == pair.client.open_streams


def test_compact_with_read_ids_still_reads_every_answer() -> None:
    """read_ids wins over compact: a 200's apns-id is read, so it stays a ResponseReceived."""
    pair = client_pair()
    pair.client.compact = pair.client.read_ids = True
    sid = send(pair.client)
    pair.to_server()
    pair.answer(sid, ident=APNS_ID)
    assert [(ResponseReceived, 200, APNS_ID)] == [(type(e), e.status, e.apns_id) for e in pair.to_client()]


def test_response_fed_one_byte_at_a_time() -> None:
    """Frames split across reads, a padded body in two DATA frames, still make one event."""
    pair = client_pair()
    sid = send(pair.client)
    pair.to_server()
    pair.server.send_headers(sid, [(":status", "400"), ("apns-id", APNS_ID)])
    pair.server.send_data(sid, b'{"reason":', pad_length=9)
    pair.server.send_data(sid, b'"BadTopic"}', end_stream=True)
    events = [e for b in pair.server.data_to_send() for e in pair.client.receive_data(bytes([b]))]
    assert [ResponseReceived(sid, 400, "BadTopic")] == events


def test_early_answer_then_no_error_reset_stops_upload() -> None:
    """An answer before the whole body, then RST_STREAM(NO_ERROR), yields the answer and no reset event."""
    pair = client_pair(initial_window_size=10)
    sid = send(pair.client, payload=b"q" * 100)
    pair.to_server()
    pair.server.send_headers(sid, [(":status", "413"), ("apns-id", APNS_ID)])
    pair.server.send_data(sid, b'{"reason":"PayloadTooLarge"}', end_stream=True)
    pair.server.reset_stream(sid, 0)
    assert [ResponseReceived(sid, 413, "PayloadTooLarge")] == pair.to_client()
    assert (0, 0) == (pair.client.open_streams, pair.client.blocked_bytes)


def test_rst_stream_becomes_stream_reset() -> None:
    """RST_STREAM(REFUSED_STREAM) on an unanswered stream is reported and frees the stream."""
    pair = client_pair()
    sid = send(pair.client)
    pair.to_server()
    pair.server.reset_stream(sid, 7)
    assert ([StreamReset(sid, 7)], 0) == (pair.to_client(), pair.client.open_streams)


def test_goaway_reports_last_stream_and_reason() -> None:
    """GOAWAY with JSON debug data is reported, drops unprocessed streams and stops new requests."""
    pair = client_pair()
    sids = [send(pair.client, i) for i in range(3)]
    pair.to_server()
    pair.server.close_connection(error_code=0, additional_data=b'{"reason":"Shutdown"}', last_stream_id=sids[0])
    events = pair.to_client()
    with pytest.raises(NoStreamAvailable):
        send(pair.client, 9)
    assert ([GoAwayReceived(sids[0], 0, "Shutdown")], 1, 0) == (
        events,
        pair.client.open_streams,
        pair.client.available_streams,
    )


def test_goaway_with_plain_text_debug_data() -> None:
    """Non-JSON GOAWAY debug data is passed on as the reason text."""
    pair = client_pair()
    pair.server.close_connection(error_code=1, additional_data=b"Maximum active streams violated")
    assert [GoAwayReceived(0, 1, "Maximum active streams violated")] == pair.to_client()


def test_goaway_with_deeply_nested_debug_data() -> None:
    """GOAWAY debug data nested deeper than the JSON decoder goes is passed on as text, not an exception."""
    pair = client_pair()
    pair.server.close_connection(error_code=0, additional_data=b"[" * 5_000)
    assert [GoAwayReceived(0, 0, "[" * 5_000)] == pair.to_client()


def test_ping_both_ways() -> None:
    """Our PING is acknowledged with its payload; the server's PING gets an ACK from us."""
    pair = client_pair()
    pair.client.ping(b"12345678")
    pair.to_server()
    client_events = pair.to_client()
    pair.server.ping(b"abcdefgh")
    pair.to_client()
    acked = [e.ping_data for e in pair.to_server() if isinstance(e, h2.events.PingAckReceived)]
    assert ([PingAcked(b"12345678")], [b"abcdefgh"]) == (client_events, acked)


def test_close_sends_goaway() -> None:
    """close() queues GOAWAY(NO_ERROR, last stream 0) and allows no new streams."""
    pair = client_pair()
    pair.client.close()
    terminated = [
        (e.error_code, e.last_stream_id) for e in pair.to_server() if isinstance(e, h2.events.ConnectionTerminated)
    ]
    assert ([(0, 0)], 0) == (terminated, pair.client.available_streams)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (raw_frame(f.DATA, 0, 1, b"x"), f.PROTOCOL_ERROR),  # not SETTINGS first
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", f.PROTOCOL_ERROR),  # not HTTP/2 at all
    ],
)
def test_bad_server_preface_is_a_protocol_error(data: bytes, code: int) -> None:
    """Anything but SETTINGS as the server's first frame fails the connection."""
    client = H2ClientConnection()
    client.initiate()
    with pytest.raises(H2ProtocolError) as info:
        client.receive_data(data)
    assert (code, True) == (info.value.error_code, client.failed)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (raw_frame(f.PING, 0, 0, b"x" * 20_000), f.FRAME_SIZE_ERROR),
        (raw_frame(f.SETTINGS, 0, 0, b"12345"), f.FRAME_SIZE_ERROR),
        (raw_frame(f.SETTINGS, 0, 0, b"\x00\x05\x00\x00\x00\x01"), f.PROTOCOL_ERROR),  # MAX_FRAME_SIZE 1
        (raw_frame(f.SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00"), f.FLOW_CONTROL_ERROR),  # window 2^31
        (raw_frame(f.PING, 0, 0, b"1234"), f.FRAME_SIZE_ERROR),
        (raw_frame(f.PING, 0, 1, b"12345678"), f.PROTOCOL_ERROR),
        (raw_frame(f.WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff"), f.FLOW_CONTROL_ERROR),
        (raw_frame(f.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), f.PROTOCOL_ERROR),
        (raw_frame(f.WINDOW_UPDATE, 0, 1, b"\x7f\xff\xff\xff"), f.FLOW_CONTROL_ERROR),  # an open stream's window
        (raw_frame(f.WINDOW_UPDATE, 0, 1, b"\x00\x00\x00\x00"), f.PROTOCOL_ERROR),
        (raw_frame(f.HEADERS, 4, 2, b"\x88"), f.PROTOCOL_ERROR),  # server-initiated stream
        (raw_frame(f.HEADERS, 4, 9, b"\x88"), f.PROTOCOL_ERROR),  # stream never opened
        (raw_frame(f.HEADERS, 4, 1, b"\xff\xff\xff\xff\x0f"), f.COMPRESSION_ERROR),
        (raw_frame(f.HEADERS, 4, 1, b"\x48\x81\xff"), f.COMPRESSION_ERROR),  # :status, bad Huffman code
        (raw_frame(f.HEADERS, 4, 1, b"\x8c\x40\x81\xff\x01x"), f.COMPRESSION_ERROR),  # 400, then a bad one
        (raw_frame(f.HEADERS, 4, 1, b"\x82"), f.PROTOCOL_ERROR),  # no :status
        (raw_frame(f.DATA, 0, 1, b"x"), f.PROTOCOL_ERROR),  # body before headers
        (raw_frame(f.CONTINUATION, 4, 1, b"\x88"), f.PROTOCOL_ERROR),
        (raw_frame(f.HEADERS, 0, 1, b"\x88") + raw_frame(f.PING, 0, 0, b"12345678"), f.PROTOCOL_ERROR),
        (raw_frame(f.PUSH_PROMISE, 4, 1, b"\x00\x00\x00\x02\x82"), f.PROTOCOL_ERROR),
        (raw_frame(f.GOAWAY, 0, 0, b"1234"), f.FRAME_SIZE_ERROR),
        (raw_frame(f.RST_STREAM, 0, 0, b"\x00\x00\x00\x07"), f.PROTOCOL_ERROR),
    ],
)
def test_connection_errors_raise_and_queue_goaway(data: bytes, code: int) -> None:
    """Frames that break RFC 9113 raise H2ProtocolError and queue a GOAWAY with the error code."""
    pair = client_pair()
    send(pair.client)
    pair.to_server()
    with pytest.raises(H2ProtocolError) as info:
        pair.client.receive_data(data)
    terminated = [e.error_code for e in pair.to_server() if isinstance(e, h2.events.ConnectionTerminated)]
    assert (code, [code]) == (info.value.error_code, terminated)


def test_a_header_block_continued_without_end_is_cut_off() -> None:
    """CONTINUATION frames that never end the block (a flood) fail the connection once the block passes its cap,
    instead of growing it without bound."""
    pair = client_pair()
    sid = send(pair.client)
    pair.to_server()
    flood = raw_frame(f.HEADERS, 0, sid, b"\x88") + raw_frame(f.CONTINUATION, 0, sid, b"\x00" * 16_384) * 8

    with pytest.raises(H2ProtocolError) as info:
        pair.client.receive_data(flood)

    assert (f.PROTOCOL_ERROR, True) == (info.value.error_code, "header block" in str(info.value))


def test_an_error_body_beyond_its_cap_fails_the_connection() -> None:
    """A response body larger than any APNs error body (a gateway streaming without end) fails the connection
    before it grows past the cap; one at the cap is still read."""
    pair = client_pair()
    ok, big = send(pair.client), send(pair.client)
    pair.to_server()
    at_cap = b'{"reason":"BadTopic","pad":"' + b"x" * (MAX_RESPONSE_BODY - 30) + b'"}'
    assert MAX_RESPONSE_BODY == len(at_cap)
    answer = raw_frame(f.HEADERS, 4, ok, b"\x8c")  # END_HEADERS, :status 400
    chunks = [at_cap[i : i + 16_384] for i in range(0, len(at_cap), 16_384)]
    answer += b"".join(raw_frame(f.DATA, 0, ok, c) for c in chunks[:-1]) + raw_frame(f.DATA, 1, ok, chunks[-1])
    read = pair.client.receive_data(answer)
    assert [(ok, 400, "BadTopic")] == [(e.stream_id, e.status, e.reason) for e in read]
    head = raw_frame(f.HEADERS, 4, big, b"\x8c")
    body = raw_frame(f.DATA, 0, big, b"x" * 16_384) * (MAX_RESPONSE_BODY // 16_384 + 1)

    with pytest.raises(H2ProtocolError) as info:
        pair.client.receive_data(head + body)

    assert (f.PROTOCOL_ERROR, True) == (info.value.error_code, "response body" in str(info.value))


def test_a_kept_response_body_may_be_larger_than_an_error_body() -> None:
    """With keep_responses (the channel management API, whose channel list can run to ~300 KB), a body over the
    error-body cap is read whole."""
    pair = client_pair()
    pair.client.keep_responses = True
    sid = send(pair.client)
    pair.to_server()
    body = b'{"channels":["' + b"x" * (4 * MAX_RESPONSE_BODY) + b'"]}'
    chunks = [body[i : i + 16_384] for i in range(0, len(body), 16_384)]
    answer = raw_frame(f.HEADERS, 4, sid, b"\x88")  # END_HEADERS, :status 200
    answer += b"".join(raw_frame(f.DATA, 0, sid, c) for c in chunks[:-1]) + raw_frame(f.DATA, 1, sid, chunks[-1])

    read = pair.client.receive_data(answer)

    assert ([(sid, 200)], body) == ([(e.stream_id, e.status) for e in read], pair.client.full_responses[sid][1])


def test_protocol_error_keeps_answers_read_before_it() -> None:
    """Answers that arrived before a fatal frame travel with the exception, so they are not resent."""
    pair = client_pair()
    sid = send(pair.client)
    pair.to_server()
    pair.answer(sid)
    with pytest.raises(H2ProtocolError) as info:
        pair.client.receive_data(pair.server.data_to_send() + raw_frame(f.PING, 0, 0, b"1"))
    assert [ResponseReceived(sid, 200)] == info.value.events


def test_priority_and_unknown_frames_are_ignored() -> None:
    """PRIORITY frames and unknown frame types pass without events."""
    pair = client_pair()
    send(pair.client)
    assert [] == pair.client.receive_data(
        raw_frame(f.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10") + raw_frame(0xEE, 0, 0, b"whatever")
    )


def test_background_defaults_to_priority_five() -> None:
    """Background pushes without a priority get 5; everything else keeps what it was given."""
    assert [5, 10, None, 1] == [
        effective_priority("background", None),
        effective_priority("background", 10),
        effective_priority("alert", None),
        effective_priority(None, 1),
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"reason":"Unregistered","timestamp":1700000000000}', ("Unregistered", 1_700_000_000_000)),
        (b'{"reason":"BadTopic"}', ("BadTopic", None)),
        (b'{"reason":5,"timestamp":"x"}', ("", None)),
        (b"[1]", ("", None)),
        (b"not json", ("", None)),
        (b"", ("", None)),
        (b"[" * 10_000 + b"]" * 10_000, ("", None)),  # nested deeper than the decoder goes
        (b'{"reason":"BadTopic","x":' + b"[" * 10_000, ("", None)),
    ],
)
def test_decode_response_reason(body: bytes, expected: tuple[str, int | None]) -> None:
    """Apple's error body yields reason and timestamp; anything malformed yields ("", None)."""
    assert expected == decode_response_reason(body)


def test_a_deeply_nested_error_body_is_an_answer_without_a_reason() -> None:
    """A gateway's error body nested thousands deep is read as a 400 without reason, not an exception."""
    pair = client_pair()
    sid = send(pair.client)
    pair.to_server()
    pair.answer(sid, 400, b"[" * 10_000)

    assert [ResponseReceived(sid, 400, "", None, APNS_ID)] == pair.to_client()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payloads=st.lists(st.binary(max_size=40_000), min_size=1, max_size=6),
    window=st.integers(1, 70_000),
    frame_size=st.integers(16_384, 50_000),
    push_type=st.none() | st.sampled_from(sorted(PUSH_TYPE_SUFFIXES)),
    priority=st.none() | st.sampled_from([10, 5, 1]),
    expiration=st.none() | st.integers(0, 2**32 - 1),
    collapse_id=st.none()
    | st.text(st.characters(blacklist_characters="\0\r\n", blacklist_categories=("Cs",)), max_size=64).filter(
        lambda s: s == s.strip(" \t")
    ),
    topic=st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=300),
)
def test_random_requests_round_trip_through_h2(
    payloads: list[bytes],
    window: int,
    frame_size: int,
    push_type: str | None,
    priority: int | None,
    expiration: int | None,
    collapse_id: str | None,
    topic: str | None,
) -> None:
    """Any mix of payload sizes, headers, windows and frame sizes reaches h2 exactly."""
    pair = client_pair(initial_window_size=window, max_frame_size=frame_size)
    options = {
        "push_type": push_type,
        "priority": priority,
        "expiration": expiration,
        "collapse_id": collapse_id,
        "topic": topic,
    }
    sids = [send(pair.client, i, payload=p, **options) for i, p in enumerate(payloads)]  # type: ignore[arg-type]
    for _ in range(200):
        pair.to_server()
        pair.ack_data()
        pair.to_client()
        if len(pair.ended()) == len(sids):
            break
    expected = {
        sid: expected_headers(ident=apns_id(i), length=len(p), **options)  # type: ignore[arg-type]
        for i, (sid, p) in enumerate(zip(sids, payloads, strict=False))
    }
    assert (expected, {s: p for s, p in zip(sids, payloads, strict=False) if p}) == (pair.requests(), pair.bodies())
