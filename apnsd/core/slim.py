"""Written notifications held by their place in Redis instead of as objects: the binary window's memory.

A binary connection's window holds every frame written in the last ``confirm_delay`` (0.3 s: some 60,000 at full
speed), and nearly all of them are only ever confirmed. Each job still lies in its batch's in-flight list in Redis
until the batch is committed, so the window can hold a job as its position in that list (4 bytes), and read it back
only in the rare case that it is needed again: named in an error response, or sent again after a lost connection.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from apnsd.core.jobs import Notification


class Holder(Protocol):
    """What a batch keeps of its notifications (``worker.recorder.Batch``): the ones held as objects, and how many
    are held as positions instead."""

    unresolved: dict[Notification, None]
    slimmed: int


class Slim:
    """Written notifications of one batch and app, in sending order, each held as its position in the batch.

    ``stamps`` holds their ``enqueued_at`` (for the latency metric) when each had one, else it is None; ``losses``
    is the connection losses each has ridden (see ``Session._lost``)."""

    __slots__ = ("app", "batch", "losses", "positions", "stamps")

    def __init__(self, batch: Any, app: str, losses: int, stamped: bool) -> None:
        self.batch = batch
        self.app = app
        self.losses = losses
        self.positions = array("i")
        self.stamps: array[float] | None = array("d") if stamped else None

    def __len__(self) -> int:
        return len(self.positions)

    def __repr__(self) -> str:
        return f"Slim(app={self.app!r}, notifications={len(self.positions)})"

    def split(self, count: int) -> Slim:
        """Remove the first ``count`` notifications into a Slim of their own (0 < count < len)."""
        head = Slim(self.batch, self.app, self.losses, self.stamps is not None)
        head.positions, self.positions = self.positions[:count], self.positions[count:]
        if self.stamps is not None:
            head.stamps, self.stamps = self.stamps[:count], self.stamps[count:]
        return head


Entry = Notification | Slim  # one entry of a window's older part: a notification kept whole, or a Slim
# Reads slimmed notifications back (the delivery loop, from Redis): for each Slim, its notifications in order; fewer
# when a job can no longer be sent (already recorded as such); None when they cannot be read now (Redis unavailable).
Hydrate = Callable[[list[Slim]], "list[list[Notification]] | None"]


def add(entries: deque[Entry], n: Notification) -> None:
    """Append ``n`` to ``entries`` as a position, joining the last Slim when it is of the same batch and kind."""
    last = entries[-1] if entries else None
    stamp = n.enqueued_at
    if (
        type(last) is not Slim
        or last.batch is not n.batch
        or last.losses != n.losses
        or (last.stamps is None) != (stamp is None)
    ):
        last = Slim(n.batch, n.app, n.losses, stamp is not None)
        entries.append(last)
    last.positions.append(n.index)
    if stamp is not None:  # then the Slim is stamped: it holds only notifications that had one
        last.stamps.append(stamp)  # type: ignore[union-attr]
    b: Holder = n.batch
    del b.unresolved[n]
    b.slimmed += 1


def count(entries: Iterable[Entry]) -> int:
    """How many notifications ``entries`` hold."""
    return sum(len(e) if type(e) is Slim else 1 for e in entries)
