"""A socket-free transport wired to the sans-IO mock gateway, to drive session logic with a chosen clock."""

from __future__ import annotations

from typing import Any

from apnsd import logs
from apnsd.config import AppConfig
from apnsd.core.jobs import JobParser, Notification
from apnsd.errors import GatewayError
from apnsd.gateway.credentials import TokenSigner
from apnsd.gateway.http2_session import Http2Session
from apnsd.testing.http2_mock import FaultState, Http2Faults, Http2GatewayConnection
from apnsd.testing.record import MockRecord

TOPIC = "com.example.app"


class GatewayPipe:
    """What Session needs of TlsTransport, with the mock gateway on the other end of an in-memory pipe."""

    def __init__(self, faults: Http2Faults, state: FaultState, record: MockRecord, clock: list[float]) -> None:
        self._gateway = Http2GatewayConnection(faults, state, record, lambda: clock[0])
        self._out = bytearray()
        self._in = bytearray()
        self.closed = False
        self.peer = "pipe"
        self.handshake_deadline = float("inf")

    def connect(self) -> None:
        """The gateway's preface arrives at once."""
        self._in += self._gateway.initiate()

    def start(self) -> None:
        """Connecting is instant: see advance()."""

    def advance(self) -> bool:
        """Established at once, as connect()."""
        self.connect()
        return True

    def fileno(self) -> int:
        """No descriptor: the test calls step() itself."""
        return -1

    def send(self, data: bytes | bytearray) -> None:
        """Queue bytes for the next flush()."""
        self._out += data

    @property
    def wants_write(self) -> bool:
        """Never: flush() hands everything over."""
        return False

    def flush(self) -> None:
        """Hand the queued bytes to the gateway; its answers wait for read()."""
        if self._out and not self.closed:
            self._in += self._gateway.receive(bytes(self._out))
            self._out.clear()

    def read(self) -> bytes:
        """The gateway's answers so far; GatewayError once it has closed and everything was read."""
        if self.closed:
            raise GatewayError("pipe closed")
        data = bytes(self._in)
        self._in.clear()
        if self._gateway.closed and not data:
            raise GatewayError("gateway closed the pipe")
        if self._gateway.closed:
            self.closed = True
        return data

    def close(self) -> None:
        """Close our end."""
        self.closed = True


class PipedSession:
    """An Http2Session whose connections are GatewayPipes to one mock gateway, and a clock the test moves."""

    def __init__(self, faults: Http2Faults, signer: TokenSigner | None = None, **cfg: Any) -> None:
        self.clock = [1000.0]
        self.record = MockRecord()
        self.state = FaultState()
        self.pipes: list[GatewayPipe] = []
        cfg.setdefault("host", "127.0.0.1")
        cfg.setdefault("port", 443)
        cfg.setdefault("topic", TOPIC)
        cfg.setdefault("backoff_initial", 0.05)

        def make_transport() -> Any:
            self.pipes.append(GatewayPipe(faults, self.state, self.record, self.clock))
            return self.pipes[-1]

        self.session = Http2Session(
            "default", AppConfig(**cfg), make_transport, logs.get("test"), signer=signer, default_topic=TOPIC
        )
        self.parser = JobParser({"default": ("http2", 4096, 5120)})
        self.resolved: list[tuple[Notification, Any]] = []

    def submit(self, tokens: list[str]) -> list[Notification]:
        """Queue one alert notification per token."""
        notes = [
            self.parser.parse(b'{"token":"%s","payload":{"aps":{"alert":"x"}}}' % t.encode())[0][0] for t in tokens
        ]
        self.session.submit(notes)
        return notes

    def steps(self, n: int, dt: float = 0.01) -> None:
        """Step the session ``n`` times, the clock advancing ``dt`` each time."""
        for _ in range(n):
            self.clock[0] += dt
            self.resolved += self.session.step(self.clock[0], True)

    def run_until(self, t: float, step: float = 0.05) -> None:
        """Step the session (socket always readable) with the clock advancing to ``t``."""
        while self.clock[0] < t:
            self.clock[0] = min(t, self.clock[0] + step)
            self.resolved += self.session.step(self.clock[0], True)
