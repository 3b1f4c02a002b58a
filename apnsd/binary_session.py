"""The legacy binary protocol over one connection: stream frames, confirm by silence, resend after errors."""

from __future__ import annotations

from collections import deque

from apnsd import binary
from apnsd.jobs import Notification
from apnsd.outcomes import DELIVERED, binary_outcome
from apnsd.session import Resolved, Session

ID_MOD = 1 << 32


class BinarySession(Session):
    """Binary APNs: silence means success, so a notification is delivered once ``confirm_delay`` passes
    without an error response; an error names the failed one, and everything after it is sent again."""

    protocol = "binary"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._window: deque[tuple[int, float, Notification]] = deque()
        self._next_id = 1
        self._rx = bytearray()

    def on_connected(self, now: float) -> None:
        """Start identifiers afresh on each connection."""
        self._next_id = 1
        self._rx.clear()

    def send_pending(self, now: float) -> None:
        """Encode every pending notification and hand them to the transport in one write."""
        if self.rotating or not self.pending or self.transport is None:
            return
        pending, window, encode = self.pending, self._window, binary.encode_frame
        ident = self._next_id
        frames = []
        while pending:
            n = pending.popleft()
            frames.append(encode(n.token_bytes, n.payload, ident, n.expiration or 0, n.priority or 10))
            window.append((ident, now, n))
            ident = (ident + 1) % ID_MOD
        self._next_id = ident
        data = b"".join(frames)
        self.transport.send(data)
        self.log.debug("batch_written", notifications=len(frames), bytes=len(data))

    def on_bytes(self, data: bytes, now: float) -> Resolved:
        """Parse error responses; resolve the named notification and those before it."""
        self._rx += data
        out: Resolved = []
        while len(self._rx) >= binary.ERROR_RESPONSE_SIZE:
            err = binary.parse_error_response(bytes(self._rx[:binary.ERROR_RESPONSE_SIZE]))
            del self._rx[:binary.ERROR_RESPONSE_SIZE]
            out += self._on_error(err)
        return out

    def _on_error(self, err: binary.ErrorResponse) -> Resolved:
        window = self._window
        out: Resolved = []
        if not window:
            self.log.warning("error_response_late", status=err.status, identifier=err.identifier)
            return out
        idx = (err.identifier - window[0][0]) % ID_MOD
        if idx >= len(window):
            # The named notification was confirmed already (or never ours): everything still in the
            # window came after it, so the gateway discarded all of it and it must all be resent.
            self.log.warning("error_response_late", status=err.status, identifier=err.identifier, unconfirmed=len(window))
            self._lost_cause = f"error response {err.status}"
            return out
        for _ in range(idx):
            out.append((window.popleft()[2], DELIVERED))
        outcome = binary_outcome(err.status)
        if err.status == 10:
            # Shutdown names the last notification processed, which therefore succeeded.
            out.append((window.popleft()[2], DELIVERED))
        else:
            n = window.popleft()[2]
            out.append((n, outcome))
            self.log.info("error_response", status=err.status, reason=outcome.reason, notification=self.describe(n),
                          outcome=outcome.kind.value, resend=len(window))
        self._lost_cause = f"error response {err.status} ({outcome.reason})"
        return out

    def on_timer(self, now: float) -> Resolved:
        """Confirm notifications that stayed unanswered for ``confirm_delay``."""
        window, cutoff = self._window, now - self.cfg.confirm_delay
        out: Resolved = []
        while window and window[0][1] <= cutoff:
            out.append((window.popleft()[2], DELIVERED))
        return out

    def timer_deadline(self, now: float) -> float:
        """When the oldest unconfirmed notification will be confirmed."""
        return self._window[0][1] + self.cfg.confirm_delay if self._window else now + 3600.0

    def unanswered_count(self) -> int:
        """Written but not yet confirmed."""
        return len(self._window)

    def take_unanswered(self) -> list[Notification]:
        """Empty the window, oldest first."""
        notes = [n for _, _, n in self._window]
        self._window.clear()
        return notes
