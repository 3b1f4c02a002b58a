"""Reading back the jobs a binary window held by position (core/slim.py) from their batches' in-flight lists."""

from __future__ import annotations

import time
from collections.abc import Callable

from apnsd import logs
from apnsd.core.jobs import JobParser, Notification, Rejected
from apnsd.core.slim import Slim
from apnsd.errors import KeyTypeError, QueueError
from apnsd.store.queue import JobQueue
from apnsd.worker.recorder import Batch, OutcomeRecorder

LOST = "in_flight_job_lost"  # the dead-letter reason of a job that could not be read back


class ReadBack:
    """The delivery loop's ``core.slim.Hydrate``: one LRANGE per batch, each job parsed again as it was taken.

    A job that is gone from its list (an operator deleted the key, a failover lost it) or no longer validates is
    dead-lettered (its batch handed to ``completed`` when that completes it) and left out; None while Redis is
    unavailable, and nothing changes then."""

    def __init__(
        self,
        jq: JobQueue,
        parser: JobParser,
        recorder: OutcomeRecorder,
        log: logs.Logger,
        wrong_type: logs.OnceLogger,
        completed: Callable[[Batch | None], None],
    ) -> None:
        self.jq = jq
        self.parser = parser
        self.recorder = recorder
        self.log = log
        self.wrong_type = wrong_type
        self.completed = completed

    def __call__(self, slims: list[Slim]) -> list[list[Notification]] | None:
        """For each Slim, its notifications in order (fewer when some could not be read back); None: Redis down."""
        jobs = self._lists(slims)
        if jobs is None:
            return None
        wall = time.time()
        lost: dict[str, int] = {}  # batch id → jobs that could not be read back
        out = [self._notes(s, *jobs[id(s.batch)], wall, lost) for s in slims]
        if lost:
            self.log.error("in_flight_jobs_lost", batches=lost, note="dead-lettered: they could not be read back")
        return out

    def _lists(self, slims: list[Slim]) -> dict[int, tuple[int, list[bytes]]] | None:
        """For each batch the Slims belong to (by id()), the first position read and the jobs from there to the last
        one needed (one LRANGE of just that span); None while Redis is unavailable."""
        spans: dict[int, tuple[Batch, int, int]] = {}
        for s in slims:
            b: Batch = s.batch
            low, high = min(s.positions), max(s.positions)
            if id(b) in spans:
                _, was_low, was_high = spans[id(b)]
                low, high = min(low, was_low), max(high, was_high)
            spans[id(b)] = (b, low, high)
        jobs: dict[int, tuple[int, list[bytes]]] = {}
        try:
            for key, (b, low, high) in spans.items():
                try:
                    jobs[key] = (low, self.jq.batch_jobs(b.commit.queue, b.commit.batch_id, low, high))
                except KeyTypeError as exc:  # another type at the list's name: the jobs are gone
                    self.wrong_type.failed(str(exc), key=exc.key)
                    jobs[key] = (low, [])
        except QueueError as exc:
            self.log.warning("redis_unavailable_for_resend", error=str(exc))
            return None
        return jobs

    def _notes(self, s: Slim, first: int, listed: list[bytes], wall: float, lost: dict[str, int]) -> list[Notification]:
        """The notifications of one Slim from its batch's jobs (``listed``, from position ``first`` on); the others
        are dead-lettered (counted in ``lost``)."""
        b: Batch = s.batch
        notes: list[Notification] = []
        for p in s.positions:
            b.slimmed -= 1
            raw = listed[p - first] if p - first < len(listed) else None
            good, bad = self.parser.parse_many([raw], b) if raw is not None else ([], [])
            if len(good) == 1 and not bad and good[0].app == s.app:
                n = good[0]
                n.index, n.losses = p, s.losses
                b.unresolved[n] = None
                notes.append(n)
                continue
            for n in good:
                n.batch = None  # not in flight: this job is recorded once, below
            if raw is not None and len(bad) == 1 and not good:
                r = bad[0]  # it no longer validates (the configuration changed since it was taken)
            else:
                batch_id = b.commit.batch_id
                lost[batch_id] = lost.get(batch_id, 0) + 1
                how = "was gone from Redis" if raw is None else "changed in Redis while in flight"
                detail = f"job {p} of in-flight batch {batch_id} {how} when it had to be read back"
                r = Rejected(raw, LOST, detail, s.app)  # gone: a null job, nothing to requeue
            self.completed(self.recorder.reject(b, r, wall))
        return notes
