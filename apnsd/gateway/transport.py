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


CHUNK = 128 * 1024  # plaintext encrypted at a time; ``written`` advances by a chunk once its ciphertext is sent


class TlsSessions:
    """The TLS session of an app's latest connection, offered on its next one: a reconnect (after every binary
    error response, say) then resumes instead of repeating the certificate exchange and its signatures."""

    def __init__(self) -> None:
        self.session: SSL.Session | None = None


class TlsTransport:
    """One TLS connection to a gateway; the thread that created it is its only reader and writer.

    OpenSSL works on memory buffers and this class moves the ciphertext to and from the socket. OpenSSL
    (3.x) treats a socket write that fails as fatal to the whole TLS session: a gateway that writes an
    error response and closes at once would make the write fail with ECONNRESET and the answer it sent
    before unreadable. Here the TLS session never sees the socket fail, so what the peer sent before it
    went can still be read and decrypted after a failed write."""

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
        sessions: TlsSessions | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._proxy = proxy
        self._sessions = sessions
        self._context = context
        self._alpn = alpn
        self._timeout = timeout
        self._verify_host = verify_host
        self._sock: socket.socket | None = None
        self._conn: SSL.Connection | None = None
        self._out = bytearray()  # plaintext not yet encrypted
        self._cipher = bytearray()  # ciphertext not yet taken by the socket
        self._encrypted = 0  # plaintext bytes whose ciphertext is (partly) in _cipher
        self._write_failure: str | None = None  # once a socket write failed, every later flush fails too
        self.written = 0  # plaintext bytes flush() has handed to the socket since connect
        self.closed = True
        self._established = False  # the handshake completed (so the session may be resumed later)
        self.peer = f"{host}:{port}" + (f" via proxy {parse_proxy(proxy)}" if proxy else "")

    def connect(self) -> None:
        """Open TCP and complete the TLS handshake within the timeout; raise GatewayError with the cause."""
        deadline = time.monotonic() + self._timeout
        sock = open_tcp(self.host, self.port, self._timeout, self._proxy)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = SSL.Connection(self._context, None)
        if not _is_ip(self.host):
            conn.set_tlsext_host_name(self.host.encode("idna"))
        conn.set_connect_state()
        if self._sessions is not None and self._sessions.session is not None:
            conn.set_session(self._sessions.session)
        self._sock, self._conn = sock, conn
        try:
            self._handshake(deadline)
        except BaseException:
            if self._sessions is not None:
                self._sessions.session = None  # start afresh after a failed handshake
            self._abort()
            raise
        self.closed = False
        self._established = True

    def _handshake(self, deadline: float) -> None:
        conn = self._conn
        assert conn is not None
        try:
            while True:
                try:
                    conn.do_handshake()
                    break
                except SSL.WantReadError:
                    self._push_handshake(deadline)
                    self._pull_handshake(deadline)
                except SSL.Error as exc:
                    self._push_handshake(deadline)  # our alert, if OpenSSL wrote one, tells the gateway why
                    raise GatewayRejected(f"TLS handshake with {self.peer} failed: {describe_ssl_error(exc)}") from None
            self._push_handshake(deadline)
        except OSError as exc:
            raise GatewayError(f"TLS handshake with {self.peer} failed: {exc}") from None
        if self._alpn is not None and conn.get_alpn_proto_negotiated() != self._alpn:
            raise GatewayRejected(
                f"{self.peer} did not select ALPN {self._alpn.decode()} (is it an HTTP/2 APNs endpoint?)"
            )
        cert = conn.get_peer_certificate(as_cryptography=True)
        if self._verify_host is not None and (cert is None or not self._verify_host(cert, self.host)):
            raise GatewayRejected(f"{self.peer} presented a certificate that is not valid for {self.host}")

    def _push_handshake(self, deadline: float) -> None:
        """Send every handshake byte OpenSSL has produced, waiting for the socket up to the deadline."""
        self._take_ciphertext()
        while self._cipher:
            self._wait_io(deadline, write=True)
            sent = self._send_some()
            del self._cipher[:sent]

    def _pull_handshake(self, deadline: float) -> None:
        """Wait for the gateway's next handshake bytes and hand them to OpenSSL (EOF included)."""
        self._wait_io(deadline, write=False)
        conn, sock = self._conn, self._sock
        assert conn is not None and sock is not None
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            conn.bio_write(data)
        else:
            conn.bio_shutdown()  # OpenSSL then reports the unexpected end of the handshake

    def _wait_io(self, deadline: float, write: bool) -> None:
        assert self._sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise GatewayError(f"TLS handshake with {self.peer} timed out")
        sock = self._sock
        assert sock is not None
        r, w, _ = select.select([] if write else [sock], [sock] if write else [], [], left)
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
        return bool(self._out) or bool(self._cipher)

    @property
    def unsent(self) -> int:
        """Bytes queued (plaintext, or ciphertext of it) that the socket has not taken yet."""
        return len(self._out) + len(self._cipher)

    def flush(self) -> None:
        """Write as much of the queued bytes as the socket takes now, without blocking."""
        conn = self._conn
        if conn is None or self.closed:
            return
        if self._write_failure is not None:
            raise GatewayError(f"connection to {self.peer} lost: {self._write_failure}")
        out, cipher = self._out, self._cipher
        while cipher or out:
            if not cipher:
                # One chunk at a time, so that ``written`` says how far the socket has taken the stream.
                take = min(len(out), CHUNK)
                with memoryview(out) as view:
                    self._encrypted = conn.send(view[:take])
                del out[: self._encrypted]
                self._take_ciphertext()
            try:
                sent = self._send_some()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._write_failure = _os_reason(exc)
                raise GatewayError(f"connection to {self.peer} lost: {self._write_failure}") from None
            del cipher[:sent]
            if cipher:
                return  # the socket is full
            self.written += self._encrypted
            self._encrypted = 0

    def _send_some(self) -> int:
        assert self._sock is not None
        with memoryview(self._cipher) as view:
            return self._sock.send(view)

    def _take_ciphertext(self) -> None:
        """Move what OpenSSL has encrypted (records, handshake messages, alerts) to the outgoing buffer."""
        conn = self._conn
        assert conn is not None
        try:
            while True:
                self._cipher += conn.bio_read(CHUNK + 4096)
        except SSL.WantReadError:
            pass

    def read(self) -> bytes:
        """Every byte available now (b'' if none); raises GatewayError when the peer has closed.

        When the peer closed after sending something, that is returned and ``closed`` becomes True."""
        conn, sock = self._conn, self._sock
        if conn is None or sock is None or self.closed:
            raise GatewayError(f"connection to {self.peer} is closed")
        ended: str | None = None
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                ended = _os_reason(exc)
                break
            if not data:
                ended = "peer closed the connection"
                break
            conn.bio_write(data)
        chunks: list[bytes] = []
        try:
            while True:
                chunks.append(conn.recv(READ_SIZE))
        except (SSL.WantReadError, SSL.WantWriteError):
            pass
        except SSL.ZeroReturnError:
            ended = "peer closed the TLS session"
        except SSL.Error as exc:
            ended = describe_ssl_error(exc)
        if ended is None:
            return b"".join(chunks)
        if chunks:
            self.closed = True
            return b"".join(chunks)
        raise self._lost(ended)

    def read_final(self, timeout: float) -> bytes:
        """After a failed write: what the peer sent before it went, waiting at most ``timeout`` for it."""
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        while not self.closed and self._sock is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                break
            try:
                chunks.append(self.read())
            except GatewayError:
                break
        return b"".join(chunks)

    def _lost(self, reason: str) -> GatewayError:
        self._abort()
        return GatewayError(f"connection to {self.peer} lost: {reason}")

    def close(self) -> None:
        """Send close_notify if possible and close the socket; never raises."""
        if self._conn is not None and not self.closed and self._write_failure is None:
            try:
                self._conn.shutdown()
                self._take_ciphertext()
                self._send_some()
            except (SSL.Error, OSError):
                pass
        self._abort()

    def _abort(self) -> None:
        if self._sessions is not None and self._conn is not None and self._established:
            # Taken at the end rather than after the handshake: under TLS 1.3 the session tickets that make it
            # resumable arrive afterwards, with the first data read.
            self._sessions.session = self._conn.get_session()
        self._established = False
        self.closed = True
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._conn = None
        self._out.clear()
        self._cipher.clear()


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


def _os_reason(exc: OSError) -> str:
    code = exc.errno
    if code is not None and code in errno.errorcode:
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
