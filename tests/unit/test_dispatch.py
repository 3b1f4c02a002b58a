"""The delivery loop's dispatch: the bulk of a batch goes straight to its session, the rest is decided one by one."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from apnsd.config import WorkerConfig
from apnsd.core.jobs import JobParser
from apnsd.gateway.session import State
from apnsd.store.queue import Commit
from apnsd.worker.delivery import DeliveryLoop
from apnsd.worker.handoff import Taken
from apnsd.worker.recorder import OutcomeRecorder

Q = "q"
PAYLOAD = {"aps": {"alert": "hi"}}


class NoCommits:
    """The part of a JobQueue the loop asks about before any commit."""

    def commits_partially(self, queue: str) -> bool:
        """Batches may be committed in parts."""
        return True

    def commit(self, c: Commit) -> None:
        """Never reached here: nothing is committed."""
        raise AssertionError("no commit expected")


def session(disabled: str | None = None) -> Any:
    """A stand-in for a binary session of app 'default': what dispatch reads, and its pending queue."""
    return SimpleNamespace(
        app="default",
        pending=deque(),
        disabled=disabled,
        suspended=None,
        state=State.DISCONNECTED,
        last_connect_error=None,
        pacer=SimpleNamespace(failures=0),
        cfg=SimpleNamespace(lane_window=100, mismatch_guard_park=60.0),
    )


@pytest.fixture
def make_loop() -> Iterator[Any]:
    """A single-lane loop over one stand-in session, its feeder never started."""
    loops: list[DeliveryLoop] = []

    def make(s: Any) -> DeliveryLoop:
        parser = JobParser({"default": ("binary", 2048, 5120)})
        d = DeliveryLoop(Q, {"default": s}, NoCommits(), parser, WorkerConfig(), OutcomeRecorder({}, False))  # type: ignore[arg-type]
        loops.append(d)
        return d

    yield make
    for d in loops:
        d.handoff.release()


def job(i: int, **options: Any) -> bytes:
    """A one-token job with the given delivery options."""
    return msgspec.json.encode({"token": f"{i:064x}", "payload": PAYLOAD, **options})


def test_plain_notifications_and_ones_with_a_later_expiration_are_queued_in_order_the_rest_decided(make_loop) -> None:
    """Plain jobs and one expiring later go to the session in batch order; an expired one is dead-lettered and one
    scheduled for later is parked, each once."""
    s = session()
    loop = make_loop(s)
    wall = time.time()
    raws = [job(1), job(2, expiration=int(wall) + 3600), job(3, expiration=1), job(4, send_at=wall + 3600), job(5)]

    loop._dispatch(Taken("1", raws, Q), time.monotonic(), wall)

    batch = s.pending[0].batch
    queued = [n.token_bytes[-1] for n in s.pending]
    dead = [msgspec.json.decode(d)["reason"] for d in batch.commit.dead]
    assert ([1, 2, 5], ["expired"], 1, 3) == (queued, dead, len(batch.commit.scheduled), batch.remaining)


def test_a_disabled_apps_notifications_are_dead_lettered_not_queued(make_loop) -> None:
    """An app that is disabled gets nothing queued: every notification is dead-lettered with the reason."""
    s = session(disabled="certificate expired")
    loop = make_loop(s)

    loop._dispatch(Taken("1", [job(1), job(2)], Q), time.monotonic(), time.time())

    reasons = [msgspec.json.decode(d)["reason"] for b in loop._ready for d in b.commit.dead]
    assert (0, ["app_disabled: certificate expired"] * 2) == (len(s.pending), reasons)
