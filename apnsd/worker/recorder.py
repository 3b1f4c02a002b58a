"""Turns notification outcomes into the Redis writes of their batch (dead, unregistered, retries, receipts)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from apnsd import metrics
from apnsd.config import AppConfig
from apnsd.core.jobs import Notification, Rejected, retry_job, single_job
from apnsd.core.outcomes import DELIVERED, Kind, Outcome
from apnsd.core.retry import RetryPolicy, decide
from apnsd.core.slim import Slim
from apnsd.store.queue import Commit

_DELIVERED = Kind.DELIVERED.value

_json = msgspec.json.encode
UNKNOWN_APP = "unknown"  # the metric label of a job that names an app not in the configuration


@dataclass(eq=False)
class Batch:
    """Jobs taken together from one queue; committed to Redis once every notification has an outcome."""

    commit: Commit
    remaining: int = 0
    tally: Counter[tuple[str, str]] = field(default_factory=Counter)
    reasons: dict[str, int] = field(
        default_factory=dict
    )  # dead-letter and unregistered reasons, for the batch log line
    # In taking order; keyed by the notification itself (it hashes by identity), no id() number per entry.
    unresolved: dict[Notification, None] = field(default_factory=dict)
    slimmed: int = 0  # unresolved notifications a binary window holds by position instead (core/slim.py)
    # The owning loop's list of batches resolved in part since its last slice (None: commit whole batches
    # only), and whether this batch is on it.
    slices: list[Batch] | None = None
    touched: bool = False


def dead_entry(
    raw: bytes | None,
    app: str | None,
    reason: str,
    status: int | None,
    detail: str,
    attempts: int,
    token: str | None,
    now: float,
    *,
    tokens: dict[str, str] | None = None,
    queue: str = "",
) -> bytes:
    """One dead-letter list element: why, when, and the raw job so it can be requeued (onto ``queue``, its lane); a
    job that is gone (``raw`` None) is null there, which ``apnsd dead requeue`` leaves alone.

    A fan-out job's rejected tokens share one entry (``tokens``: token → reason), holding the job once.
    """
    entry: dict[str, object] = {
        "reason": reason,
        "status": status,
        "detail": detail,
        "attempts": attempts,
        "app": app,
        "token": token,
        "time": round(now, 3),
        "job": None if raw is None else raw.decode("utf-8", "replace"),
    }
    if tokens is not None:
        entry["tokens"] = tokens
    if queue:
        entry["queue"] = queue
    return _json(entry)


def _job_id(raw: bytes) -> str:
    """The application's id of a job that failed validation, when it has a readable one."""
    try:
        obj = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # a job nested deeper than the decoder goes has no readable id
        return ""
    job_id = obj.get("id") if isinstance(obj, dict) else None
    return job_id if isinstance(job_id, str) else ""


def retry_policy(app: AppConfig) -> RetryPolicy:
    """An app's retry settings as the policy core/retry.py applies."""
    return RetryPolicy(
        app.retry_backoff,
        app.outage_backoff,
        app.outage_backoff_max,
        app.throttle_delay,
        app.retry_for,
        app.max_attempts,
    )


class OutcomeRecorder:
    """Applies retry policy and writes each outcome into its batch's pending commit."""

    def __init__(self, apps: dict[str, AppConfig], results: bool, rng: random.Random | None = None) -> None:
        self.apps = apps
        self.results = results
        self.rng = rng or random.Random()
        self.policies = {name: retry_policy(app) for name, app in apps.items()}

    def record(self, n: Notification, outcome: Outcome, now: float) -> Batch | None:
        """Record one outcome; returns the batch when it just became complete."""
        b: Batch = n.batch
        del b.unresolved[n]
        if outcome is DELIVERED and not self.results:  # the hot path: nothing to write but a count
            if n.enqueued_at is not None:
                metrics.LATENCY.labels(n.app).observe(max(0.0, now - n.enqueued_at))
            b.tally[(n.app, _DELIVERED)] += 1
            return self._done(b)
        try:
            return self._record(n, outcome, now)
        except Exception as exc:  # a bug must cost this one notification, never the loop recording it
            reason = f"internal_error:{type(exc).__name__}"
            detail = "recording the outcome failed"
            b.commit.dead.append(dead_entry(n.raw, n.app, reason, None, detail, 0, n.token, now, queue=b.commit.queue))
            b.reasons[reason] = b.reasons.get(reason, 0) + 1
            b.tally[(n.app, Kind.DEAD.value)] += 1
            return self._done(b)

    def record_all(self, resolved: list[tuple[Notification | Slim, Outcome]], now: float) -> list[Batch]:
        """Record outcomes in order (as ``record`` does each); returns the batches they completed, in order.

        Deliveries without receipts, the bulk of every answer, are counted per run of one batch: one tally
        update and one check for completion per run instead of per notification. A Slim (always a delivery)
        is counted whole.
        """
        done: list[Batch] = []
        if self.results:
            for n, outcome in resolved:
                completed = self.record_slim(n, now) if isinstance(n, Slim) else self.record(n, outcome, now)
                if completed is not None:
                    done.append(completed)
            return done
        run: Batch | None = None  # the batch of the current run of deliveries, and how many it has
        app = ""
        k = 0
        for n, outcome in resolved:
            if isinstance(n, Slim):
                if run is not None and self._delivered(run, app, k):
                    done.append(run)
                run = None
                completed = self.record_slim(n, now)
                if completed is not None:
                    done.append(completed)
                continue
            if outcome is DELIVERED:
                b: Batch = n.batch
                if b is not run or n.app != app:
                    if run is not None and self._delivered(run, app, k):
                        done.append(run)
                    run, app, k = b, n.app, 0
                del b.unresolved[n]
                if n.enqueued_at is not None:
                    metrics.LATENCY.labels(n.app).observe(max(0.0, now - n.enqueued_at))
                k += 1
                continue
            if run is not None:
                if self._delivered(run, app, k):
                    done.append(run)
                run = None
            completed = self.record(n, outcome, now)
            if completed is not None:
                done.append(completed)
        if run is not None and self._delivered(run, app, k):
            done.append(run)
        return done

    def record_slim(self, s: Slim, now: float) -> Batch | None:
        """Record the delivery of every notification of ``s``; returns its batch when that completed it."""
        b: Batch = s.batch
        k = len(s)
        b.slimmed -= k
        if s.stamps is not None:
            observe = metrics.LATENCY.labels(s.app).observe
            for at in s.stamps:
                observe(max(0.0, now - at))
        return b if self._delivered(b, s.app, k) else None

    def _delivered(self, b: Batch, app: str, k: int) -> bool:
        """Count ``k`` deliveries of one app in ``b``; True when that completed the batch."""
        b.tally[(app, _DELIVERED)] += k
        b.remaining -= k - 1  # the last one through _done, which completes or marks the batch
        return self._done(b) is not None

    def _record(self, n: Notification, outcome: Outcome, now: float) -> Batch | None:
        b: Batch = n.batch
        c = b.commit
        kind = outcome.kind
        gave_up = ""
        if kind is Kind.RETRY:
            policy = self.policies[n.app]
            d = decide(policy, outcome.status, outcome.reason, n.attempts, n.failing_since, n.expiration, now, self.rng)
            if d.at is None:
                outcome = Outcome(Kind.DEAD, outcome.status, outcome.reason, outcome.timestamp_ms)
                kind, gave_up = Kind.DEAD, d.gave_up
            else:
                c.scheduled[retry_job(n, d.at, now, d.counted)] = d.at
                metrics.RETRIED.labels(n.app, metrics.reason_label(outcome.reason)).inc()
        if kind is Kind.UNREGISTERED:
            (c.unregistered if n.channel is None else c.channels_gone)[n.token] = _json(
                {
                    "app": n.app,
                    "reason": outcome.reason,
                    "status": outcome.status,
                    "timestamp_ms": outcome.timestamp_ms,
                    "time": round(now, 3),
                }
            )
        elif kind is Kind.DEAD:
            # a fan-out's entry holds the job for its own token only, not every token's copy of the whole job
            job = single_job(n) if n.fanout else n.raw
            c.dead.append(
                dead_entry(
                    job, n.app, outcome.reason, outcome.status, gave_up, n.attempts + 1, n.token, now, queue=c.queue
                )
            )
        if kind is not Kind.DELIVERED and kind is not Kind.RETRY:
            metrics.FAILED.labels(self._label(n.app), metrics.reason_label(outcome.reason)).inc()
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
                    **({"apns_unique_id": n.unique_id} if n.unique_id else {}),
                }
            )
        if n.enqueued_at is not None and kind is Kind.DELIVERED:
            metrics.LATENCY.labels(n.app).observe(max(0.0, now - n.enqueued_at))
        b.tally[(n.app, kind.value)] += 1
        return self._done(b)

    def reject(self, b: Batch, r: Rejected, now: float) -> Batch | None:
        """Dead-letter a job (or the failed tokens of a fan-out) that failed validation."""
        b.commit.dead.append(
            dead_entry(r.raw, r.app, r.reason, None, r.detail, 0, r.token, now, tokens=r.tokens, queue=b.commit.queue)
        )
        if self.results:  # a receipt too, or an application waiting for this job's receipt waits forever
            job_id = _job_id(r.raw) if r.raw is not None else ""
            for token, reason in (r.tokens or {r.token or "": r.reason}).items():  # one per rejected token
                b.commit.results.append(
                    {
                        "id": job_id,
                        "apns_id": "",
                        "token": token,
                        "app": r.app or "",
                        "outcome": Kind.DEAD.value,
                        "status": "",
                        "reason": reason,
                        "time": f"{now:.3f}",
                    }
                )
        # label values come from the configuration only: a job's own unknown app counts as "unknown"
        app = self._label(r.app)
        n = len(r.tokens) if r.tokens else 1
        metrics.FAILED.labels(app, metrics.reason_label(r.reason)).inc(n)
        b.reasons[r.reason] = b.reasons.get(r.reason, 0) + n
        b.tally[(app, Kind.DEAD.value)] += n
        return self._done(b)

    def defer(self, n: Notification, at: float) -> Batch | None:
        """Park a notification whose send_at is still ahead in the scheduled set."""
        b: Batch = n.batch
        del b.unresolved[n]
        b.commit.scheduled[single_job(n)] = at
        b.tally[(n.app, "scheduled")] += 1
        return self._done(b)

    def requeue(self, n: Notification) -> Batch | None:
        """Return an unanswered notification to the front of its queue (at shutdown)."""
        b: Batch = n.batch
        del b.unresolved[n]
        b.commit.requeue.append(single_job(n))
        b.tally[(n.app, "returned")] += 1
        return self._done(b)

    def _label(self, app: str | None) -> str:
        """A job's app as a metric label: a configured name, else "unknown" (label values never come from jobs)."""
        return app if app in self.apps else UNKNOWN_APP

    def _done(self, b: Batch) -> Batch | None:
        b.remaining -= 1
        if b.remaining:
            if not b.touched and b.slices is not None:
                b.touched = True
                b.slices.append(b)
            return None
        b.commit.counts = _counts(b.tally, self._label)
        return b

    def split(self, touched: list[Batch]) -> list[Batch]:
        """The resolved part of each batch touched since the last slice, as partial commits: each takes the
        outcome writes recorded so far and leaves the batch in flight with only its unresolved jobs (a
        fan-out job's resolved tokens drop out of it). Batches completed meanwhile are left whole; the
        list is emptied."""
        parts: list[Batch] = []
        later: list[Batch] = []
        for b in touched:
            if b.slimmed:  # its list must stay as taken while a window holds positions in it: next slice
                later.append(b)
                continue
            b.touched = False
            if not b.remaining or not b.tally:
                continue
            c = b.commit
            keep = []
            for n in b.unresolved:
                keep.append(single_job(n))
                n.index = -1  # what stays in flight moves out of the list: no longer read back by position
            resolved = Commit(
                c.queue,
                c.batch_id,
                dead=c.dead,
                unregistered=c.unregistered,
                channels_gone=c.channels_gone,
                scheduled=c.scheduled,
                requeue=c.requeue,
                results=c.results,
                keep=keep,
            )
            part = Batch(resolved, tally=b.tally, reasons=b.reasons)
            part.commit.counts = _counts(b.tally, self._label)
            b.commit = Commit(c.queue, c.batch_id)
            b.tally, b.reasons = Counter(), {}
            parts.append(part)
        touched[:] = later
        return parts


def _counts(tally: Counter[tuple[str, str]], label: Callable[[str | None], str]) -> dict[str, int]:
    """Outcome counts by kind for the stats hash; the per-app counts go to the metrics now (``label`` keeps
    label values to configured app names)."""
    counts: Counter[str] = Counter()
    for (app, kind), k in tally.items():
        metrics.NOTIFICATIONS.labels(label(app), kind).inc(k)
        counts[kind] += k
    return dict(counts)
