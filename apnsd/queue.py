"""The only Redis user: take batches into in-flight storage, commit outcomes, heartbeats, recovery."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis

from apnsd.errors import QueueError

# Move up to ARGV[1] jobs from the consuming (right) end of the queue into one field of this worker's
# in-flight hash, in one atomic step, so no job ever lives only in process memory.
_TAKE = """
local jobs = redis.call('RPOP', KEYS[1], ARGV[1])
if not jobs then return {} end
redis.call('HSET', KEYS[2], ARGV[2], cmsgpack.pack(jobs))
return jobs
"""

# Return a dead worker's in-flight jobs to the consuming end of the queue, oldest first, and only
# if its heartbeat is still gone: the check and the move are one atomic step, so two workers racing
# to recover the same dead worker move each job exactly once.
_RECOVER = """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local fields = redis.call('HKEYS', KEYS[2])
table.sort(fields, function(a, b) return tonumber(a) < tonumber(b) end)
local n = 0
for i = #fields, 1, -1 do
  local jobs = cmsgpack.unpack(redis.call('HGET', KEYS[2], fields[i]))
  for j = #jobs, 1, -1 do
    redis.call('RPUSH', KEYS[3], jobs[j])
    n = n + 1
  end
end
redis.call('DEL', KEYS[2])
return n
"""

# The jobs of one in-flight batch, unpacked by Redis so that they come back as the bytes that were taken
# (msgpack str entries decoded in Python would be text, and not every job is valid UTF-8).
_CLAIM = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then return {} end
return cmsgpack.unpack(held)
"""

# Move due scheduled jobs (score <= now) to the consuming end of their queue, at most ARGV[2] at once.
# The latest-due is pushed first, so the earliest-due ends up rightmost and is taken first.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due == 0 then return 0 end
redis.call('ZREM', KEYS[1], unpack(due))
for i = #due, 1, -1 do redis.call('RPUSH', KEYS[2], due[i]) end
return #due
"""


@dataclass
class Commit:
    """Everything one batch resolves to, written to Redis in a single transaction."""

    queue: str
    field: str
    dead: list[bytes] = field(default_factory=list)
    unregistered: dict[str, bytes] = field(default_factory=dict)
    scheduled: dict[bytes, float] = field(default_factory=dict)
    requeue: list[bytes] = field(default_factory=list)
    results: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    sent: bool = False  # an attempt went out: if its answer was lost, it may have run


class Keys:
    """Every Redis key name apnsd uses, derived from the prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.dead = f"{prefix}:dead"
        self.unregistered = f"{prefix}:unregistered"
        self.results = f"{prefix}:results"
        self.workers = f"{prefix}:workers"
        self.stats = f"{prefix}:stats"
        self.default_queue = f"{prefix}:queue"

    def inflight(self, queue: str, worker: str) -> str:
        """The hash holding one worker's in-flight batches taken from one queue."""
        return f"{queue}:inflight:{worker}"

    def heartbeat(self, worker: str) -> str:
        """The worker's liveness key (expires unless refreshed)."""
        return f"{self.prefix}:worker:{worker}"

    def scheduled(self, queue: str) -> str:
        """The sorted set of jobs waiting for their send_at, for one queue."""
        return f"{self.prefix}:scheduled" if queue == self.default_queue else f"{queue}:scheduled"


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Translate redis-py exceptions into QueueError, in this one place."""
    try:
        yield
    except redis.exceptions.ResponseError as exc:
        raise QueueError(f"Redis refused {what}: {exc}") from None
    except redis.exceptions.RedisError as exc:
        raise QueueError(f"Redis unavailable during {what}: {exc}") from None
    except OSError as exc:
        raise QueueError(f"Redis unavailable during {what}: {exc}") from None


def connect(url: str, socket_timeout: float = 5.0) -> redis.Redis:
    """A Redis client for a redis://, rediss:// or unix:// URL."""
    return redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                                health_check_interval=30)


class JobQueue:
    """One worker's view of the queues: atomic take, one-round-trip commits, heartbeats, recovery."""

    def __init__(self, client: redis.Redis, prefix: str, worker_id: str, results_maxlen: int = 0) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.worker_id = worker_id
        self.results_maxlen = results_maxlen
        self._take = client.register_script(_TAKE)
        self._recover = client.register_script(_RECOVER)
        self._promote = client.register_script(_PROMOTE)
        self._claim = client.register_script(_CLAIM)
        self._seq = int(time.time() * 1000)

    def wait(self, queue: str, timeout: float) -> bool:
        """Block until the queue has a job (without taking it) or the timeout passes."""
        with redis_errors("waiting for jobs"):
            # BLMOVE from the right end back onto the right end is a blocking no-op: it wakes us
            # when a job arrives but leaves the job where it is, so nothing is held outside Redis.
            return self.client.blmove(queue, queue, timeout, "RIGHT", "RIGHT") is not None

    def next_field(self) -> str:
        """A new in-flight batch field name, increasing for this worker."""
        self._seq += 1
        return str(self._seq)

    def take(self, queue: str, count: int, field: str | None = None) -> tuple[str, list[bytes]]:
        """Atomically move up to ``count`` jobs into in-flight storage; returns the batch field and jobs."""
        field = field or self.next_field()
        with redis_errors("taking jobs"):
            return field, self._take(keys=[queue, self.keys.inflight(queue, self.worker_id)], args=[count, field])

    def claim(self, queue: str, field: str) -> list[bytes]:
        """The jobs of one of this worker's in-flight batches (after a take whose answer was lost)."""
        with redis_errors("reading an in-flight batch"):
            return list(self._claim(keys=[self.keys.inflight(queue, self.worker_id)], args=[field]))

    def commit(self, c: Commit) -> None:
        """Write a batch's outcomes and drop it from in-flight storage, atomically, in one round trip."""
        k = self.keys
        with redis_errors("writing outcomes"):
            # The batch's field goes in the same transaction as the writes: if an earlier attempt's
            # answer was lost and the field is gone, that attempt ran and must not run a second time.
            if c.sent and not self.client.hexists(k.inflight(c.queue, self.worker_id), c.field):
                return
            c.sent = True
            p = self.client.pipeline(transaction=True)
            if c.requeue:
                p.rpush(c.queue, *reversed(c.requeue))  # the first-taken job must end up rightmost
            if c.dead:
                p.lpush(k.dead, *c.dead)
            if c.unregistered:
                p.hset(k.unregistered, mapping=c.unregistered)
            if c.scheduled:
                p.zadd(k.scheduled(c.queue), c.scheduled)
            for r in c.results:
                p.xadd(k.results, r, maxlen=self.results_maxlen or None, approximate=True)
            for name, n in c.counts.items():
                if n:
                    p.hincrby(k.stats, name, n)
            p.hdel(k.inflight(c.queue, self.worker_id), c.field)
            p.execute()

    def heartbeat(self, ttl: float, status: dict[str, Any]) -> None:
        """Refresh this worker's liveness key and registry entry."""
        with redis_errors("heartbeat"):
            p = self.client.pipeline(transaction=False)
            p.set(self.keys.heartbeat(self.worker_id), json.dumps(status), px=int(ttl * 1000))
            p.sadd(self.keys.workers, self.worker_id)
            p.execute()

    def retire(self) -> None:
        """Remove this worker's heartbeat and registry entry at a clean stop."""
        with redis_errors("retiring worker"):
            p = self.client.pipeline(transaction=False)
            p.delete(self.keys.heartbeat(self.worker_id))
            p.srem(self.keys.workers, self.worker_id)
            p.execute()

    def release_all(self, queue: str) -> int:
        """Return every batch still in this worker's in-flight storage to the front of the queue."""
        with redis_errors("returning in-flight jobs"):
            return int(self._recover(keys=["", self.keys.inflight(queue, self.worker_id), queue], args=["0"]))

    def recover_dead(self, queues: list[str]) -> dict[str, int]:
        """Return the in-flight jobs of workers whose heartbeat lapsed; returns jobs moved per worker."""
        moved: dict[str, int] = {}
        with redis_errors("recovering dead workers"):
            for worker in self.client.smembers(self.keys.workers):
                wid = worker.decode()
                if wid == self.worker_id:
                    continue
                total, alive = 0, False
                for q in queues:
                    n = int(self._recover(keys=[self.keys.heartbeat(wid), self.keys.inflight(q, wid), q], args=["1"]))
                    alive = alive or n < 0
                    total += max(n, 0)
                if not alive:
                    self.client.srem(self.keys.workers, wid)
                    moved[wid] = total
        return moved

    def promote_due(self, queue: str, now: float, limit: int = 1000) -> int:
        """Move scheduled jobs whose time has come onto the queue; returns how many moved."""
        with redis_errors("moving scheduled jobs"):
            return int(self._promote(keys=[self.keys.scheduled(queue), queue], args=[now, limit]))

    def push(self, queue: str, jobs: list[bytes]) -> int:
        """LPUSH jobs the way applications do (used by `apnsd push` and the demo)."""
        with redis_errors("pushing jobs"):
            return int(self.client.lpush(queue, *jobs))

    def schedule(self, queue: str, job: bytes, at: float) -> None:
        """Add a job to the scheduled set, due at unix time ``at``."""
        with redis_errors("scheduling a job"):
            self.client.zadd(self.keys.scheduled(queue), {job: at})

    def record_unregistered(self, entries: dict[str, bytes]) -> None:
        """Write unregistered-token entries that did not come from a batch (feedback service)."""
        if entries:
            with redis_errors("recording unregistered tokens"):
                self.client.hset(self.keys.unregistered, mapping=entries)

    def inflight_count(self, queue: str, worker: str) -> int:
        """How many jobs a worker holds in flight for a queue."""
        with redis_errors("counting in-flight jobs"):
            blobs = self.client.hvals(self.keys.inflight(queue, worker))
        # Count without decoding the jobs: they are msgpack str, and not every job is valid UTF-8.
        return sum(len(msgspec.msgpack.decode(b, type=list[msgspec.Raw])) for b in blobs)

    def ping(self) -> None:
        """Check Redis answers."""
        with redis_errors("ping"):
            self.client.ping()

    # --- inspection (stats, health, dead letters) -------------------------------------------

    def depth(self, queue: str) -> int:
        """Jobs waiting in a queue."""
        with redis_errors("reading queue depth"):
            return int(self.client.llen(queue))

    def scheduled_count(self, queue: str, until: float | None = None) -> int:
        """Jobs in the scheduled set (due by ``until`` if given)."""
        with redis_errors("counting scheduled jobs"):
            key = self.keys.scheduled(queue)
            return int(self.client.zcard(key) if until is None else self.client.zcount(key, "-inf", until))

    def workers(self) -> list[tuple[str, dict[str, Any] | None]]:
        """Registered workers with their last heartbeat status (None when it lapsed)."""
        with redis_errors("listing workers"):
            ids = sorted(w.decode() for w in self.client.smembers(self.keys.workers))
            beats = self.client.mget([self.keys.heartbeat(w) for w in ids]) if ids else []
        return [(w, json.loads(b) if b else None) for w, b in zip(ids, beats)]

    def heartbeat_of(self, worker: str) -> dict[str, Any] | None:
        """One worker's heartbeat status, or None if it lapsed."""
        with redis_errors("reading heartbeat"):
            raw = self.client.get(self.keys.heartbeat(worker))
        return json.loads(raw) if raw else None

    def counts(self) -> dict[str, int]:
        """Dead letters, unregistered tokens and lifetime outcome totals."""
        with redis_errors("reading counts"):
            p = self.client.pipeline(transaction=False)
            p.llen(self.keys.dead)
            p.hlen(self.keys.unregistered)
            p.hgetall(self.keys.stats)
            dead, unreg, totals = p.execute()
        out = {"dead": int(dead), "unregistered": int(unreg)}
        out.update({f"total_{k.decode()}": int(v) for k, v in totals.items()})
        return out

    def dead_entries(self, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` dead-letter entries."""
        with redis_errors("reading dead letters"):
            return [json.loads(e) for e in self.client.lrange(self.keys.dead, 0, count - 1)]

    def requeue_dead(self, queue_for: dict[str, str], default_queue: str, limit: int, reason: str | None) -> int:
        """Move up to ``limit`` dead entries (optionally only a reason prefix) back onto their app's queue."""
        moved = 0
        with redis_errors("requeueing dead letters"):
            for raw in self.client.lrange(self.keys.dead, 0, -1):
                if moved >= limit:
                    break
                entry = json.loads(raw)
                if reason and not str(entry.get("reason", "")).startswith(reason):
                    continue
                p = self.client.pipeline(transaction=True)
                p.lrem(self.keys.dead, 1, raw)
                p.lpush(queue_for.get(entry.get("app") or "", default_queue), entry["job"].encode())
                if p.execute()[0]:
                    moved += 1
        return moved

    def unregistered(self, tokens: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Unregistered-token entries (all, or just the given tokens)."""
        with redis_errors("reading unregistered tokens"):
            if tokens is None:
                items = self.client.hgetall(self.keys.unregistered).items()
                return {k.decode(): json.loads(v) for k, v in items}
            values = self.client.hmget(self.keys.unregistered, tokens) if tokens else []
        return {t: json.loads(v) for t, v in zip(tokens, values) if v}

    def forget_unregistered(self, tokens: list[str]) -> int:
        """Remove tokens from the unregistered store (the application has pruned them); returns how many were there."""
        if not tokens:
            return 0
        with redis_errors("forgetting unregistered tokens"):
            return int(self.client.hdel(self.keys.unregistered, *tokens))
