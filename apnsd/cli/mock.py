"""`apnsd mock`: run a fake APNs gateway from the shell, with faults and a record of what it received."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any


def add_mock_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `apnsd mock`."""
    p.set_defaults(func=run_mock)
    p.add_argument("--protocol", choices=["http2", "binary"], default="http2")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed at start)")
    p.add_argument(
        "--pki-dir",
        default=str(Path(tempfile.gettempdir()) / "apnsd-dev-pki"),
        help="where to find or create the development CA, server and client certificates",
    )
    p.add_argument("--cert", help="server certificate (default: from --pki-dir)")
    p.add_argument("--key", help="server key (default: from --pki-dir)")
    p.add_argument("--client-ca", help="CA that client certificates must chain to (default: the dev CA)")
    p.add_argument("--no-client-cert", action="store_true", help="do not ask for a client certificate (token auth)")
    p.add_argument("--jwt-key", help="PEM public key or .p8: require ES256 provider tokens signed by it")
    p.add_argument(
        "--fail-prefix",
        action="append",
        default=[],
        metavar="HEX=STATUS[:REASON]",
        help="answer tokens starting with HEX with STATUS (binary: error code; http2: e.g. 410:Unregistered)",
    )
    p.add_argument(
        "--close-after", type=int, default=0, help="drop the first connection abruptly after N notifications"
    )
    p.add_argument(
        "--shutdown-after",
        type=int,
        default=0,
        help="binary: answer status 10 (Shutdown, naming the last one accepted) after N notifications, once",
    )
    p.add_argument(
        "--hard-close",
        action="store_true",
        help="binary: close at once after an error response, without reading on (as Apple's gateway did)",
    )
    p.add_argument("--goaway-after", type=int, default=0, help="http2: GOAWAY after N requests on the first connection")
    p.add_argument(
        "--max-streams",
        type=int,
        default=1000,
        help="http2: SETTINGS_MAX_CONCURRENT_STREAMS after the first accepted request",
    )
    p.add_argument("--burst", metavar="STATUS:REASON:COUNT", help="http2: answer the first COUNT requests with STATUS")
    p.add_argument(
        "--feedback", metavar="FILE", help="binary: serve these tokens (one hex per line) on the feedback port"
    )
    p.add_argument("--record", metavar="FILE", help="on exit, write what was received as JSON lines")


def _prefixes(items: list[str]) -> list[tuple[str, int, str]]:
    out = []
    for item in items:
        prefix, _, rest = item.partition("=")
        status, _, reason = rest.partition(":")
        out.append((prefix.lower(), int(status), reason))
    return out


def build_mock(args: argparse.Namespace) -> Any:
    """The MockGateway the options describe (not started)."""
    from apnsd.gateway.credentials import load_public_key
    from apnsd.testing.devpki import make_dev_pki
    from apnsd.testing.mock import BinaryFaults, MockGateway

    pki = make_dev_pki(args.pki_dir)
    client_ca = None if args.no_client_cert or args.jwt_key else (args.client_ca or pki.ca_cert)
    prefixes = _prefixes(args.fail_prefix)
    kwargs: dict[str, Any] = {}
    if args.protocol == "binary":
        kwargs["binary_faults"] = BinaryFaults(
            tuple((p, s) for p, s, _ in prefixes),
            args.close_after,
            shutdown_after=args.shutdown_after,
            hard_close=args.hard_close,
        )
    else:
        from apnsd.testing.http2_mock import Http2Faults

        burst = None
        if args.burst:
            status, reason, count = args.burst.split(":")
            burst = (int(status), reason, int(count))
        kwargs["http2_faults"] = Http2Faults(
            max_concurrent_streams=args.max_streams,
            reject_prefixes=tuple(prefixes),
            burst_status=burst,
            goaway_after=args.goaway_after,
            close_after=args.close_after,
            jwt_public_key=load_public_key(args.jwt_key) if args.jwt_key else None,
        )
    feedback = []
    if args.feedback:
        import time

        feedback = [
            (int(time.time()), bytes.fromhex(line.strip()))
            for line in Path(args.feedback).read_text().split()
            if line.strip()
        ]
    return MockGateway(
        args.protocol,
        args.cert or pki.server_cert,
        args.key or pki.server_key,
        client_ca,
        host=args.host,
        port=args.port,
        feedback=feedback,
        **kwargs,
    ), pki


def describe_files(mock: Any, pki: Any) -> list[str]:
    """The files the mock really uses, and the dev-PKI files a client needs only where they fit them."""
    lines = [
        f"server certificate: {mock.cert_file}",
        f"server key: {mock.key_file}",
        f"client CA (client certificates must chain to it): {mock.client_ca_file or 'none, none asked for'}",
    ]
    if mock.cert_file == pki.server_cert:
        lines.append(f"CA for clients (ca_file): {pki.ca_cert}")
    if mock.client_ca_file == pki.ca_cert:
        lines.append(f"client certificate (cert): {pki.client_pem}")
    return lines


def run_mock(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM, then print a summary."""
    from apnsd import logs

    logs.configure("auto", "info", sys.stderr)  # stdout carries the addresses and the summary
    mock, pki = build_mock(args)
    mock.start(with_feedback=args.protocol == "binary")
    print(
        f"apnsd mock ({args.protocol}) listening on {mock.host}:{mock.port}"
        + (f", feedback on {mock.feedback_port}" if mock.feedback_port else ""),
        flush=True,
    )
    for line in describe_files(mock, pki):
        print(f"  {line}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    mock.stop()
    summary = mock.record.summary()
    print(json.dumps(summary), flush=True)
    if args.record:
        with open(args.record, "w") as fh:
            for r in mock.record.received:
                fh.write(json.dumps({"token": r.token, "id": r.ident, "status": r.status, "reason": r.reason}) + "\n")
    return 0
