"""The binary mock gateway over real TLS, driven by a tiny pyOpenSSL client, and `apnsd mock` as a process."""

from __future__ import annotations

import json
import os
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL

from apnsd.gateway.credentials import client_context, load_identity
from apnsd.testing.mock import MockGateway
from apnsd.wire.binary import encode_frame
from tests.support.faultkit import LogTap
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
GOOD = [bytes([0xA0 + i]) * 32 for i in range(5)]
BAD = bytes.fromhex("bad0") + b"\x00" * 30
PAYLOAD = b'{"aps":{"alert":"hi"}}'
IO_TIMEOUT = 10.0


class Client:
    """A blocking-by-deadline TLS client for one connection to a mock gateway."""

    def __init__(self, port: int, cert: str | None, ca_file: str) -> None:
        ctx = client_context(load_identity(cert) if cert else None, ca_file)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.sock.setblocking(False)
        self.conn = SSL.Connection(ctx, self.sock)
        self.conn.set_connect_state()
        self.deadline = time.monotonic() + IO_TIMEOUT
        self._io(self.conn.do_handshake)

    def _io(self, op: Callable[[], Any]) -> Any:
        while True:
            try:
                return op()
            except SSL.WantReadError:
                self._wait(read=True)
            except SSL.WantWriteError:
                self._wait(read=False)

    def _wait(self, read: bool) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("mock gateway did not answer in time")
        select.select([self.sock] if read else [], [] if read else [self.sock], [], left)

    def send(self, data: bytes) -> None:
        """Write all of ``data``."""
        self._io(lambda: self.conn.sendall(data))

    def read_to_end(self) -> tuple[bytes, str]:
        """Everything the gateway sends until it closes, and how it closed: close_notify, abrupt or alert."""
        chunks: list[bytes] = []
        while True:
            try:
                data = self._io(lambda: self.conn.recv(65536))
            except SSL.ZeroReturnError:
                return b"".join(chunks), "close_notify"
            except SSL.SysCallError:
                return b"".join(chunks), "abrupt"
            except SSL.Error as exc:
                return b"".join(chunks), f"alert: {exc}"
            if not data:
                return b"".join(chunks), "abrupt"
            chunks.append(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client(pki: Any) -> Iterator[Callable[..., Client]]:
    """Factory for TLS clients presenting the PKI's APNs client certificate (or another, or none)."""
    made: list[Client] = []

    def make(port: int, cert: str | None = pki.client_pem) -> Client:
        made.append(Client(port, cert, pki.ca_cert))
        return made[-1]

    yield make
    for c in made:
        c.close()


def frames(*tokens: bytes, first_id: int = 1) -> bytes:
    """Command-2 frames for the tokens, with identifiers counting up from ``first_id``."""
    return b"".join(encode_frame(t, PAYLOAD, first_id + i) for i, t in enumerate(tokens))


def answers(mock: MockGateway) -> list[tuple[str, str, int]]:
    """(token, identifier, status) of everything the mock recorded, in order."""
    return [(r.token, r.ident, r.status) for r in mock.record.received]


# --- client certificates ---------------------------------------------------------------------------


def test_client_with_the_apns_certificate_is_served_and_gets_no_reply(binary_mock, client):
    """With a trusted client certificate, notifications are accepted silently, as APNs does."""
    mock = binary_mock()
    c = client(mock.port)

    c.send(frames(GOOD[0], GOOD[1]))

    wait_for(lambda: 2 == len(mock.record.received), IO_TIMEOUT)
    assert [(GOOD[0].hex(), "1", 200), (GOOD[1].hex(), "2", 200)] == answers(mock)
    assert 1 == mock.record.connections


def refusal(connect: Callable[[], Client]) -> tuple[bytes, str]:
    """What a client gets from a gateway that refuses it: under TLS 1.3 the alert arrives after the
    client's side of the handshake has completed, under TLS 1.2 during it."""
    try:
        return connect().read_to_end()
    except SSL.Error as exc:
        return b"", f"alert: {exc}"


# The binary mock speaks TLS 1.2 (see MockGateway): a missing certificate is a handshake failure there.
@pytest.mark.parametrize(("cert", "alert"), [(None, "handshake failure"), ("untrusted_pem", "unknown ca")])
def test_client_without_a_trusted_certificate_is_refused(binary_mock, client, pki, cert, alert):
    """A client with no certificate, or one from another CA, is refused with a TLS alert and nothing is served."""
    mock = binary_mock()

    data, how = refusal(lambda: client(mock.port, getattr(pki, cert) if cert else None))

    assert (b"", True) == (data, alert in how), how
    assert (0, []) == (mock.record.connections, mock.record.received)


# --- faults ----------------------------------------------------------------------------------------


def test_failing_prefix_gets_an_error_response_then_close(binary_mock, client):
    """A token with a failing prefix gets command 8 with its status and identifier, then the gateway closes."""
    mock = binary_mock(fail_prefixes=(("bad0", 8),))
    c = client(mock.port)

    c.send(frames(GOOD[0], BAD, GOOD[1], first_id=41))

    assert (bytes.fromhex("08080000002a"), "close_notify") == c.read_to_end()
    assert [(GOOD[0].hex(), "41", 200), (BAD.hex(), "42", 8)] == answers(mock)


@pytest.mark.parametrize("status", [1, 7, 10, 255])
def test_failing_prefix_reports_the_configured_status(binary_mock, client, status):
    """The error response carries whichever status the fault names."""
    mock = binary_mock(fail_prefixes=(("bad0", status),))
    c = client(mock.port)

    c.send(frames(BAD, first_id=7))

    assert (bytes([8, status, 0, 0, 0, 7]), "close_notify") == c.read_to_end()


def test_invalid_notifications_get_apples_status_codes(binary_mock, client):
    """A wrong token size is answered with status 5, an empty payload with status 4."""
    mock = binary_mock()
    c1, c2 = client(mock.port), client(mock.port)

    c1.send(encode_frame(b"\x01" * 31, PAYLOAD, 3))
    c2.send(encode_frame(GOOD[0], b"", 4))

    assert (bytes.fromhex("080500000003"), "close_notify") == c1.read_to_end()
    assert (bytes.fromhex("080400000004"), "close_notify") == c2.read_to_end()


def test_unknown_command_gets_protocol_error_128_and_a_log_line(binary_mock, client):
    """A command other than 0, 1 or 2 is answered with status 128 and logged; notifications before it count."""
    mock = binary_mock()
    c = client(mock.port)
    tap = LogTap()

    c.send(frames(GOOD[0]) + bytes.fromhex("0300000001") + GOOD[1])

    assert (bytes.fromhex("088000000000"), "close_notify") == c.read_to_end()
    assert [(GOOD[0].hex(), "1", 200)] == answers(mock)
    wait_for(lambda: bool(tap.events("unparseable_input")), IO_TIMEOUT, "the unparseable_input log line")
    assert [(128, "unknown command 3 at offset 83", 1)] == [
        (e["status"], e["error"], e["notifications_before"]) for e in tap.events("unparseable_input")
    ]


def simple(token: bytes, payload: bytes = PAYLOAD) -> bytes:
    """A command-0 notification, spelled out from the fact sheet (§1.1)."""
    return b"\x00" + len(token).to_bytes(2, "big") + token + len(payload).to_bytes(2, "big") + payload


def enhanced(ident: int, token: bytes, expiry: int = 0, payload: bytes = PAYLOAD) -> bytes:
    """A command-1 notification, spelled out from the fact sheet (§1.2)."""
    head = b"\x01" + ident.to_bytes(4, "big") + expiry.to_bytes(4, "big")
    return head + len(token).to_bytes(2, "big") + token + len(payload).to_bytes(2, "big") + payload


def test_simple_enhanced_and_frame_formats_are_recorded_alike(binary_mock, client):
    """Commands 0, 1 and 2 mixed on one connection are all accepted and recorded in order (command 0 as id 0)."""
    mock = binary_mock()
    c = client(mock.port)

    c.send(simple(GOOD[0]) + enhanced(5, GOOD[1], 1_790_000_000) + frames(GOOD[2], first_id=6) + simple(GOOD[3]))

    wait_for(lambda: 4 == len(mock.record.received), IO_TIMEOUT, "four notifications recorded")
    assert [
        (GOOD[0].hex(), "0", 200),
        (GOOD[1].hex(), "5", 200),
        (GOOD[2].hex(), "6", 200),
        (GOOD[3].hex(), "0", 200),
    ] == (answers(mock))


def test_enhanced_format_error_response_carries_its_identifier(binary_mock, client):
    """A rejected command-1 notification is named by its own identifier in the error response."""
    mock = binary_mock(fail_prefixes=(("bad0", 8),))
    c = client(mock.port)

    c.send(enhanced(0x11223344, GOOD[0]) + enhanced(0x55667788, BAD) + enhanced(1, GOOD[1]))

    assert (bytes.fromhex("080855667788"), "close_notify") == c.read_to_end()
    assert [(GOOD[0].hex(), str(0x11223344), 200), (BAD.hex(), str(0x55667788), 8)] == answers(mock)


def test_simple_format_rejection_closes_without_an_error_response(binary_mock, client):
    """Command 0 has no identifier, so, as APNs did, a rejected one ends the connection with no answer."""
    mock = binary_mock(fail_prefixes=(("bad0", 8),))
    c = client(mock.port)

    c.send(simple(GOOD[0]) + simple(BAD) + simple(GOOD[1]))

    assert (b"", "close_notify") == c.read_to_end()
    assert [(GOOD[0].hex(), "0", 200), (BAD.hex(), "0", 8)] == answers(mock)


def test_hard_close_sends_the_error_response_then_closes_without_a_goodbye(binary_mock, client):
    """With hard_close the error response is followed by a plain socket close, no TLS close_notify."""
    mock = binary_mock(fail_prefixes=(("bad0", 8),), hard_close=True)
    c = client(mock.port)

    c.send(frames(GOOD[0], BAD, GOOD[1], first_id=41))

    assert (bytes.fromhex("08080000002a"), "abrupt") == c.read_to_end()


def test_shutdown_after_names_the_last_notification_accepted(binary_mock, client):
    """shutdown_after=N accepts N notifications, answers status 10 naming the N-th, and discards the rest."""
    mock = binary_mock(shutdown_after=2)
    c = client(mock.port)

    c.send(frames(*GOOD[:4], first_id=20))

    assert (bytes.fromhex("080a00000015"), "close_notify") == c.read_to_end()
    assert [(GOOD[0].hex(), "20", 200), (GOOD[1].hex(), "21", 200)] == answers(mock)


def test_shutdown_names_the_last_accepted_even_when_it_came_in_an_earlier_read(binary_mock, client):
    """When the notification past the limit is the first of a later read, status 10 still names the last one
    accepted on the connection (it arrived in the read before), not 0."""
    mock = binary_mock(shutdown_after=2)
    c = client(mock.port)

    c.send(frames(*GOOD[:2], first_id=20))
    wait_for(lambda: len(mock.record.received) == 2, IO_TIMEOUT, "the mock to take the first two")
    c.send(frames(GOOD[2], first_id=22))

    assert (bytes.fromhex("080a00000015"), "close_notify") == c.read_to_end()
    assert ["20", "21"] == [ident for _, ident, _ in answers(mock)]


def test_close_after_drops_the_first_connection_abruptly_once(binary_mock, client):
    """close_after=N accepts N notifications, then drops the connection without an answer; later ones are served."""
    mock = binary_mock(close_after=2)
    first = client(mock.port)

    first.send(frames(*GOOD[:3]))

    assert (b"", "abrupt") == first.read_to_end()
    assert [(GOOD[0].hex(), "1", 200), (GOOD[1].hex(), "2", 200)] == answers(mock)

    second = client(mock.port)
    second.send(frames(*GOOD[:4], first_id=10))
    wait_for(lambda: 6 == len(mock.record.received), IO_TIMEOUT)
    assert [200] * 6 == [status for _, _, status in answers(mock)]


# --- feedback --------------------------------------------------------------------------------------


def test_feedback_port_streams_tuples_then_closes_and_forgets_them(pki, client):
    """The feedback service sends every (timestamp, token) tuple and closes; the list is cleared once read."""
    mock = MockGateway(
        "binary",
        pki.server_cert,
        pki.server_key,
        pki.ca_cert,
        feedback=[(1_600_000_000, GOOD[0]), (1_790_000_000, GOOD[1])],
    ).start(with_feedback=True)
    try:
        expected = bytes.fromhex("5f5e10000020") + GOOD[0] + bytes.fromhex("6ab13b800020") + GOOD[1]

        assert (expected, "close_notify") == client(mock.feedback_port).read_to_end()
        assert (b"", "close_notify") == client(mock.feedback_port).read_to_end()
    finally:
        mock.stop()


def test_feedback_port_requires_the_client_certificate(pki, client):
    """The feedback service refuses a client without a certificate, like the gateway port."""
    mock = MockGateway(
        "binary", pki.server_cert, pki.server_key, pki.ca_cert, feedback=[(1_600_000_000, GOOD[0])]
    ).start(with_feedback=True)
    try:
        data, how = refusal(lambda: client(mock.feedback_port, None))

        assert (b"", True) == (data, "handshake failure" in how)
        assert [(1_600_000_000, GOOD[0])] == mock.feedback
    finally:
        mock.stop()


def poll(pki: Any, mock: MockGateway) -> list[tuple[int, str]]:
    """What apnsd's feedback poller reads from the mock's feedback service."""
    from apnsd.config import AppConfig
    from apnsd.gateway.apps import load_credentials
    from apnsd.gateway.feedback import poll_feedback

    app = AppConfig(
        protocol="binary", host="127.0.0.1", feedback_port=mock.feedback_port, cert=pki.client_pem, ca_file=pki.ca_cert
    )
    return poll_feedback(app, load_credentials("default", app))


def test_feedback_tuples_whose_token_is_no_device_token_are_not_recorded(pki):
    """A tuple of a token shorter than 32 or longer than 100 bytes (an empty one, a stray byte) is not a device
    token: the poller passes over it rather than recording it as unregistered."""
    feed = [
        (1_600_000_000, b""),
        (1_600_000_001, b"\x01" * 5),
        (1_600_000_002, GOOD[0]),
        (1_600_000_003, b"\x02" * 101),
    ]
    mock = MockGateway("binary", pki.server_cert, pki.server_key, pki.ca_cert, feedback=feed).start(with_feedback=True)
    try:
        assert [(1_600_000_002, GOOD[0].hex())] == poll(pki, mock)
    finally:
        mock.stop()


def test_the_feedback_poller_reads_at_most_its_cap(pki, monkeypatch):
    """A feedback service that sends more than the poller's cap (one streaming without end) is read only up to the
    cap, whole tuples only: memory stays bounded."""
    from apnsd.gateway import feedback

    monkeypatch.setattr(feedback, "MAX_FEEDBACK_BYTES", 100)  # two 38-byte tuples and part of a third
    feed = [(1_600_000_000 + i, GOOD[i]) for i in range(5)]
    mock = MockGateway("binary", pki.server_cert, pki.server_key, pki.ca_cert, feedback=feed).start(with_feedback=True)
    try:
        assert [(1_600_000_000, GOOD[0].hex()), (1_600_000_001, GOOD[1].hex())] == poll(pki, mock)
    finally:
        mock.stop()


# --- apnsd mock as a process -----------------------------------------------------------------------


class Lines:
    """A child's stdout read line by line on a helper thread, so each line can be awaited with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def next(self, timeout: float = 30.0) -> str:
        """The next line ("" at end of output), failing if none arrives in time."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("apnsd mock printed nothing in time") from None

    def rest(self, timeout: float = 30.0) -> list[str]:
        """Every remaining line up to the end of output."""
        out = []
        while line := self.next(timeout):
            out.append(line)
        return out


class MockProcess:
    """`apnsd mock --protocol binary` as a child process: its port, the lines it prints, its stderr."""

    def __init__(self, tmp_path: Path, *options: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("APNSD_")}
        env["PYTHONPATH"] = str(REPO)
        self.stderr = tmp_path / "stderr.txt"
        with self.stderr.open("w") as err_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "apnsd.cli", "mock", "--protocol", "binary", *options],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err_file,
                text=True,
            )
        self.lines = Lines(self.proc)
        try:
            first = self.lines.next()
            match = re.fullmatch(r"apnsd mock \(binary\) listening on 127\.0\.0\.1:(\d+), feedback on (\d+)\n", first)
            assert match, first
        except BaseException:
            self.kill()  # the test never gets the object, so its cleanup cannot stop the child
            raise
        self.port = int(match.group(1))

    def printed(self, count: int) -> list[str]:
        """The next ``count`` lines the mock printed, without indentation and newlines."""
        return [self.lines.next().strip() for _ in range(count)]

    def stop(self) -> tuple[int, list[str]]:
        """SIGTERM; the exit code and every line printed after the file list (the JSON summary)."""
        self.proc.send_signal(signal.SIGTERM)
        rest = self.lines.rest()
        return self.proc.wait(timeout=30), rest

    def kill(self) -> None:
        """Kill the child if it still runs (cleanup)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_apnsd_mock_binary_prints_its_port_and_a_summary_on_sigterm(tmp_path):
    """`apnsd mock --protocol binary` prints where it listens and the files it uses, serves TLS, and on SIGTERM
    prints a JSON summary and exits 0."""
    pki_dir = tmp_path / "pki"
    mock = MockProcess(tmp_path, "--pki-dir", str(pki_dir), "--fail-prefix", "bad0=8")
    try:
        files = mock.printed(5)
        c = Client(mock.port, str(pki_dir / "client.pem"), str(pki_dir / "ca.pem"))
        c.send(frames(GOOD[0], BAD))
        assert (bytes.fromhex("080800000002"), "close_notify") == c.read_to_end()
        c.close()
        code, rest = mock.stop()
    finally:
        mock.kill()

    assert [
        f"server certificate: {pki_dir / 'server.pem'}",
        f"server key: {pki_dir / 'server-key.pem'}",
        f"client CA (client certificates must chain to it): {pki_dir / 'ca.pem'}",
        f"CA for clients (ca_file): {pki_dir / 'ca.pem'}",
        f"client certificate (cert): {pki_dir / 'client.pem'}",
    ] == files
    assert (0, "") == (code, mock.stderr.read_text())
    assert [
        {
            "received": 2,
            "accepted": 1,
            "rejected": 1,
            "connections": 1,
            "max_concurrent_streams_seen": 0,
            "concurrency_violations": 0,
        }
    ] == [json.loads(line) for line in rest]


def test_apnsd_mock_prints_the_certificate_key_and_client_ca_it_was_given(tmp_path, pki):
    """With --cert, --key and --client-ca the mock names those files (not the dev PKI's) and serves with them."""
    mock = MockProcess(
        tmp_path,
        "--pki-dir",
        str(tmp_path / "unused-pki"),
        "--cert",
        pki.server_cert,
        "--key",
        pki.server_key,
        "--client-ca",
        pki.ca_cert,
    )
    try:
        files = mock.printed(3)
        c = Client(mock.port, pki.client_pem, pki.ca_cert)
        c.send(frames(GOOD[0]))
        c.close()
        code, rest = mock.stop()
    finally:
        mock.kill()

    assert [
        f"server certificate: {pki.server_cert}",
        f"server key: {pki.server_key}",
        f"client CA (client certificates must chain to it): {pki.ca_cert}",
    ] == files
    assert (0, 1) == (code, json.loads(rest[-1])["connections"])


@pytest.mark.skipif(shutil.which("php") is None, reason="php is not installed (apt-get install php-cli)")
def test_the_tutorial_php_provider_delivers_ten_notifications_to_apnsd_mock(tmp_path):
    """The tutorials' PHP provider (stream_socket_client over TLS, command-0 frames) sends 10 notifications
    to `apnsd mock`, and the record holds those 10."""
    pki_dir, record = tmp_path / "pki", tmp_path / "record.jsonl"
    tokens = [bytes([0x10 + i]) * 32 for i in range(10)]
    (tmp_path / "tokens.txt").write_text("".join(t.hex() + "\n" for t in tokens))
    mock = MockProcess(tmp_path, "--pki-dir", str(pki_dir), "--record", str(record))
    try:
        php = subprocess.run(
            [
                "php",
                str(REPO / "tests" / "support" / "providers" / "simple_push.php"),
                "127.0.0.1",
                str(mock.port),
                str(pki_dir / "client.pem"),
                str(pki_dir / "ca.pem"),
                str(tmp_path / "tokens.txt"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (0, "delivered 10\n") == (php.returncode, php.stdout), php.stderr
        code, rest = mock.stop()
    finally:
        mock.kill()

    received = [json.loads(line) for line in record.read_text().splitlines()]
    assert 0 == code
    assert [(t.hex(), 200) for t in tokens] == [(r["token"], r["status"]) for r in received]
    assert (10, 10, 1) == tuple(json.loads(rest[-1])[k] for k in ("received", "accepted", "connections"))
