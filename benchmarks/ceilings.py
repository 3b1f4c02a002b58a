"""Raw ceilings measured against the same sinks: h2load for HTTP/2, pre-built frames over TLS for binary."""

from __future__ import annotations

import os
import re
import resource
import select
import socket
import subprocess
import time
from typing import Any

from OpenSSL import SSL

from apnsd.testing.devpki import DevPki
from apnsd.wire import binary
from benchmarks.workload import PAYLOAD, token_hex

SENTINEL = b"\x99\x00\x00\x00\x00"  # not a command-2 frame: both binary sinks answer it with an error response


def h2load_help() -> str:
    out = subprocess.run(["h2load", "--help"], capture_output=True, text=True)
    return out.stdout + out.stderr


def h2load_can_present_client_cert() -> bool:
    """nghttp2's h2load (1.52 in Debian 12) has no client certificate options."""
    text = h2load_help()
    return bool(re.search(r"--(client-)?cert\b", text))


def h2load_version() -> str:
    out = subprocess.run(["h2load", "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def run_h2load(
    port: int, requests: int, workdir: str, connections: int = 1, streams: int = 1000, timeout: float = 600.0
) -> dict[str, Any]:
    """h2load -c<connections> -m<streams> POSTing the job payload to /3/device/<token>; returns req/s and counts."""
    body = os.path.join(workdir, "h2load-body.json")
    with open(body, "wb") as fh:
        fh.write(PAYLOAD)
    argv = [
        "h2load",
        "-c",
        str(connections),
        "-t",
        "1",
        "-m",
        str(streams),
        "-n",
        str(requests),
        "-d",
        body,
        "-H",
        "apns-topic: com.example.app",
        "-H",
        "apns-push-type: alert",
        "-H",
        "apns-priority: 10",
        "-H",
        "content-type: application/json",
        f"https://127.0.0.1:{port}/3/device/{token_hex(1)}",
    ]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # h2load is the only child reaped meanwhile
    cpu = ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime
    text = out.stdout + out.stderr
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    done = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text
    )
    status = re.search(r"status codes: (\d+) 2xx", text)
    if not m or not done:
        raise RuntimeError(f"h2load output not understood (exit {out.returncode}):\n{text[-2000:]}")
    seconds = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    return {
        "rate": float(m.group(3)),
        "seconds": seconds,
        "wall": wall,
        "cpu_seconds": cpu,
        "cpu_per_10k": cpu / requests * 10_000,
        "requests": requests,
        "succeeded": int(done.group(4)),
        "failed": int(done.group(5)),
        "errored": int(done.group(6)),
        "status_2xx": int(status.group(1)) if status else None,
        "connections": connections,
        "streams": streams,
        "argv": " ".join(argv),
    }


def prebuilt_frames(count: int) -> bytes:
    """count command-2 frames with unique tokens, identifiers 1..count, the job payload."""
    encode = binary.encode_frame
    return b"".join(encode(bytes.fromhex(token_hex(i)), PAYLOAD, i + 1, 0, 10) for i in range(count))


def raw_binary_ceiling(
    port: int, pki: DevPki, frames: int, block: bytes, block_frames: int, chunk: int = 1 << 20, timeout: float = 120.0
) -> dict[str, Any]:
    """Write ``frames`` pre-built frames over one TLS connection (pyOpenSSL, dev client cert) in 1 MB sendall
    chunks, then the sentinel; the sink's error response to the sentinel means it has read everything.
    Rate = frames / (sentinel answer time - first byte written), handshake excluded."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate_file(pki.client_pem)
    ctx.use_privatekey_file(pki.client_pem)
    ctx.load_verify_locations(pki.ca_cert)
    ctx.set_verify(SSL.VERIFY_PEER)
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(None)  # pyOpenSSL needs a blocking socket; the answer wait below uses select
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    conn = SSL.Connection(ctx, sock)
    conn.set_connect_state()
    conn.do_handshake()
    repeats, rest = divmod(frames, block_frames)
    tail = b""
    if rest:  # frames are variable-length: cut the block after `rest` whole frames
        _, used = _frames_prefix(block, rest)
        tail = block[:used]
    view = memoryview(block)
    t0 = time.monotonic()
    sent = 0
    for _ in range(repeats):
        for off in range(0, len(block), chunk):
            conn.sendall(view[off : off + chunk])
        sent += len(block)
    if tail:
        conn.sendall(tail)
        sent += len(tail)
    t_written = time.monotonic()
    conn.sendall(SENTINEL)
    answer = b""
    deadline = time.monotonic() + timeout
    while len(answer) < 6:
        if not conn.pending() and not select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise RuntimeError(f"binary sink on {port} did not answer the sentinel within {timeout} s")
        try:
            data = conn.recv(64)
        except SSL.WantReadError:
            continue
        except (SSL.ZeroReturnError, SSL.SysCallError):
            break
        if not data:
            break
        answer += data
    t1 = time.monotonic()
    try:
        conn.close()
    finally:
        sock.close()
    ok = answer[:1] == b"\x08"
    return {
        "rate": frames / (t1 - t0),
        "seconds": t1 - t0,
        "write_seconds": t_written - t0,
        "frames": frames,
        "bytes": sent,
        "answered": ok,
    }


def _frames_prefix(block: bytes, count: int) -> tuple[int, int]:
    pos = 0
    for _ in range(count):
        pos += 5 + int.from_bytes(block[pos + 1 : pos + 5], "big")
    return count, pos
