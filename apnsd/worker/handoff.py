"""The one meeting point of a queue's three threads: taken batches, posted calls, room to take, wake-up.

Thread protocol (besides the ``LoopStatus`` value the loop publishes, this is all a loop shares):

* The **feeder** thread takes batches from Redis. Before each take it waits for room
  (``wait_for_room``; a queue's first lane may also take into the reserve, ``full(reserve=True)``);
  it names the batch in ``held`` before taking it and ``give``s each non-empty batch, all inside
  ``taking()``, which ends the feeder once the hand-over is closed.
* The **loop** thread owns the sessions and everything they hold. It pops ``batches``, runs the
  ``posted`` calls, counts what it parses (``parsed``) and commits (``resolved``; a committed
  batch leaves ``held``), publishes its sessions' ``backlog`` and wakes a feeder that waits for
  room (``wake_feeder``). It watches ``fileno()`` in its select.
* Any other thread (the daemon) ``post``s calls to run on the loop thread instead of touching
  sessions, and reads ``held`` (a copy) for its orphan sweep.
* Stopping: the loop calls ``close()``, which returns once no take is on its way out of Redis:
  from then on every batch this process took is in ``batches`` or already with the loop.

Each ``give`` and ``post`` writes one byte to the wake-up pipe; the loop empties it after its
select wakes and reads the queues on its next turn, so nothing handed over goes unnoticed.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

IDLE_WAIT = 0.2  # longest a thread sleeps without a reason, so stop flags are seen promptly
# Taken-but-unsent work the feeder may run ahead of the sessions, in batches. Two keep every connection fed
# (a take is a millisecond or two; a batch is 10-20 ms of sending) at 50-100 ms round trips as on loopback;
# each batch more only parks ~1 MB of notifications in memory.
BACKLOG_BATCHES = 2


@dataclass
class Taken:
    """A batch handed from the feeder to the loop: its in-flight batch_id, the raw jobs, and the lane they came from."""

    batch_id: str
    raws: list[bytes]
    queue: str = ""  # the list (lane key) the jobs were taken from; empty: the loop's queue
    ahead: bool = False  # from the first of several lanes, or the starvation guard's share: jumps the backlog
    listed: bool = False  # in flight as a list of its own, in this order (store.queue.JobQueue.take)


class Handoff:
    """What a queue's feeder, its delivery loop and the daemon share; see the module docstring."""

    def __init__(self, max_in_flight: int, batch_size: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_backlog = BACKLOG_BATCHES * batch_size
        self.batches: deque[Taken] = deque()  # feeder → loop
        self.posted: deque[Callable[[], None]] = deque()  # any thread → loop
        self.held: set[str] = set()  # in-flight batch ids this process holds, from take until commit
        self.room = threading.Condition()  # guards the counts below and wakes a feeder waiting for room
        self.in_flight = 0  # notifications parsed and not yet committed (written by the loop)
        self.unsent = 0  # raw jobs handed over and not yet parsed
        self.backlog = 0  # notifications waiting in the sessions' queues (published by the loop)
        self.feeder_waiting = False
        self.ahead_given = 0  # batches given that jump the backlog so far: the loop's campaign work yields to new ones
        self.closed = threading.Event()
        self._taking = threading.Lock()  # held by the feeder from its closed check until the batch is given
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._pipe_lock = threading.Lock()  # a wake-up never writes to a pipe release() is closing

    def full(self, reserve: bool = False) -> bool:
        """True when the feeder should wait: too much in flight, or enough taken but not yet sent.

        The second bound keeps memory flat on HTTP/2, where only the streams the server allows are
        on the wire: taking far ahead of them would just park notifications in memory. ``reserve``:
        the bounds for a queue's first lane, which may go as far again, so that a campaign filling the
        room never keeps an urgent job in Redis until a whole batch of it has been sent.
        """
        factor = 2 if reserve else 1
        return self.in_flight >= factor * self.max_in_flight or self.unsent + self.backlog >= factor * self.max_backlog

    # --- feeder side ---------------------------------------------------------------------------

    def wait_for_room(self) -> None:
        """Block while full (re-checking every IDLE_WAIT), or until the hand-over closes."""
        with self.room:
            while self.full() and not self.closed.is_set():
                self.feeder_waiting = True
                self.room.wait(IDLE_WAIT)
            self.feeder_waiting = False

    @contextmanager
    def taking(self) -> Iterator[bool]:
        """One take: yields False once closed (the feeder then stops); ``close()`` waits for it to end."""
        with self._taking:
            yield not self.closed.is_set()

    def give(self, taken: Taken) -> None:
        """Queue a raw batch for the loop and wake it.

        Parsing happens on the loop's thread, not here: the feeder then mostly waits on Redis
        with the GIL released, instead of holding it for milliseconds while the loop needs it.
        """
        with self.room:
            self.unsent += len(taken.raws)
        self.batches.append(taken)
        if taken.ahead:
            self.ahead_given += 1  # after the append (only this thread writes it): never counted before it is there
        self._wake()

    # --- any thread ----------------------------------------------------------------------------

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop's thread (the only one allowed to touch its sessions)."""
        self.posted.append(fn)
        self._wake()

    def _wake(self) -> None:
        with self._pipe_lock:
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    # --- loop side -----------------------------------------------------------------------------

    def fileno(self) -> int:
        """The wake-up pipe's read end, for the loop's select."""
        return self._wake_r

    def release(self) -> None:
        """The loop is done: close the wake-up pipe (wake-ups after this are dropped)."""
        with self._pipe_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    def drain_wakeups(self) -> None:
        """Empty the wake-up pipe (its bytes only say "look at the queues")."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def run_posted(self) -> None:
        """Run every call posted so far, in order."""
        posted = self.posted
        while posted:
            posted.popleft()()

    def parsed(self, raws: int, notifications: int) -> None:
        """``raws`` handed-over jobs became ``notifications`` in flight."""
        with self.room:
            self.in_flight += notifications
            self.unsent -= raws
            self.backlog += notifications  # until the loop publishes the exact figure in wake_feeder

    def resolved(self, notifications: int) -> None:
        """Committed notifications leave the in-flight count, which may make room for the feeder."""
        with self.room:
            self.in_flight -= notifications
            self.room.notify_all()

    def wake_feeder(self, backlog: int) -> None:
        """Publish the sessions' backlog; wake a feeder that waits for room if there is some now."""
        self.backlog = backlog
        if self.feeder_waiting and not self.full():
            with self.room:
                self.room.notify_all()

    def close(self) -> None:
        """Stop the feeder taking; returns once no take is in progress (every taken batch is given)."""
        self.closed.set()
        with self.room:
            self.room.notify_all()
        with self._taking:
            pass  # the barrier: a take that began before ``closed`` was set has handed its batch over
