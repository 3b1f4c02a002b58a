"""`apnsd check`: credentials, certificate, topic and environment checks per app, and an optional live handshake."""

from __future__ import annotations

import ipaddress
import select
import socket
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TextIO, TypeVar

from cryptography import x509
from OpenSSL import SSL

from apnsd.cli.supervisor_conf import SUPERVISORD_CONFS, stop_verdicts
from apnsd.config import AppConfig, Config, redact_url
from apnsd.errors import CredentialsError, GatewayError, QueueError
from apnsd.gateway.certinfo import Verdict, judge_environment, judge_topic
from apnsd.gateway.credentials import (
    EXPIRY_WARN_DAYS,
    CertificateInfo,
    ClientIdentity,
    TokenSigner,
    check_validity,
    client_context,
    decode_token,
    load_ca_certificates,
    load_identity,
    load_public_key,
    verify_hostname,
    verify_token,
)
from apnsd.gateway.transport import open_tcp
from apnsd.proxy import redact

T = TypeVar("T")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
BINARY_SETTLE = 1.0  # a binary gateway answers an accepted certificate with silence, a rejected one with an alert
_VERIFY_ERRORS = {
    9: "it is not valid yet",
    10: "it has expired",
    18: "it is self-signed",
    19: "its chain ends in a root that is not trusted",
    20: "its issuer is not in the trust store",
    21: "its issuer is not in the trust store",
}


class _Report:
    """Writes aligned report lines and counts errors and warnings."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.errors, self.warnings = out, 0, 0

    def info(self, label: str, value: str) -> None:
        """One fact about the app, aligned under its label."""
        self.out.write(f"  {label:<14}{value}\n")

    def ok(self, message: str) -> None:
        """A check that passed."""
        self.out.write(f"ok     {message}\n")

    def warn(self, message: str) -> None:
        """A problem that does not stop delivery (yet)."""
        self.warnings += 1
        self.out.write(f"WARN   {message}\n")

    def error(self, message: str) -> None:
        """A problem that makes `apnsd check` exit 1."""
        self.errors += 1
        self.out.write(f"ERROR  {message}\n")


def run_check(
    config: Config,
    connect: bool,
    out: TextIO,
    now: datetime | None = None,
    probe: bool = False,
    redis: bool = False,
    supervisor_confs: Iterable[str] = SUPERVISORD_CONFS,
) -> int:
    """Check every app's credentials (with connect, the gateway; with probe, one real request; with redis,
    Redis) and the stop timeout of a supervisord config found in ``supervisor_confs``; 0 when no check
    failed, else 1."""
    now = now or datetime.now(UTC)
    report = _Report(out)
    if redis:
        _check_redis(config, report)
        out.write("\n")
    stops = stop_verdicts(config.worker, supervisor_confs)
    for stop in stops:
        _say(report, stop)
    if stops:
        out.write("\n")
    for name, app in config.apps.items():
        host, port = app.gateway()
        out.write(f"app {name}: {app.protocol}, {app.environment}, gateway {host}:{port}\n")
        try:
            errors = report.errors
            _check_app(app, connect, report, now)
            if probe and report.errors == errors:
                from apnsd.cli.probe import probe_app

                probe_app(config, name, report)
            elif probe:
                report.warn("probe skipped: fix the errors above first")
        except Exception as exc:
            report.error(f"unexpected {type(exc).__name__} while checking app {name}: {exc}")
        out.write("\n")
    verdict = "check failed" if report.errors else "all checks passed"
    out.write(f"{verdict}: {report.errors} error(s), {report.warnings} warning(s)\n")
    return 1 if report.errors else 0


def _check_redis(config: Config, report: _Report) -> None:
    """Reach and authenticate to Redis, then look for keys apnsd writes that hold another type."""
    from apnsd.store.queue import JobQueue, client_for

    report.out.write(f"redis {redact_url(config.redis.url)}\n")
    try:
        q = JobQueue(client_for(config.redis), config.redis.prefix, "check")
        q.ping()
        report.ok("Redis answers and accepts the credentials")
        wrong = q.wrong_typed_keys(list(config.queues()))
    except QueueError as exc:
        report.error(str(exc))
        return
    for key, held, want in wrong:
        report.error(f"Redis key {key} holds a {held}; apnsd needs a {want} there (outcomes cannot be written)")
    if not wrong:
        report.ok("every key apnsd writes is absent or of the right type")


def _check_app(app: AppConfig, connect: bool, report: _Report, now: datetime) -> None:
    identity: ClientIdentity | None = None
    if not (app.cert or app.pkcs12 or app.token_key):
        report.error("no credentials: set cert (PEM), pkcs12 or token_key")
        return
    usable = (
        _check_token(app, report, now)
        if app.auth == "token"
        else bool(identity := _check_certificate(app, report, now))
    )
    if app.ca_file:
        try:
            report.ok(f"ca_file {app.ca_file} holds {len(load_ca_certificates(app.ca_file))} certificate(s)")
        except CredentialsError as exc:
            report.error(str(exc))
            usable = False
    if connect:
        _probe(app, identity, usable, report)


def _check_certificate(app: AppConfig, report: _Report, now: datetime) -> ClientIdentity | None:
    report.info("auth", f"certificate {app.pkcs12 or app.cert}" + (f" with key {app.key}" if app.key else ""))
    try:
        identity = load_identity(app.cert, app.key, app.pkcs12, app.passphrase)
    except CredentialsError as exc:
        report.error(str(exc))
        return None
    info = identity.info
    report.info("subject", info.subject)
    report.info("bundle id", info.bundle_id or "(none: the subject has no UID)")
    report.info("team id", info.team_id or "(none: the subject has no OU)")
    report.info("topics", ", ".join(f"{t} ({k})" if k else t for t, k in info.topics) or "(none)")
    report.info("environments", f"{', '.join(sorted(info.environments)) or '(none)'} (configured: {app.environment})")
    report.info(
        "valid",
        f"{info.not_before:%Y-%m-%d %H:%M} to {info.not_after:%Y-%m-%d %H:%M} UTC "
        f"({info.days_left(now):.1f} days left)",
    )
    if app.pkcs12:
        report.ok(f"passphrase opens PKCS#12 file {app.pkcs12}")
    report.ok("private key matches the certificate")
    _check_expiry(info, identity.source, report, now)
    _check_environment(info, app, report)
    _check_topic(app.topic, info, report)
    return identity


def _check_expiry(info: CertificateInfo, source: str, report: _Report, now: datetime) -> None:
    try:
        check_validity(info, now, source)
    except CredentialsError as exc:
        report.error(str(exc))
        return
    days = info.days_left(now)
    if days < EXPIRY_WARN_DAYS:
        report.warn(f"certificate expires in {days:.0f} days, on {info.not_after:%Y-%m-%d}; renew it now")
    else:
        report.ok(f"certificate valid for {days:.0f} more days")


def _check_environment(info: CertificateInfo, app: AppConfig, report: _Report) -> None:
    _say(report, judge_environment(info, app.environment, app.gateway()[0]))


def _check_topic(topic: str, info: CertificateInfo | None, report: _Report) -> None:
    _say(report, judge_topic(topic, info))


def _say(report: _Report, verdict: Verdict) -> None:
    {"ok": report.ok, "warn": report.warn, "error": report.error}[verdict.level](verdict.message)


def _check_token(app: AppConfig, report: _Report, now: datetime) -> bool:
    report.info("auth", f"token {app.token_key}")
    report.info("key id", app.key_id)
    report.info("team id", app.team_id)
    try:
        signer = TokenSigner.from_p8(app.token_key, app.key_id, app.team_id, app.token_refresh)
        public_key = load_public_key(app.token_key)
    except CredentialsError as exc:
        report.error(str(exc))
        return False
    jwt = signer.token(now.timestamp())
    header, claims, _ = decode_token(jwt)
    report.info("JWT header", str(header))
    report.info("JWT claims", str(claims))
    ok, reason = verify_token(jwt, public_key, now.timestamp(), key_id=app.key_id)
    if ok:
        report.ok(f"{app.token_key} is an EC P-256 key and signs ES256 tokens")
    else:
        report.error(f"a token signed with {app.token_key} does not verify ({reason})")
    _check_topic(app.topic, None, report)
    return ok


def _ms(start: float) -> str:
    return f"{(time.perf_counter() - start) * 1000:.1f} ms"


def _probe(app: AppConfig, identity: ClientIdentity | None, usable: bool, report: _Report) -> None:
    """Resolve, connect and handshake like the daemon would, printing each step's outcome and time."""
    host, port = app.gateway()
    start = time.perf_counter()
    if app.proxy:
        report.info("proxy", f"{redact(app.proxy)} (HTTP CONNECT; the proxy resolves {host})")
        try:
            sock = open_tcp(host, port, app.connect_timeout, app.proxy)
        except GatewayError as exc:
            report.error(str(exc))
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        report.ok(f"tunnel to {host}:{port} through the proxy ({_ms(start)})")
    else:
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            report.error(f"cannot resolve {host}: {exc.strerror}")
            return
        report.info("addresses", f"{', '.join(dict.fromkeys(str(a[4][0]) for a in addresses))} (DNS {_ms(start)})")
        start = time.perf_counter()
        try:
            sock = socket.create_connection((host, port), timeout=app.connect_timeout)
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            report.error(f"cannot reach {host}:{port}: {reason} — outgoing port {port} blocked?")
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # honest timings, without Nagle's 40 ms stalls
        report.ok(f"TCP connection to {host}:{port} ({_ms(start)})")
    with sock:
        if not usable:
            report.warn("TLS handshake skipped: fix the credentials above first")
            return
        _tls_probe(sock, app, identity, report)


def _drive(step: Callable[[], T], sock: socket.socket, deadline: float) -> T:
    """Run a non-blocking pyOpenSSL call to completion, waiting on the socket until deadline."""
    while True:
        try:
            return step()
        except SSL.WantReadError:
            readable, writable = [sock], []
        except SSL.WantWriteError:
            readable, writable = [], [sock]
        remaining = deadline - time.perf_counter()
        if remaining <= 0 or not any(select.select(readable, writable, [], remaining)[:2]):
            raise TimeoutError("timed out")


def _ssl_reason(exc: SSL.Error | OSError) -> str:
    if isinstance(exc, SSL.ZeroReturnError) or (isinstance(exc, SSL.SysCallError) and exc.args[0] == -1):
        return "the gateway closed the connection"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    details = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    return "; ".join(str(d[-1]) for d in details) or str(exc) or type(exc).__name__


def _explain(
    exc: SSL.Error | OSError, handshake_done: bool, verify_failures: list[int], client_cert: bool, ca_file: str
) -> str:
    """Turn a failed TLS exchange into what most likely went wrong."""
    reason = _ssl_reason(exc)
    if verify_failures:
        why = _VERIFY_ERRORS.get(verify_failures[0], f"verify error {verify_failures[0]}")
        store = ca_file or "the system trust store (set ca_file for a private CA; APNs needs USERTrust RSA since 2025)"
        return f"server certificate not trusted: {why}; trusted roots come from {store}"
    # with TLS 1.3 the gateway judges our certificate after our side of the handshake is done,
    # so its verdict arrives as an alert, or as a closed connection, on the first read
    dropped = handshake_done and any(word in reason.lower() for word in ("closed", "reset", "eof"))
    if "alert" in reason or dropped:
        if client_cert:
            return (
                f"gateway rejected the certificate ({reason}): it does not trust its issuer, "
                "or it is revoked, expired or for the other environment"
            )
        return f"gateway refused the connection ({reason}); does it want a client certificate?"
    return f"TLS {'after' if handshake_done else 'during'} the handshake failed: {reason}"


def _tls_probe(sock: socket.socket, app: AppConfig, identity: ClientIdentity | None, report: _Report) -> None:
    host, port = app.gateway()
    http2 = app.protocol == "http2"
    try:
        # tls13: the daemon offers it to a binary gateway that refuses TLS 1.2 (TlsTransport's newer_context)
        ctx = client_context(identity, app.ca_file, [b"h2"] if http2 else None, tls13=True)
    except CredentialsError as exc:
        report.error(str(exc))
        return
    verify_failures: list[int] = []

    def remember(_conn: SSL.Connection, _cert: object, errno: int, _depth: int, ok: int) -> bool:
        if not ok:
            verify_failures.append(errno)
        return bool(ok)

    ctx.set_verify(SSL.VERIFY_PEER, remember)
    conn = SSL.Connection(ctx, sock)
    sock.setblocking(False)
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        conn.set_tlsext_host_name(host.encode("idna"))  # SNI carries names only, never addresses
    conn.set_connect_state()
    start = time.perf_counter()
    handshake_done = False
    try:
        _drive(conn.do_handshake, sock, start + app.connect_timeout)
        handshake_done = True
        report.ok(f"TLS handshake: {conn.get_protocol_version_name()}, {conn.get_cipher_name()} ({_ms(start)})")
        if _check_server(conn, host, http2, report):
            _await_verdict(conn, sock, http2, app.connect_timeout, report)
    except TimeoutError:
        step = "waiting for the gateway's answer" if handshake_done else "TLS handshake"
        report.error(f"{step} with {host}:{port} timed out after {app.connect_timeout:.1f} s")
    except (SSL.Error, OSError) as exc:
        report.error(_explain(exc, handshake_done, verify_failures, identity is not None, app.ca_file))


def _await_verdict(conn: SSL.Connection, sock: socket.socket, http2: bool, timeout: float, report: _Report) -> None:
    """Wait for the gateway's first reaction: HTTP/2 SETTINGS, or for binary an alert or silence."""
    start = time.perf_counter()
    if http2:
        _drive(lambda: conn.send(H2_PREFACE), sock, start + timeout)
        first = _drive(lambda: conn.recv(9), sock, start + timeout)
        kind = "SETTINGS" if first[3:4] == b"\x04" else f"an unexpected frame {first[:9].hex()}"
        report.ok(f"gateway accepted the connection: HTTP/2 {kind} received ({_ms(start)})")
        return
    settle = min(BINARY_SETTLE, timeout)
    try:
        data = _drive(lambda: conn.recv(6), sock, start + settle)
        report.warn(f"binary gateway sent {data.hex()} right after the handshake")
    except TimeoutError:
        report.ok(f"gateway kept the connection open {settle:.1f} s without an alert: certificate accepted")


def _check_server(conn: SSL.Connection, host: str, http2: bool, report: _Report) -> bool:
    """Check ALPN and the server certificate's host name after a completed handshake."""
    cert = conn.get_peer_certificate(as_cryptography=True)
    assert isinstance(cert, x509.Certificate)  # VERIFY_PEER guarantees one
    report.info("server cert", f"{cert.subject.rfc4514_string()} issued by {cert.issuer.rfc4514_string()}")
    if not verify_hostname(cert, host):
        report.error(f"server certificate does not name {host}: connected to the wrong host, or a proxy in between?")
        return False
    report.ok(f"server certificate is trusted and names {host}")
    if http2:
        selected = conn.get_alpn_proto_negotiated()
        if selected != b"h2":
            report.error(
                f"gateway did not select ALPN h2 (selected: {selected.decode() or 'nothing'}); not an HTTP/2 gateway?"
            )
            return False
        report.ok("ALPN selected h2")
    return True
