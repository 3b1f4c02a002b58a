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

from apnsd.errors import ApnsdError


def add_mock_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `apnsd mock`."""
    p.set_defaults(func=run_mock)
    p.add_argument("--protocol", choices=["http2", "binary"], default="http2")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=0, help="0 picks a free port (printed at start)")
    p.add_argument(
        "--channels-port", type=_port, default=0, help="http2: the channel management API's port (0 = a free one)"
    )
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
        type=_fail_prefix,
        metavar="HEX=STATUS[:REASON]|HEX=REASON",
        help="answer tokens starting with HEX with STATUS (binary: error code; http2: e.g. 410:Unregistered, "
        "or just one of Apple's reasons such as InvalidProviderToken)",
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
        "--goaway-reason",
        default="Shutdown",
        type=_reason,
        help="http2: the reason the GOAWAY of --goaway-after names (any of Apple's, e.g. IdleTimeout)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        help="http2: GOAWAY IdleTimeout after this many seconds without a request (0 = never)",
    )
    p.add_argument(
        "--stall-after",
        type=int,
        default=0,
        help="http2: after N requests on the first connection, answer nothing more (not even PING): a dead link",
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=1000,
        help="http2: SETTINGS_MAX_CONCURRENT_STREAMS after the first accepted request",
    )
    p.add_argument(
        "--burst",
        type=_burst,
        metavar="[STATUS:]REASON:COUNT",
        help="http2: answer COUNT requests with REASON (status from Apple's table unless given)",
    )
    p.add_argument("--burst-after", type=int, default=0, help="http2: requests answered normally before --burst")
    p.add_argument(
        "--environment",
        choices=["production", "sandbox"],
        default="production",
        help="http2: sandbox adds apns-unique-id; tokens starting with the other environment's marker "
        "(production 9e0d0c75…, sandbox 5a1db0c5…) get BadDeviceToken",
    )
    p.add_argument(
        "--feedback", metavar="FILE", help="binary: serve these tokens (one hex per line) on the feedback port"
    )
    p.add_argument("--record", metavar="FILE", help="on exit, write what was received as JSON lines")


def _port(text: str) -> int:
    """A TCP port number, 0 for a free one."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 0 to 65535")
    return int(text)


def _reason(text: str) -> str:
    """One of Apple's HTTP/2 reasons, by name."""
    from apnsd.testing.http2_mock import APPLE_REASONS

    if text not in APPLE_REASONS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of Apple's reasons ({', '.join(APPLE_REASONS)})")
    return text


def _status_reason(text: str) -> tuple[int, str]:
    """STATUS, STATUS:REASON or REASON (its status from Apple's table)."""
    status, _, reason = text.partition(":")
    if status.isdigit() and 0 < int(status) < 1000:
        return int(status), reason
    from apnsd.testing.http2_mock import APPLE_REASONS

    return APPLE_REASONS[_reason(text)], text


def _fail_prefix(text: str) -> tuple[str, int, str]:
    """HEX=STATUS[:REASON] or HEX=REASON."""
    prefix, sep, rest = text.partition("=")
    if not sep or not prefix or any(c not in "0123456789abcdefABCDEF" for c in prefix):
        raise argparse.ArgumentTypeError(f"{text!r} is not HEX=STATUS[:REASON] or HEX=REASON")
    status, reason = _status_reason(rest)
    return prefix.lower(), status, reason


def _burst(text: str) -> tuple[int, str, int]:
    """[STATUS:]REASON:COUNT."""
    head, _, count = text.rpartition(":")
    if not head or not count.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not [STATUS:]REASON:COUNT")
    status, reason = _status_reason(head)
    return status, reason, int(count)


def build_mock(args: argparse.Namespace) -> Any:
    """The MockGateway the options describe (not started)."""
    from apnsd.gateway.credentials import load_public_key
    from apnsd.testing.devpki import make_dev_pki
    from apnsd.testing.mock import BinaryFaults, MockGateway

    try:
        pki = make_dev_pki(args.pki_dir)
    except OSError as exc:
        raise ApnsdError(f"--pki-dir {args.pki_dir}: {exc.strerror or exc}") from None
    client_ca = None if args.no_client_cert or args.jwt_key else (args.client_ca or pki.ca_cert)
    prefixes = args.fail_prefix
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

        kwargs["http2_faults"] = Http2Faults(
            max_concurrent_streams=args.max_streams,
            reject_prefixes=tuple(prefixes),
            burst_status=args.burst,
            burst_after=args.burst_after,
            goaway_after=args.goaway_after,
            goaway_reason=args.goaway_reason,
            stall_after=args.stall_after,
            idle_timeout=args.idle_timeout,
            environment=args.environment,
            close_after=args.close_after,
            jwt_public_key=load_public_key(args.jwt_key) if args.jwt_key else None,
        )
    feedback = []
    if args.feedback:
        import time

        try:
            feedback = [
                (int(time.time()), bytes.fromhex(line.strip()))
                for line in Path(args.feedback).read_text().split()
                if line.strip()
            ]
        except OSError as exc:
            raise ApnsdError(f"--feedback {args.feedback}: {exc.strerror or exc}") from None
        except ValueError:  # not hex (or not UTF-8 text)
            raise ApnsdError(f"--feedback {args.feedback}: expected one hex device token per line") from None
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
    try:
        mock, pki = build_mock(args)  # binds its port
    except OSError as exc:
        raise ApnsdError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    try:
        mock.start(with_feedback=args.protocol == "binary", channels_port=args.channels_port)
    except OSError as exc:  # the feedback or channel management port
        mock.stop()
        raise ApnsdError(f"cannot start the mock on {args.host}: {exc.strerror or exc}") from None
    print(
        f"apnsd mock ({args.protocol}) listening on {mock.host}:{mock.port}"
        + (f", feedback on {mock.feedback_port}" if mock.feedback_port else "")
        + (f", channel management on {mock.channels_port} (channels_port)" if mock.channels_port else ""),
        flush=True,
    )
    for line in describe_files(mock, pki):
        print(f"  {line}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    mock.stop()
    summary: dict[str, Any] = mock.record.summary()
    if args.protocol == "http2":
        summary["broadcasts"] = len(mock.record.broadcasts())
        summary["channels"] = len(mock.channels.channels)
    print(json.dumps(summary), flush=True)
    if args.record:
        with open(args.record, "w") as fh:
            for r in mock.record.received:
                entry = {"token": r.token, "id": r.ident, "status": r.status, "reason": r.reason}
                if r.channel:
                    entry["channel"] = r.channel
                fh.write(json.dumps(entry) + "\n")
    return 0
