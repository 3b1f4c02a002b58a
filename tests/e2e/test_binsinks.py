"""The benchmark's counting binary sinks (benchmarks/binsink.c and binsink.py) behave alike over real TLS."""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Iterator

import pytest

from apnsd.testing.devpki import DevPki
from apnsd.wire.binary import encode_frame
from benchmarks.sinks import CountingBinarySink, python_for
from benchmarks.workload import BAD_PREFIX

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOOD = bytes.fromhex("ab" * 32)
BAD = bytes.fromhex(BAD_PREFIX + "ab" * 28)


@pytest.fixture(params=["c", "python"])
def sink(request: pytest.FixtureRequest, pki: DevPki) -> Iterator[CountingBinarySink]:
    """An error-answering sink of each kind, stopped by its PID afterwards."""
    s = CountingBinarySink(REPO, python_for(REPO), pki.dir, fail_prefix=BAD_PREFIX, native=request.param == "c")
    expected = "binsink.c" if request.param == "c" else "binsink.py"
    assert expected in s.name, "the C sink could not be built: run benchmarks/setup.sh (gcc, libssl-dev)"
    yield s
    s.stop()


def _client(pki: DevPki, port: int) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca_cert)
    ctx.load_cert_chain(pki.client_pem)
    conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")
    conn.settimeout(10)
    return conn


def _answer(conn: ssl.SSLSocket) -> bytes:
    """Everything the sink writes before it closes."""
    out = b""
    while True:
        try:
            data = conn.recv(64)
        except (ConnectionResetError, ssl.SSLError):
            return out
        if not data:
            return out
        out += data


def _closed(sink: CountingBinarySink, number: int) -> dict[str, object]:
    line = sink.wait_line(lambda s: '"closed"' in s and json.loads(s)["conn"] == number, timeout=10)
    return dict(json.loads(line))


def test_invalid_token_is_answered_with_status_8_naming_it_then_closed(sink: CountingBinarySink, pki: DevPki) -> None:
    """Three good frames, then a rejected token (id 7): status 8 names 7, three frames counted, one rejection."""
    frames = [encode_frame(GOOD, b'{"aps":{}}', i) for i in (4, 5, 6)] + [encode_frame(BAD, b'{"aps":{}}', 7)]
    conn = _client(pki, sink.port)
    conn.sendall(b"".join(frames) + encode_frame(GOOD, b'{"aps":{}}', 8))
    assert bytes((8, 8, 0, 0, 0, 7)) == _answer(conn)
    conn.close()
    closed = _closed(sink, 1)
    assert (3, 1, False) == (closed["frames"], closed["rejected"], closed["sentinel"])


def test_sentinel_is_answered_with_status_128_after_every_frame_is_counted(
    sink: CountingBinarySink, pki: DevPki
) -> None:
    """Five hundred frames split across writes, then a non-2 command: status 128, all 500 counted."""
    data = b"".join(encode_frame(GOOD, b'{"aps":{"alert":"x"}}', i) for i in range(500))
    conn = _client(pki, sink.port)
    for k in range(0, len(data), 1000):  # frame headers split across records
        conn.sendall(data[k : k + 1000])
    conn.sendall(bytes((1, 0, 0, 0, 0)))
    assert bytes((8, 128, 0, 0, 0, 0)) == _answer(conn)
    conn.close()
    closed = _closed(sink, 1)
    assert (500, 0, True) == (closed["frames"], closed["rejected"], closed["sentinel"])


def test_client_without_certificate_is_refused(sink: CountingBinarySink, pki: DevPki) -> None:
    """A client that presents no certificate never counts as connected."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca_cert)
    with socket.create_connection(("127.0.0.1", sink.port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                conn.settimeout(10)
                conn.sendall(encode_frame(GOOD, b"{}", 1))
                assert b"" != conn.recv(64)  # TLS 1.3 reports the refusal on the first read
    _closed(sink, 1)
    assert 0 == sink.connections()
