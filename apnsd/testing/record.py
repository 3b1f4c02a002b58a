"""What a mock gateway received and how it answered, shared by the binary and HTTP/2 mocks."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Received:
    """One notification as the mock gateway saw it, and its answer (200 / status / reason)."""

    token: str
    payload: bytes
    ident: str
    status: int
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    channel: str = ""  # a Live Activity broadcast's apns-channel-id (token is then "")


@dataclass
class MockRecord:
    """Thread-safe log of notifications, connections and the peak number of concurrent streams."""

    keep_payloads: bool = True
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    max_concurrent_seen: int = 0
    concurrency_violations: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, items: list[Received]) -> None:
        """Append answered notifications."""
        with self._lock:
            self.received.extend(items)

    def connected(self) -> None:
        """Count one completed TLS handshake."""
        with self._lock:
            self.connections += 1

    def streams(self, open_now: int, allowed: int) -> None:
        """Note the concurrent stream count after a new stream opened; flag it if over the limit."""
        with self._lock:
            self.max_concurrent_seen = max(self.max_concurrent_seen, open_now)
            if open_now > allowed:
                self.concurrency_violations += 1

    def accepted_tokens(self) -> Counter[str]:
        """How many times each token was accepted (status 200 / no error); broadcasts are not counted."""
        with self._lock:
            return Counter(r.token for r in self.received if r.status == 200 and not r.channel)

    def broadcasts(self) -> list[Received]:
        """The Live Activity broadcasts received, in order."""
        with self._lock:
            return [r for r in self.received if r.channel]

    def summary(self) -> dict[str, int]:
        """Counts for the CLI and tests."""
        with self._lock:
            accepted = sum(1 for r in self.received if r.status == 200)
            return {
                "received": len(self.received),
                "accepted": accepted,
                "rejected": len(self.received) - accepted,
                "connections": self.connections,
                "max_concurrent_streams_seen": self.max_concurrent_seen,
                "concurrency_violations": self.concurrency_violations,
            }
