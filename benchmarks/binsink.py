"""A counting sink for the legacy binary protocol: TLS server that counts command-2 frames by their lengths.

Run as its own process (``python -m benchmarks.binsink --port P --pki-dir D``). It demands a client
certificate from the dev CA, reads each connection as fast as it can, counts frames by walking the
5-byte frame headers (command, length) without decoding items, and never answers — except to a
frame whose command is not 2: that is the benchmark's *sentinel*, answered with an error response
(command 8, status 128), so a writer knows every frame before it has been read. With ``--fail-prefix
HEX`` a frame whose token (item 1, written first) starts with HEX is answered as APNs answered an
invalid token: status 8 naming its identifier, then the socket is closed at once.

It prints one JSON line per event on stdout: ``listening``, ``connected`` (with whether the TLS session was
resumed), ``closed`` (frames, bytes, first/last byte times on CLOCK_MONOTONIC, shared by every process on the
machine), and a ``summary`` on SIGTERM. benchmarks/binsink.c is the same sink in C, for connection-heavy runs
(a thread and a blocking handshake per connection cost this one ~1 ms of CPU each).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time

from apnsd.testing.devpki import make_dev_pki

READ = 1 << 20
_lock = threading.Lock()
_totals = {"connections": 0, "frames": 0, "bytes": 0, "sentinels": 0, "rejected": 0}


def emit(obj: dict[str, object]) -> None:
    """One JSON line on stdout, whole."""
    line = json.dumps(obj) + "\n"
    with _lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def _identifier(frame: bytes) -> int:
    """The identifier item (3) of one whole command-2 frame (0 if it has none)."""
    p = 5
    while p + 3 <= len(frame):
        item, size = frame[p], int.from_bytes(frame[p + 1 : p + 3], "big")
        if item == 3 and size == 4:
            return int.from_bytes(frame[p + 3 : p + 7], "big")
        p += 3 + size
    return 0


def serve(conn: ssl.SSLSocket, number: int, fail_prefix: bytes = b"") -> None:
    """Count frames until the peer closes or sends the sentinel (or, with ``fail_prefix``, a token to reject)."""
    frames = nbytes = rejections = 0
    skip = 0  # bytes of the current frame's body still to come
    carry = b""  # a partial 5-byte header left over from the previous read
    t_first = t_last = 0.0
    sentinel = False
    buf = bytearray(READ)
    view = memoryview(buf)
    try:
        conn.do_handshake()
        emit({"event": "connected", "conn": number, "t": time.monotonic(), "resumed": conn.session_reused})
        while True:
            n = conn.recv_into(buf, READ)
            if not n:
                break
            t_last = time.monotonic()
            if not t_first:
                t_first = t_last
            nbytes += n
            if skip >= n:
                skip -= n
                continue
            data = carry + bytes(view[skip:n]) if carry else bytes(view[skip:n])
            carry = b""
            end = len(data)
            p = 0
            rejected = None
            while p + 5 <= end:
                if data[p] != 2:
                    sentinel = True
                    break
                size = 5 + int.from_bytes(data[p + 1 : p + 5], "big")
                if fail_prefix:
                    if p + size > end:
                        break  # checked once it is whole: carried over to the next read
                    if data[p + 5] == 1 and data[p + 8 : p + 8 + len(fail_prefix)] == fail_prefix:
                        rejected = _identifier(data[p : p + size])
                        break
                p += size
                frames += 1
            if sentinel:
                conn.sendall(bytes((8, 128, 0, 0, 0, 0)))
                break
            if rejected is not None:
                conn.sendall(bytes((8, 8)) + rejected.to_bytes(4, "big"))
                rejections += 1
                break  # and close at once, unread frames and all, as Apple's gateway did
            if p > end:
                skip = p - end
            else:
                skip = 0
                carry = data[p:]
    except (OSError, ssl.SSLError):
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass
        with _lock:
            _totals["frames"] += frames
            _totals["bytes"] += nbytes
            _totals["sentinels"] += int(sentinel)
            _totals["rejected"] += rejections
        emit(
            {
                "event": "closed",
                "conn": number,
                "frames": frames,
                "bytes": nbytes,
                "t_first": t_first,
                "t_last": t_last,
                "sentinel": sentinel,
                "rejected": rejections,
            }
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--pki-dir", required=True)
    p.add_argument("--no-client-cert", action="store_true")
    p.add_argument("--fail-prefix", default="", help="hex: reject tokens starting with it (status 8, then close)")
    args = p.parse_args(argv)
    pki = make_dev_pki(args.pki_dir)
    fail_prefix = bytes.fromhex(args.fail_prefix)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if not args.no_client_cert:
        ctx.load_verify_locations(pki.ca_cert)
        ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", args.port))
    stop = threading.Event()

    def on_term(*_: object) -> None:
        stop.set()
        try:
            listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    emit({"event": "listening", "port": listener.getsockname()[1], "pid": os.getpid()})
    number = 0
    while not stop.is_set():
        try:
            sock, _ = listener.accept()
        except OSError:
            break
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        # An error response must leave before the close that follows it: with Nagle it could wait for the
        # ACK of the session tickets, and a close with unread data resets the connection, discarding it.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        number += 1
        with _lock:
            _totals["connections"] += 1
        conn = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=serve, args=(conn, number, fail_prefix), daemon=True).start()
    with _lock:
        totals = dict(_totals)
    emit({"event": "summary", **totals})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
