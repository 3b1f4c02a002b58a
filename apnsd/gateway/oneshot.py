"""One notification straight to the gateway through an app's own session (no Redis): for `send` and `check --probe`."""

from __future__ import annotations

import select
import time
from dataclasses import dataclass
from typing import Any

from apnsd.core.jobs import Notification
from apnsd.core.outcomes import Outcome
from apnsd.gateway.session import Session


@dataclass(frozen=True)
class OneShot:
    """What became of one notification: the gateway's answer, or why there was none."""

    outcome: Outcome | None
    apns_id: str
    round_trip: float  # seconds from the first connect attempt to the answer (or the failure)
    connect_time: float | None  # seconds the TCP + TLS connect took, when it succeeded
    error: str = ""


class _Recorder:
    """Stands in for a session's logger: keeps each event for the caller and passes it on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.times: dict[str, float] = {}  # event → monotonic time it was first logged

    def bind(self, **kw: Any) -> _Recorder:
        """Loggers may be re-bound; the recorder stays the same."""
        return self

    def _log(self, level: str, event: str, **kw: Any) -> None:
        self.events.append((event, kw))
        self.times.setdefault(event, time.monotonic())
        getattr(self.inner, level)(event, **kw)

    def debug(self, event: str, **kw: Any) -> None:
        """Debug line."""
        self._log("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        """Info line."""
        self._log("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        """Warning line."""
        self._log("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        """Error line."""
        self._log("error", event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        """Error line with the current exception."""
        self._log("exception", event, **kw)

    def last(self, event: str, key: str) -> str:
        """The ``key`` field of the latest ``event``, or ''."""
        return next((str(kw.get(key, "")) for ev, kw in reversed(self.events) if ev == event), "")


def send_one(session: Session, note: Notification, timeout: float, keep_open: bool = False) -> OneShot:
    """Connect, send ``note``, wait for its answer; never retries a failed connect or a lost connection.

    ``keep_open`` leaves the connection up for the caller's next request (closed on failure all the same).
    """
    log = session.log if isinstance(session.log, _Recorder) else _Recorder(session.log)
    session.log = log
    session.watch_answers = False  # report the gateway's verdict, even a refused credential, instead of parking it
    session.standby_target = 0  # one request: no second connection
    answered = False
    session.submit([note])
    start = time.monotonic()
    deadline = start + timeout
    readable = False
    try:
        while True:
            now = time.monotonic()
            resolved = session.step(now, readable)
            connected_at = log.times.get("connected")
            if resolved:
                outcome = resolved[0][1]
                answered = True
                return OneShot(outcome, note.apns_id, time.monotonic() - start, _since(start, connected_at))
            if session.last_connect_error:
                return OneShot(None, note.apns_id, now - start, None, session.last_connect_error)
            if note.losses:
                cause = log.last("disconnected", "reason") or "connection lost"
                # TLS 1.3 finishes the client's handshake before the server has judged its certificate:
                # a rejection then arrives as an alert or a reset on the first read.
                hint = "; a gateway that drops a new connection unanswered has usually rejected the client certificate"
                return OneShot(
                    None, note.apns_id, now - start, _since(start, connected_at), f"{cause} before any answer{hint}"
                )
            if now >= deadline:
                return OneShot(
                    None, note.apns_id, now - start, _since(start, connected_at), f"no answer within {timeout:.0f} s"
                )
            watched = session.watched()
            wait = max(0.0, min(deadline, session.deadline(now)) - now)
            if not watched:
                time.sleep(min(wait, 0.05))
                readable = False
                continue
            r, _, _ = select.select([fd for fd, _ in watched], [fd for fd, out in watched if out], [], min(wait, 0.05))
            readable = bool(r)
    finally:
        if not (keep_open and answered):
            session.close("done")


def _since(start: float, at: float | None) -> float | None:
    return None if at is None else at - start
