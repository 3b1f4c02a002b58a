"""The only Redis user: take batches into in-flight storage, commit outcomes, heartbeats, recovery.

Works against one server, a Sentinel-managed master or a Redis Cluster. Every script touches keys of
one cluster slot: a queue shares its slot with its in-flight hashes and its scheduled set (the same
hash tag), and the shared keys (dead, unregistered, results, stats, workers, heartbeats) share the
prefix's slot. Where a step spans both slots it is split into per-slot steps, ordered so that a crash
between them can only repeat an outcome, never lose a job.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, Union

import msgspec
import redis
import redis.cluster
import redis.sentinel
from redis.crc import key_slot

from apnsd.config import RedisConfig, has_hash_tag
from apnsd.errors import QueueError
from apnsd.store.layout import CLAIM_SCRIPT, PROMOTE_SCRIPT, RECOVER_SCRIPT, TAKE_SCRIPT, Commit, Keys, pack_jobs

Client = Union[redis.Redis, redis.cluster.RedisCluster]
WRITTEN_MARKER_TTL = 3600  # seconds a cluster commit's "outcomes written" marker outlives a forgotten delete


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Translate redis-py exceptions into QueueError, in this one place."""
    try:
        yield
    except redis.exceptions.ResponseError as exc:
        raise QueueError(f"Redis refused {what}: {exc}") from None
    except redis.exceptions.RedisError as exc:
        raise QueueError(f"Redis unavailable during {what}: {exc}") from None
    except redis.exceptions.RedisClusterException as exc:  # not a RedisError: "no reachable node", slot not covered
        raise QueueError(f"Redis Cluster unavailable during {what}: {exc}") from None
    except OSError as exc:
        raise QueueError(f"Redis unavailable during {what}: {exc}") from None


def connect(url: str, socket_timeout: float = 5.0) -> Client:
    """A Redis client for a plain redis://, rediss:// or unix:// URL (no Sentinel, no Cluster)."""
    return client_for(RedisConfig(url=url, socket_timeout=socket_timeout))


def client_for(rc: RedisConfig) -> Client:
    """The client for the configured deployment: one server, a Sentinel-managed master, or a Cluster.

    Sentinel: every new connection asks the sentinels for the current master, and a connection to a
    master that was demoted fails (READONLY becomes a connection error), so a failover is followed on
    the next command; the loops retry a failed command with backoff until the new master answers.
    """
    timeouts: dict[str, Any] = {"socket_timeout": rc.socket_timeout, "socket_connect_timeout": rc.socket_timeout}
    tls = {
        k: v
        for k, v in (
            ("ssl_ca_certs", rc.ssl_ca_file),
            ("ssl_certfile", rc.ssl_cert_file),
            ("ssl_keyfile", rc.ssl_key_file),
        )
        if v
    }
    with redis_errors("connecting"):
        if rc.cluster:
            return redis.cluster.RedisCluster.from_url(rc.url, **timeouts, **tls)
        if rc.sentinels:
            url = redis.connection.parse_url(rc.url)  # password, username, db and TLS for the master
            master = {k: url[k] for k in ("username", "password", "db") if k in url}
            if rc.url.startswith("rediss://"):
                master.update(ssl=True, **tls)
            sentinel_auth = {"password": rc.sentinel_password} if rc.sentinel_password else {}
            nodes = [(h, int(p)) for h, _, p in (s.rpartition(":") for s in rc.sentinels)]
            sentinel = redis.sentinel.Sentinel(nodes, sentinel_kwargs={**timeouts, **sentinel_auth}, **timeouts)
            return sentinel.master_for(rc.service, health_check_interval=30, **master)
        return redis.Redis.from_url(rc.url, health_check_interval=30, **timeouts, **tls)


class JobQueue:
    """One worker's view of the queues: atomic take, one-round-trip commits, heartbeats, recovery."""

    def __init__(self, client: Client, prefix: str, worker_id: str, results_maxlen: int = 0) -> None:
        self.client = client
        self.cluster = isinstance(client, redis.cluster.RedisCluster)
        # Cluster mode keeps the shared keys in one slot: the same wrapping as RedisConfig.key_prefix.
        self.keys = Keys(f"{{{prefix}}}" if self.cluster and not has_hash_tag(prefix) else prefix)
        self.worker_id = worker_id
        self.results_maxlen = results_maxlen
        self._done_markers: deque[str] = deque()  # cluster: "written" markers of finished commits
        self._take = client.register_script(TAKE_SCRIPT)
        self._recover = client.register_script(RECOVER_SCRIPT)
        self._promote = client.register_script(PROMOTE_SCRIPT)
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._seq = int(time.time() * 1000)

    def wait(self, queue: str, timeout: float) -> bool:
        """Block until the queue has a job (without taking it) or the timeout passes."""
        with redis_errors("waiting for jobs"):
            # BLMOVE from the right end back onto the right end is a blocking no-op: it wakes us
            # when a job arrives but leaves the job where it is, so nothing is held outside Redis.
            return self.client.blmove(queue, queue, timeout, "RIGHT", "RIGHT") is not None

    def next_batch_id(self) -> str:
        """A new in-flight batch id name, increasing for this worker."""
        self._seq += 1
        return str(self._seq)

    def take(self, queue: str, count: int, batch_id: str | None = None) -> tuple[str, list[bytes]]:
        """Atomically move up to ``count`` jobs into in-flight storage; returns the batch id and jobs."""
        batch_id = batch_id or self.next_batch_id()
        with redis_errors("taking jobs"):
            return batch_id, self._take(keys=[queue, self.keys.inflight(queue, self.worker_id)], args=[count, batch_id])

    def claim(self, queue: str, batch_id: str) -> list[bytes]:
        """The jobs of one of this worker's in-flight batches (after a take whose answer was lost)."""
        with redis_errors("reading an in-flight batch"):
            return list(self._claim(keys=[self.keys.inflight(queue, self.worker_id)], args=[batch_id]))

    def _other_slot(self, key: str) -> bool:
        """Cluster mode: does ``key`` live in another slot than the shared (prefix) keys?"""
        return self.cluster and key_slot(key.encode()) != key_slot(self.keys.dead.encode())

    def commit(self, c: Commit) -> None:
        """Write a batch's outcomes and drop it from in-flight storage, atomically, in one round trip.

        In cluster mode a queue outside the prefix's slot takes two transactions, outcomes first
        (dead, unregistered, results, stats, and a short-lived "written" marker), then the queue's slot
        (requeue, retries, in-flight HDEL). A retry after a lost answer skips the outcomes when the
        marker says they were written. A crash between the two leaves the batch in flight: it is
        recovered and resolved again, which can repeat an outcome record but never loses a job.
        """
        k = self.keys
        with redis_errors("writing outcomes"):
            # The batch's batch_id goes in the same transaction as the writes: if an earlier attempt's
            # answer was lost and the batch_id is gone (a partial commit: holds exactly what it kept),
            # that attempt ran and must not run a second time.
            retry = c.sent
            inflight = k.inflight(c.queue, self.worker_id)
            kept = pack_jobs(c.keep) if c.keep is not None else None
            if retry and (
                self.client.hget(inflight, c.batch_id) == kept
                if kept is not None
                else not self.client.hexists(inflight, c.batch_id)
            ):
                return
            c.sent = True
            p = self.client.pipeline(transaction=True)
            if self._other_slot(c.queue):
                marker = k.written(self.worker_id, c.queue, c.batch_id)
                if not c.outcomes_written and not (retry and self.client.exists(marker)):
                    self._outcome_writes(p, c)
                    p.set(marker, b"1", ex=WRITTEN_MARKER_TTL)
                    done = self._pop_done_markers()
                    if done:
                        p.delete(*done)
                    p.execute()
                c.outcomes_written = True
                p = self.client.pipeline(transaction=True)
                self._queue_writes(p, c)
                p.hdel(k.inflight(c.queue, self.worker_id), c.batch_id)
                p.execute()
                self._done_markers.append(marker)  # deleted with a later outcome write (else it expires)
                return
            self._outcome_writes(p, c)
            self._queue_writes(p, c)
            if kept is not None:
                p.hset(inflight, c.batch_id, kept)
            else:
                p.hdel(inflight, c.batch_id)
            p.execute()

    def commits_partially(self, queue: str) -> bool:
        """Can a batch taken from ``queue`` be committed in parts (one transaction, so not across
        cluster slots, where a retried half could not tell one part from the next)?"""
        return not self._other_slot(queue)

    def _queue_writes(self, p: Any, c: Commit) -> None:
        """Queue the writes to the batch's queue slot (requeue, retries) on pipeline ``p``."""
        if c.requeue:
            p.rpush(c.queue, *reversed(c.requeue))  # the first-taken job must end up rightmost
        if c.scheduled:
            p.zadd(self.keys.scheduled(c.queue), c.scheduled)

    def _pop_done_markers(self, most: int = 100) -> list[str]:
        """Markers of finished cluster commits, taken off the shared deque (loops commit on their own threads)."""
        out: list[str] = []
        while len(out) < most:
            try:
                out.append(self._done_markers.popleft())
            except IndexError:
                break
        return out

    def _outcome_writes(self, p: Any, c: Commit) -> None:
        """Queue the writes to the shared keys (dead, unregistered, results, stats) on pipeline ``p``."""
        k = self.keys
        if c.dead:
            p.lpush(k.dead, *c.dead)
        if c.unregistered:
            p.hset(k.unregistered, mapping=c.unregistered)
        for r in c.results:
            p.xadd(k.results, r, maxlen=self.results_maxlen or None, approximate=True)
        for name, n in c.counts.items():
            if n:
                p.hincrby(k.stats, name, n)

    def heartbeat(self, ttl: float, status: dict[str, Any]) -> None:
        """Refresh this worker's liveness key and registry entry (and follow a Sentinel failover)."""
        with redis_errors("heartbeat"):
            pool = self.client.connection_pool if not self.cluster else None
            if isinstance(pool, redis.sentinel.SentinelConnectionPool):
                # Asking the sentinels drops idle connections to a master they no longer name. A
                # deliberate failover leaves the old master up and writable until the sentinels
                # demote it, which can take many seconds; writes there are discarded at demotion
                # (taken jobs come back: duplicates, never losses), so move over as soon as we learn.
                pool.get_master_address()
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
            return int(self._recover(keys=[self.keys.inflight(queue, self.worker_id), queue]))

    def release_orphans(self, queue: str, held: Callable[[], Collection[str]]) -> int:
        """Return this worker's in-flight batches that its process no longer holds; returns jobs moved.

        After a Sentinel failover the new master can lack writes the old one acknowledged: a batch
        committed on the old master is back in flight on the new one, and nothing would ever resolve
        it. ``held`` is read after the batch_id list, and the loop adds a batch_id before taking into it, so
        a batch taken meanwhile is never seen as unheld; one committed meanwhile is simply gone.
        """
        key = self.keys.inflight(queue, self.worker_id)
        with redis_errors("returning orphaned in-flight jobs"):
            batch_ids = {f.decode() for f in self.client.hkeys(key)}
            if not batch_ids:
                return 0
            orphans = sorted(batch_ids - set(held()))
            return int(self._recover(keys=[key, queue], args=orphans)) if orphans else 0

    def recover_dead(self, queues: list[str]) -> dict[str, int]:
        """Return the in-flight jobs of workers whose heartbeat lapsed; returns jobs moved per worker."""
        moved: dict[str, int] = {}
        with redis_errors("recovering dead workers"):
            for worker in self.client.smembers(self.keys.workers):
                wid = worker.decode()
                if wid == self.worker_id:
                    continue
                # Cluster: the heartbeat and a queue's in-flight hash are in different slots, so the
                # check comes first and is not atomic with the move. Racing recoverers still move each
                # job exactly once, because the move itself (read the hash, push, delete) is one
                # script: the second finds the hash empty. A worker that revives between the check and
                # the move has its batches delivered again by others: at least once, as with the atomic
                # check when a worker comes back after its heartbeat lapsed.
                if self.cluster and self.client.exists(self.keys.heartbeat(wid)):
                    continue
                total, alive = 0, False
                for q in queues:
                    keys = [self.keys.inflight(q, wid), q]
                    n = int(self._recover(keys=keys if self.cluster else [*keys, self.keys.heartbeat(wid)]))
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

    def inflight_batches(self, queue: str) -> int:
        """How many batches this worker holds in Redis for a queue (one HLEN)."""
        with redis_errors("counting in-flight batches"):
            return int(self.client.hlen(self.keys.inflight(queue, self.worker_id)))

    def inflight_count(self, queue: str, worker: str) -> int:
        """How many jobs a worker holds in flight for a queue."""
        with redis_errors("counting in-flight jobs"):
            blobs = self.client.hvals(self.keys.inflight(queue, worker))
        # Count without decoding the jobs: they are msgpack str, and not every job is valid UTF-8.
        return sum(len(msgspec.msgpack.decode(b, type=list[msgspec.Raw])) for b in blobs)

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
        return [(w, json.loads(b) if b else None) for w, b in zip(ids, beats, strict=False)]

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
                queue, job = queue_for.get(entry.get("app") or "", default_queue), entry["job"].encode()
                if self._other_slot(queue):
                    # No transaction across slots: push first, so a crash can only requeue twice;
                    # if another requeuer removed the entry meanwhile, take our copy back.
                    self.client.lpush(queue, job)
                    if self.client.lrem(self.keys.dead, 1, raw):
                        moved += 1
                    else:
                        self.client.lrem(queue, 1, job)
                    continue
                p = self.client.pipeline(transaction=True)
                p.lrem(self.keys.dead, 1, raw)
                p.lpush(queue, job)
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
        return {t: json.loads(v) for t, v in zip(tokens, values, strict=False) if v}

    def forget_unregistered(self, tokens: list[str]) -> int:
        """Remove tokens from the unregistered store (the application has pruned them); returns how many were there."""
        if not tokens:
            return 0
        with redis_errors("forgetting unregistered tokens"):
            return int(self.client.hdel(self.keys.unregistered, *tokens))
