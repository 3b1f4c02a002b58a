"""A thread that opens connections (TCP connect, TLS handshake) beside the delivery loop and hands each one over.

A binary gateway ends the connection on every error response, so at 1 % invalid tokens the client half of a
(resumed) TLS handshake is a large share of the delivery loop's work. OpenSSL's handshake runs in C with the GIL
released (cffi releases it around every call), so on this thread it overlaps the loop's framing and writing.

Ownership: the dialer thread owns a connection from ``Dialer.dial`` until it is handed over (``Dial.take``), the
session's thread after; a cancelled dial is closed by whichever side holds it then, never used.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from apnsd.errors import GatewayError

IDLE_EXIT = 2.0  # the thread ends after this long without a dial; the next dial starts it again
STOP_WAIT = 1.0  # stop(): longest wait for the thread to close what it holds and end
WAIT_MAX = 0.2  # longest select without a reason, so a stop or a cancel is seen promptly even without a wake-up


class Dialable(Protocol):
    """What the dialer needs of a connection (``TlsTransport``)."""

    handshake_deadline: float

    def start(self) -> None: ...
    def advance(self) -> bool: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...

    @property
    def wants_write(self) -> bool: ...


_DIALING, _DONE, _CANCELLED, _TAKEN = range(4)
T = TypeVar("T", bound=Dialable)


class Dial(Generic[T]):
    """One connect in progress on the dialer thread; its ``fileno`` becomes readable once it has ended."""

    __slots__ = ("_lock", "_make", "_r", "_state", "_w", "error", "transport")

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._state = _DIALING
        self._r, self._w = os.pipe()
        self.transport: T | None = None  # set on the dialer thread; the session's once taken
        self.error: GatewayError | None = None  # why the connect failed

    def fileno(self) -> int:
        """Readable once the connect has ended (established or failed): the session's selector watches it."""
        return self._r

    @property
    def ended(self) -> bool:
        """True once take() has a result to give."""
        return self._state == _DONE

    def take(self) -> tuple[T | None, GatewayError | None]:
        """The ended connect's result, moving the connection to the caller's thread: (transport, None) or
        (None, error); (None, None) while still dialing or once taken or cancelled."""
        with self._lock:
            if self._state != _DONE:
                return None, None
            self._state = _TAKEN
        self._release()
        return (None, self.error) if self.error is not None else (self.transport, None)

    def cancel(self) -> None:
        """The session no longer wants this connection: closed now if it was handed over, else by the dialer."""
        with self._lock:
            state = self._state
            if state in (_CANCELLED, _TAKEN):
                return
            self._state = _CANCELLED
        if state == _DONE and self.transport is not None:
            self.transport.close()  # ended but not taken: the dialer let go of it, the caller holds it now
        if state != _DIALING:
            self._release()  # while dialing, the dialer releases the pipe when it sees the cancel

    # --- on the dialer thread ------------------------------------------------------------------------

    @property
    def _cancelled(self) -> bool:
        return self._state == _CANCELLED

    def _begin(self) -> bool:
        """Create and start the connection; True while it is in progress (False: the dial has ended)."""
        if self._cancelled:
            self._end(None)
            return False
        try:
            self.transport = self._make()
            self.transport.start()
        except Exception as exc:
            self._end(_failure(exc))
            return False
        return not self._step()

    def _step(self) -> bool:
        """Advance the handshake; True once the dial has ended (established, failed or cancelled)."""
        t = self.transport
        if self._cancelled or t is None:
            self._end(None)
            return True
        try:
            if not t.advance():
                return False
        except Exception as exc:
            self._end(_failure(exc))
            return True
        self._end(None)
        return True

    def _end(self, error: GatewayError | None) -> None:
        """Hand the result over and wake the session; a cancelled dial's connection is closed instead."""
        with self._lock:
            cancelled = self._state == _CANCELLED
            if not cancelled:
                self.error = error
                self._state = _DONE
                # Inside the lock: once DONE, the session may take the dial and close this pipe at any moment.
                try:
                    os.write(self._w, b"\0")
                except OSError:
                    pass
        if cancelled:
            if self.transport is not None:
                self.transport.close()
            self._release()

    def _abandon(self) -> None:
        """The dialer is stopping: close the connection; the session learns that this connect failed."""
        if self.transport is not None:
            self.transport.close()
        self._end(GatewayError("connect abandoned: the dialer stopped"))

    def _release(self) -> None:
        for fd in (self._r, self._w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._r = self._w = -1


def _failure(exc: Exception) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    return GatewayError(f"connect failed: {type(exc).__name__}: {exc}")  # never a dead thread, never a traceback


class Dialer:
    """One thread (a daemon's: its binary sessions share it), started on the first dial, ending after IDLE_EXIT
    without one, or at stop()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the fields below
        self._fresh: deque[Dial[Any]] = deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake_w = -1  # the running thread's wake-up pipe (its own read end), -1 while no thread runs

    def dial(self, make: Callable[[], T]) -> Dial[T]:
        """Open a connection made by ``make`` on the dialer thread; the returned Dial hands it over once done."""
        d = Dial(make)
        with self._lock:
            self._fresh.append(d)
            self._stopping = False
            if self._thread is None:
                wake_r, self._wake_w = os.pipe()
                os.set_blocking(wake_r, False)
                os.set_blocking(self._wake_w, False)
                self._thread = threading.Thread(target=self._run, args=(wake_r,), name="dialer", daemon=True)
                self._thread.start()
            self._wake()
        return d

    def stop(self, timeout: float = STOP_WAIT) -> bool:
        """Close every connection still being dialled (each one's session learns its connect failed) and end the
        thread, waiting at most ``timeout``; True once it has ended."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            self._wake()
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        t = self._thread
        return t is not None and t.is_alive()

    def cancel(self, d: Dial[Any]) -> None:
        """Cancel ``d`` and wake the thread so that it closes the connection at once."""
        d.cancel()
        with self._lock:
            self._wake()

    def _wake(self) -> None:
        """Wake the thread (the caller holds the lock, so the pipe cannot be closed meanwhile)."""
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass  # full: the thread is woken already

    def _run(self, wake_r: int) -> None:
        active: list[Dial[Any]] = []
        fresh: list[Dial[Any]] = []
        idle_since = time.monotonic()
        while True:
            with self._lock:
                fresh = list(self._fresh)
                self._fresh.clear()
                if self._stopping or (not fresh and not active and time.monotonic() - idle_since >= IDLE_EXIT):
                    self._thread = None
                    os.close(self._wake_w)
                    self._wake_w = -1
                    break
            active += [d for d in fresh if d._begin()]
            fresh = []
            ready = _wait(wake_r, active)
            now = time.monotonic()
            active = [d for d in active if not (_due(d, ready, now) and d._step())]
            if active:
                idle_since = now
        os.close(wake_r)
        for d in active + fresh:
            d._abandon()


def _wait(wake_r: int, active: list[Dial[Any]]) -> set[int]:
    """Sleep until a connection can go on, a dial or cancel arrives, or a handshake's deadline; the ready
    descriptors."""
    rlist, wlist = [wake_r], []
    now = time.monotonic()
    timeout = WAIT_MAX if active else IDLE_EXIT
    for d in active:
        t = d.transport
        assert t is not None
        fd = t.fileno()
        rlist.append(fd)
        if t.wants_write:
            wlist.append(fd)
        timeout = min(timeout, t.handshake_deadline - now)
    r, w, _ = select.select(rlist, wlist, [], max(0.0, timeout))
    if wake_r in r:
        try:
            while os.read(wake_r, 4096):
                pass
        except BlockingIOError:
            pass
    return set(r) | set(w)


def _due(d: Dial[Any], ready: set[int], now: float) -> bool:
    """Whether a dial in progress must be stepped: its socket is ready, its deadline passed, or it was cancelled."""
    t = d.transport
    return d._cancelled or t is None or now >= t.handshake_deadline or t.fileno() in ready
