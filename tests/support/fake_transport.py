"""A socket-free stand-in for TlsTransport, fed with scripted bytes, so session logic runs in microseconds."""

from __future__ import annotations

from dataclasses import dataclass, field

from apnsd.errors import GatewayError


class FakeTransport:
    """One scripted connection: the test feeds the gateway's bytes and failures; the session's writes are kept.

    It behaves as ``TlsTransport`` does where sessions can tell: ``send`` only buffers, ``flush``
    moves bytes out and counts ``written``, ``read`` returns what is available (b'' if nothing) and
    raises GatewayError once the peer is gone, ``closed`` is set when the last bytes came with the close.
    """

    def __init__(self, peer: str = "fake:443") -> None:
        self.peer = peer
        self.closed = True
        self.written = 0
        self.wire = bytearray()  # everything flushed so far, as the gateway would receive it
        self._out = bytearray()
        self._inbox = bytearray()
        self._peer_gone: str | None = None  # set: read raises (or returns the last bytes with closed set)
        self._write_failure: str | None = None
        self._write_room: int | None = None  # bytes the socket still takes; None = unlimited
        self.handshake_deadline = float("inf")
        self.handshake_done = True  # False: advance() waits until the test sets it (a handshake in progress)
        self.unacked_bytes = 0  # written bytes the gateway's TCP has not acknowledged (in our kernel's send queue)

    # --- scripting, from the test ------------------------------------------------------------

    def unacked(self) -> int:
        """Written bytes the gateway's TCP has not acknowledged yet (what the test set)."""
        return self.unacked_bytes

    def feed(self, data: bytes) -> None:
        """Bytes from the gateway, returned by the next read()."""
        self._inbox += data

    def hang_up(self, reason: str = "peer closed the connection") -> None:
        """The gateway goes away: pending fed bytes are still read, then the connection reports closed."""
        self._peer_gone = reason

    def fail_writes(self, reason: str = "EPIPE (32)") -> None:
        """Every later flush raises GatewayError, as a reset socket does."""
        self._write_failure = reason

    def limit_writes(self, room: int | None) -> None:
        """The socket takes at most ``room`` more bytes (None: everything)."""
        self._write_room = room

    def take_wire(self) -> bytes:
        """What the session has flushed since the last call."""
        data = bytes(self.wire)
        self.wire.clear()
        return data

    # --- what a session calls ----------------------------------------------------------------

    def connect(self) -> None:
        """Connected at once."""
        self.closed = False

    def start(self) -> None:
        """The connect begins; advance() completes it."""

    def advance(self) -> bool:
        """Established as soon as ``handshake_done`` allows."""
        if self.handshake_done:
            self.closed = False
        return self.handshake_done

    def fileno(self) -> int:
        """No socket: a number no selector will see."""
        return -1

    def send(self, data: bytes | bytearray) -> None:
        """Queue bytes for the next flush()."""
        self._out += data

    @property
    def wants_write(self) -> bool:
        """True while queued bytes have not all been flushed."""
        return bool(self._out)

    def flush(self) -> None:
        """Move queued bytes to ``wire`` as far as the scripted room allows; raise if writes fail."""
        if self.closed or not self._out:
            return
        if self._write_failure is not None:
            raise GatewayError(f"connection to {self.peer} lost: {self._write_failure}")
        n = len(self._out) if self._write_room is None else min(self._write_room, len(self._out))
        self.wire += self._out[:n]
        del self._out[:n]
        self.written += n
        if self._write_room is not None:
            self._write_room -= n

    def read(self) -> bytes:
        """The fed bytes; once hung up, the last bytes come with ``closed`` set, then GatewayError."""
        if self.closed:
            raise GatewayError(f"connection to {self.peer} is closed")
        data = bytes(self._inbox)
        self._inbox.clear()
        if self._peer_gone is not None:
            if data:
                self.closed = True
                return data
            self.closed = True
            raise GatewayError(f"connection to {self.peer} lost: {self._peer_gone}")
        return data

    def read_final(self, timeout: float) -> bytes:
        """After a failed write: whatever was fed, even from a peer that has gone (no waiting: it is scripted)."""
        data = bytes(self._inbox)
        self._inbox.clear()
        return data

    @property
    def unsent(self) -> int:
        """Queued bytes not yet flushed."""
        return len(self._out)

    def close(self) -> None:
        """The session closes the connection."""
        self.closed = True
        self._out.clear()


@dataclass
class FakeNetwork:
    """The session's transport factory: every connect gets a fresh FakeTransport, or a scripted refusal."""

    transports: list[FakeTransport] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # connect attempts to refuse first, with these causes
    slow_handshakes: bool = False  # new connections wait for the test to set ``handshake_done``

    def __call__(self) -> FakeTransport:
        """A new connection (what ``make_transport`` returns)."""
        t = _Refusing(self.refusals.pop(0)) if self.refusals else FakeTransport()
        t.handshake_done = not self.slow_handshakes
        self.transports.append(t)
        return t

    @property
    def current(self) -> FakeTransport:
        """The most recent connection."""
        return self.transports[-1]

    @property
    def connections(self) -> int:
        """How many connects succeeded."""
        return sum(1 for t in self.transports if not isinstance(t, _Refusing))


class _Refusing(FakeTransport):
    """A connect attempt that fails."""

    def __init__(self, cause: str) -> None:
        super().__init__()
        self.cause = cause

    def connect(self) -> None:
        """Refuse, as an unreachable gateway does."""
        raise GatewayError(f"cannot reach {self.peer}: {self.cause}")

    def start(self) -> None:
        """Refuse, as an unreachable gateway does."""
        self.connect()
