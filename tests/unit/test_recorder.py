"""Recording outcomes into their batches' commits: record_all is record applied in order, with runs counted at once."""

from __future__ import annotations

from apnsd.config import AppConfig
from apnsd.core.jobs import JobParser, Notification
from apnsd.core.outcomes import DELIVERED, Kind, Outcome
from apnsd.store.layout import Commit
from apnsd.worker.recorder import Batch, OutcomeRecorder

TOKEN = "ab" * 32
GONE = Outcome(Kind.UNREGISTERED, 410, "Unregistered", 1_700_000_000_000)
DEAD = Outcome(Kind.DEAD, 400, "BadTopic")


def _batches(slices: list[Batch]) -> tuple[list[Batch], list[Notification]]:
    """Two batches of jobs for apps a and b, three of a then two of b in the first, four of a in the second."""
    parser = JobParser({"a": ("http2", 4096, 5120), "b": ("http2", 4096, 5120)})
    notes: list[Notification] = []
    batches = []
    for k, apps in enumerate((["a", "a", "a", "b", "b"], ["a"] * 4)):
        b = Batch(Commit("q", str(k)), slices=slices)
        raws = [
            b'{"token":"%s","app":"%s","payload":{"i":%d}}' % (TOKEN.encode(), a.encode(), i)
            for i, a in enumerate(apps)
        ]
        good, bad = parser.parse_many(raws, b)
        assert [] == bad
        b.unresolved = dict.fromkeys(good)
        b.remaining = len(good)
        batches.append(b)
        notes += good
    return batches, notes


def _state(batches: list[Batch]) -> list[tuple[object, ...]]:
    return [
        (b.remaining, dict(b.tally), len(b.unresolved), b.commit.dead, b.commit.unregistered, b.touched)
        for b in batches
    ]


def test_record_all_matches_record_one_at_a_time() -> None:
    """Mixed outcomes over two batches and two apps leave the same tallies, writes and completions as record."""
    recorder = OutcomeRecorder({"a": AppConfig(), "b": AppConfig()}, False)
    one_slices: list[Batch] = []
    all_slices: list[Batch] = []
    one, one_notes = _batches(one_slices)
    every, all_notes = _batches(all_slices)
    outcomes = [DELIVERED, DELIVERED, DEAD, DELIVERED, GONE, DELIVERED, DELIVERED, DELIVERED]  # not the last job

    done_one = [b for n, o in zip(one_notes, outcomes, strict=False) if (b := recorder.record(n, o, 5.0)) is not None]
    done_all = recorder.record_all(list(zip(all_notes, outcomes, strict=False)), 5.0)

    assert [one.index(b) for b in done_one] == [every.index(b) for b in done_all] == [0]
    assert _state(one) == _state(every)
    assert [one.index(b) for b in one_slices] == [every.index(b) for b in all_slices] == [0, 1]
    assert {("a", "delivered"): 2, ("a", "dead"): 1, ("b", "unregistered"): 1, ("b", "delivered"): 1} == dict(
        every[0].tally
    )


def test_record_all_completes_a_batch_on_its_last_delivery() -> None:
    """A run of deliveries that resolves a batch's last job returns it, counted once per app."""
    recorder = OutcomeRecorder({"a": AppConfig(), "b": AppConfig()}, False)
    batches, notes = _batches([])

    done = recorder.record_all([(n, DELIVERED) for n in notes], 1.0)

    assert [batches[0], batches[1]] == done
    assert [{"delivered": 5}, {"delivered": 4}] == [b.commit.counts for b in done]
