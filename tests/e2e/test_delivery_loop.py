"""A delivery loop's threads end to end: a feeder that dies takes its loop down, and the daemon notices."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apnsd.store.queue import JobQueue
from tests.support.jobs import LOG, good_tokens, job, push_all, run_drained


def events_after(mark: int) -> list[dict[str, Any]]:
    """The JSON log events written after position ``mark`` of the session log."""
    return [json.loads(line) for line in LOG.getvalue()[mark:].splitlines() if line.startswith("{")]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the loop re-raises, by design
def test_a_feeder_that_dies_stops_the_daemon_as_a_dead_loop_does(jq, http2_mock, make_config, monkeypatch):
    """The feeder raises an unexpected exception: logged, the loop dies of it, the daemon exits 1, jobs stay queued."""
    mock = http2_mock()
    tokens = good_tokens(50, seed=41)
    push_all(jq, [job(t) for t in tokens])

    def broken_take(self: JobQueue, queue: str, count: int, field: str) -> Any:
        raise RuntimeError("a bug in take")

    monkeypatch.setattr(JobQueue, "take", broken_take)
    mark = len(LOG.getvalue())

    assert 1 == run_drained(make_config(mock), timeout=30)

    events = [(e["event"], e["level"]) for e in events_after(mark)]
    assert ("feeder_crashed", "error") in events
    assert ("delivery_loop_crashed", "error") in events
    assert ("delivery_loop_died", "error") in events
    assert len(tokens) == jq.depth("apnsd:queue")
    assert 0 == mock.record.connections
