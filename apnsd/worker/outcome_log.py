"""Turns notification outcomes into the Redis writes of their batch (dead, unregistered, retries, receipts)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from apnsd import metrics
from apnsd.config import AppConfig
from apnsd.core.jobs import Notification, Rejected, retry_job, single_job
from apnsd.core.outcomes import DELIVERED, Kind, Outcome
from apnsd.core.pacing import retry_delay
from apnsd.store.queue import Commit

_DELIVERED = Kind.DELIVERED.value

_json = msgspec.json.encode


@dataclass(eq=False)
class Batch:
    """Jobs taken together from one queue; committed to Redis once every notification has an outcome."""

    commit: Commit
    remaining: int = 0
    tally: Counter[tuple[str, str]] = field(default_factory=Counter)
    reasons: dict[str, int] = field(
        default_factory=dict
    )  # dead-letter and unregistered reasons, for the batch log line
    unresolved: dict[int, Notification] = field(default_factory=dict)  # by id(), in taking order
    # The owning loop's list of batches resolved in part since its last slice (None: commit whole batches
    # only), and whether this batch is on it.
    slices: list[Batch] | None = None
    touched: bool = False


def dead_entry(
    raw: bytes,
    app: str | None,
    reason: str,
    status: int | None,
    detail: str,
    attempts: int,
    token: str | None,
    now: float,
) -> bytes:
    """One dead-letter list element: why, when, and the raw job so it can be requeued."""
    return _json(
        {
            "reason": reason,
            "status": status,
            "detail": detail,
            "attempts": attempts,
            "app": app,
            "token": token,
            "time": round(now, 3),
            "job": raw.decode("utf-8", "replace"),
        }
    )


def _job_id(raw: bytes) -> str:
    """The application's id of a job that failed validation, when it has a readable one."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return ""
    job_id = obj.get("id") if isinstance(obj, dict) else None
    return job_id if isinstance(job_id, str) else ""


class OutcomeRecorder:
    """Applies retry policy and writes each outcome into its batch's pending commit."""

    def __init__(self, apps: dict[str, AppConfig], results: bool, rng: random.Random | None = None) -> None:
        self.apps = apps
        self.results = results
        self.rng = rng or random.Random()

    def record(self, n: Notification, outcome: Outcome, now: float) -> Batch | None:
        """Record one outcome; returns the batch when it just became complete."""
        b: Batch = n.batch
        del b.unresolved[id(n)]
        if outcome is DELIVERED and not self.results:  # the hot path: nothing to write but a count
            if n.enqueued_at is not None:
                metrics.LATENCY.labels(n.app).observe(max(0.0, now - n.enqueued_at))
            b.tally[(n.app, _DELIVERED)] += 1
            return self._done(b)
        c = b.commit
        kind = outcome.kind
        if kind is Kind.RETRY:
            app = self.apps[n.app]
            if n.attempts + 1 >= app.max_attempts:
                outcome = Outcome(Kind.DEAD, outcome.status, outcome.reason, outcome.timestamp_ms)
                kind = Kind.DEAD
            else:
                at = now + retry_delay(n.attempts, app.retry_backoff, self.rng)
                c.scheduled[retry_job(n, at)] = at
                metrics.RETRIED.labels(n.app, outcome.reason).inc()
        if kind is Kind.UNREGISTERED:
            c.unregistered[n.token] = _json(
                {
                    "app": n.app,
                    "reason": outcome.reason,
                    "status": outcome.status,
                    "timestamp_ms": outcome.timestamp_ms,
                    "time": round(now, 3),
                }
            )
        elif kind is Kind.DEAD:
            c.dead.append(dead_entry(n.raw, n.app, outcome.reason, outcome.status, "", n.attempts + 1, n.token, now))
        if kind is not Kind.DELIVERED and kind is not Kind.RETRY:
            metrics.FAILED.labels(n.app, outcome.reason).inc()
            b.reasons[outcome.reason] = b.reasons.get(outcome.reason, 0) + 1
        if self.results:
            c.results.append(
                {
                    "id": n.job_id or "",
                    "apns_id": n.apns_id,
                    "token": n.token,
                    "app": n.app,
                    "outcome": kind.value,
                    "status": str(outcome.status or ""),
                    "reason": outcome.reason,
                    "time": f"{now:.3f}",
                }
            )
        if n.enqueued_at is not None and kind is Kind.DELIVERED:
            metrics.LATENCY.labels(n.app).observe(max(0.0, now - n.enqueued_at))
        b.tally[(n.app, kind.value)] += 1
        return self._done(b)

    def reject(self, b: Batch, r: Rejected, now: float) -> Batch | None:
        """Dead-letter a job (or one token of it) that failed validation."""
        b.commit.dead.append(dead_entry(r.raw, r.app, r.reason, None, r.detail, 0, r.token, now))
        if self.results:  # a receipt too, or an application waiting for this job's receipt waits forever
            b.commit.results.append(
                {
                    "id": _job_id(r.raw),
                    "apns_id": "",
                    "token": r.token or "",
                    "app": r.app or "",
                    "outcome": Kind.DEAD.value,
                    "status": "",
                    "reason": r.reason,
                    "time": f"{now:.3f}",
                }
            )
        metrics.FAILED.labels(r.app or "unknown", r.reason).inc()
        b.reasons[r.reason] = b.reasons.get(r.reason, 0) + 1
        b.tally[(r.app or "unknown", Kind.DEAD.value)] += 1
        return self._done(b)

    def defer(self, n: Notification, at: float) -> Batch | None:
        """Park a notification whose send_at is still ahead in the scheduled set."""
        b: Batch = n.batch
        del b.unresolved[id(n)]
        b.commit.scheduled[single_job(n)] = at
        b.tally[(n.app, "scheduled")] += 1
        return self._done(b)

    def give_back(self, n: Notification) -> Batch | None:
        """Return an unanswered notification to the front of its queue (at shutdown)."""
        b: Batch = n.batch
        del b.unresolved[id(n)]
        b.commit.requeue.append(single_job(n))
        b.tally[(n.app, "returned")] += 1
        return self._done(b)

    def _done(self, b: Batch) -> Batch | None:
        b.remaining -= 1
        if b.remaining:
            if not b.touched and b.slices is not None:
                b.touched = True
                b.slices.append(b)
            return None
        b.commit.counts = _counts(b.tally)
        return b

    def split(self, touched: list[Batch]) -> list[Batch]:
        """The resolved part of each batch touched since the last slice, as partial commits: each takes the
        outcome writes recorded so far and leaves the batch in flight with only its unresolved jobs (a
        fan-out job's resolved tokens drop out of it). Batches completed meanwhile are left whole; the
        list is emptied."""
        parts: list[Batch] = []
        for b in touched:
            b.touched = False
            if not b.remaining or not b.tally:
                continue
            c = b.commit
            keep = [single_job(n) for n in b.unresolved.values()]
            part = Batch(
                Commit(c.queue, c.field, c.dead, c.unregistered, c.scheduled, c.requeue, c.results, keep=keep),
                tally=b.tally,
                reasons=b.reasons,
            )
            part.commit.counts = _counts(b.tally)
            b.commit = Commit(c.queue, c.field)
            b.tally, b.reasons = Counter(), {}
            parts.append(part)
        touched.clear()
        return parts


def _counts(tally: Counter[tuple[str, str]]) -> dict[str, int]:
    """Outcome counts by kind for the stats hash; the per-app counts go to the metrics now."""
    counts: Counter[str] = Counter()
    for (app, kind), k in tally.items():
        metrics.NOTIFICATIONS.labels(app, kind).inc(k)
        counts[kind] += k
    return dict(counts)
