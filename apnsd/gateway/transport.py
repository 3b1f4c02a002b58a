"""The only socket user: TCP connect, TLS handshake (SNI, ALPN, verification), non-blocking I/O."""

from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Callable

from cryptography import x509
from OpenSSL import SSL

from apnsd.errors import GatewayError, GatewayRejected
from apnsd.proxy import parse_proxy

READ_SIZE = 64 * 1024  # below glibc's mmap threshold: pyOpenSSL allocates this per recv call
MAX_PROXY_RESPONSE = 16 * 1024  # a CONNECT answer is a status line and a few headers
_PROXY_HINTS = {
    407: ' (the proxy wants credentials, or refused these: proxy = "http://user:pass@host:port")',
    401: ' (the proxy wants credentials, or refused these: proxy = "http://user:pass@host:port")',
    403: " (the proxy's rules forbid this destination or port; tinyproxy needs ConnectPort 443)",
}


def open_tcp(host: str, port: int, timeout: float, proxy: str = "") -> socket.socket:
    """A TCP connection to host:port, directly or through an HTTP CONNECT tunnel; GatewayError with the cause."""
    target = f"{host}:{port}"
    if not proxy:
        return _dial(host, port, timeout, target, f"outgoing port {port} blocked?")
    p = parse_proxy(proxy)
    sock = _dial(p.host, p.port, timeout, f"proxy {p}", "is the proxy running and reachable?")
    try:
        _connect_tunnel(sock, host, port, p.authorization(), str(p), time.monotonic() + timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def _dial(host: str, port: int, timeout: float, what: str, hint: str) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise GatewayError(f"cannot reach {what}: connection timed out ({hint})") from None
    except OSError as exc:
        raise GatewayError(f"cannot reach {what}: {exc.strerror or exc} ({hint})") from None


def _connect_tunnel(
    sock: socket.socket, host: str, port: int, authorization: str | None, shown: str, deadline: float
) -> None:
    """Ask the proxy for a tunnel to host:port and read its answer; anything but 2xx is a GatewayError."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if authorization:
        request += f"Proxy-Authorization: {authorization}\r\n"
    answer = bytearray()
    try:
        sock.sendall((request + "\r\n").encode("idna" if not host.isascii() else "ascii"))
        while b"\r\n\r\n" not in answer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
            if len(answer) > MAX_PROXY_RESPONSE:
                break
    except TimeoutError:
        raise GatewayError(f"proxy {shown} did not answer CONNECT {authority} in time") from None
    except OSError as exc:
        raise GatewayError(f"proxy {shown} dropped CONNECT {authority}: {exc.strerror or exc}") from None
    head, sep, rest = bytes(answer).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    shown_line = "".join(c if c.isprintable() else "?" for c in status_line)[:200] or "(no answer)"
    parts = status_line.split(" ", 2)
    code = int(parts[1]) if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit() else 0
    if not sep or not 200 <= code < 300:
        raise GatewayError(f"proxy {shown} refused CONNECT {authority}: {shown_line}{_PROXY_HINTS.get(code, '')}")
    if rest:
        raise GatewayError(f"proxy {shown} sent data after its CONNECT answer; not a plain HTTP proxy?")
    sock.settimeout(None)


class TlsTransport:
    """One TLS connection to a gateway; the thread that created it is its only reader and writer."""

    def __init__(
        self,
        host: str,
        port: int,
        context: SSL.Context,
        *,
        alpn: bytes | None = None,
        timeout: float = 10.0,
        verify_host: Callable[[x509.Certificate, str], bool] | None = None,
        proxy: str = "",
    ) -> None:
        self.host, self.port = host, port
        self._proxy = proxy
        self._context = context
        self._alpn = alpn
        self._timeout = timeout
        self._verify_host = verify_host
        self._sock: socket.socket | None = None
        self._conn: SSL.Connection | None = None
        self._out = bytearray()
        self.written = 0  # bytes flush() has handed to the socket since connect
        self.closed = True
        self.peer = f"{host}:{port}" + (f" via proxy {parse_proxy(proxy)}" if proxy else "")

    def connect(self) -> None:
        """Open TCP and complete the TLS handshake within the timeout; raise GatewayError with the cause."""
        deadline = time.monotonic() + self._timeout
        sock = open_tcp(self.host, self.port, self._timeout, self._proxy)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = SSL.Connection(self._context, sock)
        if not _is_ip(self.host):
            conn.set_tlsext_host_name(self.host.encode("idna"))
        conn.set_connect_state()
        self._sock, self._conn = sock, conn
        try:
            self._handshake(deadline)
        except BaseException:
            self._abort()
            raise
        self.closed = False

    def _handshake(self, deadline: float) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                self._wait_io(deadline, write=False)
            except SSL.WantWriteError:
                self._wait_io(deadline, write=True)
            except SSL.Error as exc:
                raise GatewayRejected(f"TLS handshake with {self.peer} failed: {describe_ssl_error(exc)}") from None
            except OSError as exc:
                raise GatewayError(f"TLS handshake with {self.peer} failed: {exc}") from None
        if self._alpn is not None and conn.get_alpn_proto_negotiated() != self._alpn:
            raise GatewayRejected(
                f"{self.peer} did not select ALPN {self._alpn.decode()} (is it an HTTP/2 APNs endpoint?)"
            )
        cert = conn.get_peer_certificate(as_cryptography=True)
        if self._verify_host is not None and (cert is None or not self._verify_host(cert, self.host)):
            raise GatewayRejected(f"{self.peer} presented a certificate that is not valid for {self.host}")

    def _wait_io(self, deadline: float, write: bool) -> None:
        assert self._sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise GatewayError(f"TLS handshake with {self.peer} timed out")
        r, w, _ = select.select([] if write else [self._sock], [self._sock] if write else [], [], left)
        if not r and not w:
            raise GatewayError(f"TLS handshake with {self.peer} timed out")

    def fileno(self) -> int:
        """The socket's descriptor, for the owner's selector."""
        assert self._sock is not None
        return self._sock.fileno()

    def send(self, data: bytes | bytearray) -> None:
        """Queue bytes; they leave on the next flush()."""
        self._out += data

    @property
    def wants_write(self) -> bool:
        """True while queued bytes have not all been written."""
        return bool(self._out)

    def flush(self) -> None:
        """Write as much of the queued bytes as the socket takes now, without blocking."""
        conn = self._conn
        if conn is None or self.closed or not self._out:
            return
        out = self._out
        sent = 0
        failure: str | None = None
        with memoryview(out) as view:
            try:
                while sent < len(out):
                    sent += conn.send(view[sent : sent + 1024 * 1024])
            except (SSL.WantWriteError, SSL.WantReadError):
                pass
            except SSL.ZeroReturnError:
                failure = "peer closed the TLS session"
            except SSL.SysCallError as exc:
                failure = _syscall_reason(exc)
            except SSL.Error as exc:
                failure = describe_ssl_error(exc)
        del out[:sent]
        self.written += sent
        if failure is not None:
            raise GatewayError(f"connection to {self.peer} lost: {failure}")

    def read(self) -> bytes:
        """Every byte available now (b'' if none); raises GatewayError when the peer has closed."""
        conn = self._conn
        if conn is None or self.closed:
            raise GatewayError(f"connection to {self.peer} is closed")
        chunks: list[bytes] = []
        try:
            while True:
                chunk = conn.recv(READ_SIZE)
                if not chunk:
                    raise self._lost("peer closed the connection")
                chunks.append(chunk)
        except SSL.WantReadError:
            pass
        except SSL.WantWriteError:
            pass
        except SSL.ZeroReturnError:
            if chunks:
                self.closed = True
                return b"".join(chunks)
            raise self._lost("peer closed the TLS session") from None
        except SSL.SysCallError as exc:
            if chunks:
                self.closed = True
                return b"".join(chunks)
            raise self._lost(_syscall_reason(exc)) from None
        except SSL.Error as exc:
            raise self._lost(describe_ssl_error(exc)) from None
        return b"".join(chunks)

    def _lost(self, reason: str) -> GatewayError:
        self._abort()
        return GatewayError(f"connection to {self.peer} lost: {reason}")

    def close(self) -> None:
        """Send close_notify if possible and close the socket; never raises."""
        if self._conn is not None and not self.closed:
            try:
                self._conn.shutdown()
            except (SSL.Error, OSError):
                pass
        self._abort()

    def _abort(self) -> None:
        self.closed = True
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._conn = None
        self._out.clear()


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


def _syscall_reason(exc: SSL.SysCallError) -> str:
    code = exc.args[0] if exc.args else None
    if code == -1 or code == 0:
        return "peer closed the connection"
    if isinstance(code, int) and code in errno.errorcode:
        return f"{errno.errorcode[code]} ({code})"
    return str(exc)


def describe_ssl_error(exc: SSL.Error) -> str:
    """Turn pyOpenSSL's nested error tuples into one readable line."""
    parts = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(item, tuple) and len(item) == 3:
            parts.append(str(item[2]))
    text = "; ".join(parts) or str(exc) or type(exc).__name__
    if "alert" in text and ("certificate" in text or "handshake" in text or "unknown ca" in text):
        text += (
            " — the gateway rejected the client certificate (wrong environment, revoked or not an APNs certificate?)"
        )
    elif "certificate verify failed" in text:
        text += " — the gateway's certificate is not trusted (set ca_file, or update the system CA store)"
    return text
