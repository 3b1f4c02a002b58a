"""The only Redis user: take batches into in-flight storage, commit outcomes, heartbeats, recovery.

Works against one server, a Sentinel-managed master or a Redis Cluster. Every script touches keys of
one cluster slot: a queue shares its slot with its in-flight hashes and its scheduled set (the same
hash tag), and the shared keys (dead, unregistered, results, stats, workers, heartbeats) share the
prefix's slot. Where a step spans both slots it is split into per-slot steps, ordered so that a crash
between them can only repeat an outcome, never lose a job.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.cluster
import redis.sentinel
from redis.commands.core import Script
from redis.crc import key_slot

from apnsd.config import RedisConfig, tagged_prefix
from apnsd.core.outcomes import WRONG_QUEUE
from apnsd.errors import ConfigError, KeyTypeError, QueueError
from apnsd.store.layout import (
    CLAIM_SCRIPT,
    COMMIT_OUTCOMES_SCRIPT,
    COMMIT_QUEUE_SCRIPT,
    COMMIT_SCRIPT,
    LANES_TAKE_SCRIPT,
    PROMOTE_SCRIPT,
    RECOVER_SCRIPT,
    REQUEUE_DEAD_SCRIPT,
    TAKE_SCRIPT,
    Commit,
    Keys,
    batch_length,
    outcome_args,
    pack_jobs,
    queue_args,
)

Client = redis.Redis | redis.cluster.RedisCluster
WRITTEN_MARKER_TTL = 3600  # seconds a cluster commit's "outcomes written" marker outlives a forgotten delete


@contextmanager
def redis_errors(what: str, key: str = "") -> Iterator[None]:
    """Translate redis-py exceptions into QueueError, in this one place; ``key`` names the key a WRONGTYPE
    error is about when Redis's own text does not (errors of the commit script name theirs)."""
    try:
        yield
    except redis.exceptions.ResponseError as exc:
        text = safe_error_text(exc)
        if "WRONGTYPE" in text:
            named = _WRONG_TYPE.search(text)
            culprit = named.group(1) if named else key or "?"
            where = f"{culprit} holds" if named or key else "a key holds"
            raise KeyTypeError(
                culprit,
                f"Redis refused {what}: {where} another type than apnsd uses there "
                f"(`apnsd check` names such keys; {text})",
            ) from None
        raise QueueError(f"Redis refused {what}: {text}") from None
    except redis.exceptions.RedisError as exc:
        raise QueueError(f"Redis unavailable during {what}: {safe_error_text(exc)}") from None
    except redis.exceptions.RedisClusterException as exc:  # not a RedisError: "no reachable node", slot not covered
        raise QueueError(f"Redis Cluster unavailable during {what}: {safe_error_text(exc)}") from None
    except OSError as exc:
        raise QueueError(f"Redis unavailable during {what}: {exc}") from None


_WRONG_TYPE = re.compile(r"WRONGTYPE (\S+) holds")
_COMMAND_IN_ERROR = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)
_LONG_HEX = re.compile(r"([0-9a-fA-F]{8})[0-9a-fA-F]{8,}")
MAX_ERROR_TEXT = 300


def safe_error_text(exc: BaseException) -> str:
    """A redis-py error's text fit for a log line: without the failed command (redis-py quotes it, arguments
    and all: tokens, payloads), long hex runs (device tokens) shortened, bounded in length."""
    text = _COMMAND_IN_ERROR.sub("", str(exc))
    text = _LONG_HEX.sub(r"\1…", text)
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT] + "…"


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
    try:
        return _client(rc, timeouts, tls)
    except ValueError as exc:  # redis-py's URL parsing: a port out of range or not a number, a bad query value
        raise ConfigError("redis.url", f"is not a valid Redis URL: {exc}") from None


def _client(rc: RedisConfig, timeouts: dict[str, Any], tls: dict[str, Any]) -> Client:
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
        self.keys = Keys(tagged_prefix(prefix, self.cluster))
        self.worker_id = worker_id
        self.results_maxlen = results_maxlen
        self._done_markers: deque[str] = deque()  # cluster: "written" markers of finished commits
        self._take = client.register_script(TAKE_SCRIPT)
        self._recover = client.register_script(RECOVER_SCRIPT)
        self._promote = client.register_script(PROMOTE_SCRIPT)
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._commit = client.register_script(COMMIT_SCRIPT)
        self._commit_outcomes = client.register_script(COMMIT_OUTCOMES_SCRIPT)
        self._commit_queue = client.register_script(COMMIT_QUEUE_SCRIPT)
        self._take_lanes = client.register_script(LANES_TAKE_SCRIPT)
        self._requeue_dead = client.register_script(REQUEUE_DEAD_SCRIPT)
        self._seq = int(time.time() * 1000)

    def wait(self, queue: str, timeout: float) -> bool:
        """Block until the queue has a job (without taking it) or the timeout passes."""
        with redis_errors("waiting for jobs", queue):
            # BLMOVE from the right end back onto the right end is a blocking no-op: it wakes us
            # when a job arrives but leaves the job where it is, so nothing is held outside Redis.
            return self.client.blmove(queue, queue, timeout, "RIGHT", "RIGHT") is not None  # type: ignore[arg-type]  # redis takes float seconds

    def next_batch_id(self) -> str:
        """A new in-flight batch id (the hash field it is stored under), increasing for this worker."""
        self._seq += 1
        return str(self._seq)

    def take(self, queue: str, count: int, batch_id: str | None = None) -> tuple[str, list[bytes]]:
        """Atomically move up to ``count`` jobs into in-flight storage; returns the batch id and jobs (oldest first)."""
        batch_id = batch_id or self.next_batch_id()
        k, w = self.keys, self.worker_id
        batch = k.inflight_list(queue, w, batch_id)
        keys = [queue, batch, k.inflight_batches(queue, w)]
        with redis_errors("taking jobs", queue):
            if self.cluster:  # redis-py's cluster pipeline does not load scripts: two round trips
                self._take(keys=keys, args=[count, batch_id])
                jobs: list[bytes] = list(self.client.lrange(batch, 0, -1))  # type: ignore[arg-type]  # bytes replies
            else:
                _, (jobs,) = self._run_and_read(self._take, TAKE_SCRIPT, keys, [count, batch_id], [batch])
        jobs.reverse()  # the list holds them as the queue did, newest first
        return batch_id, jobs

    def _run_and_read(
        self, script: Script, source: str, keys: list[str], args: list[Any], lists: list[str]
    ) -> tuple[Any, list[list[bytes]]]:
        """A take script and the LRANGE of each list it may have filled, in one round trip: (its reply, the lists).

        EVALSHA straight on the pipeline: a pipeline given a registered Script asks SCRIPT EXISTS first on every
        execute, a second round trip per take. A server that lost its scripts (restart, SCRIPT FLUSH) answers
        NOSCRIPT and ran nothing: the script is loaded and the take sent again.
        """

        def send() -> tuple[Any, list[list[bytes]]]:
            p = self.client.pipeline(transaction=False)
            p.evalsha(script.sha, len(keys), *keys, *args)
            for name in lists:
                p.lrange(name, 0, -1)
            reply, *read = p.execute()
            return reply, [list(jobs) for jobs in read]

        try:
            return send()
        except redis.exceptions.NoScriptError:
            script.sha = self.client.script_load(source)
            return send()

    def take_lanes(
        self,
        queue: str,
        lanes: list[str],
        count: int,
        batch_id: str,
        first: int,
        rates: tuple[float, list[float]],
        lower_count: int | None = None,
    ) -> tuple[int, list[bytes], float]:
        """Take up to ``count`` jobs from one of a queue's lanes, looking from lane index ``first`` down, within
        the throttle, in one atomic script (LANES_TAKE_SCRIPT), into a list of their own as ``take`` does.

        ``lanes`` are the queue's lane keys, highest priority first (``Config.lanes``); ``rates`` is (the
        queue's rate, each lane's rate), 0 meaning unlimited; ``lower_count`` caps a take from a lane other
        than the first (default ``count``). Returns (lane index or -1, jobs oldest first, seconds the
        throttle holds queued jobs back: 0 when every lane is empty). Taking again into a batch id that holds a
        batch returns that batch, so a take whose answer was lost can be resent.
        """
        queue_rate, lane_rates = rates
        k, w = self.keys, self.worker_id
        lists = [k.inflight_list(lane, w, batch_id) for lane in lanes]
        keys = [
            x
            for lane, b in zip(lanes, lists, strict=True)
            for x in (lane, k.inflight(lane, w), b, k.inflight_batches(lane, w))
        ]
        keys += [k.throttle(queue), *(k.lane_throttle(lane) for lane in lanes)]
        args: list[str | int | float] = [count, batch_id, first + 1, lower_count or count, queue_rate, *lane_rates]
        with redis_errors("taking jobs"):
            if self.cluster:  # as in take: two round trips, the second only for the lane the script took from
                lane, n, wait_ms = self._take_lanes(keys=keys, args=args)
                jobs: list[bytes] = []
                if int(n):
                    jobs = list(self.client.lrange(lists[int(lane) - 1], 0, -1))  # type: ignore[arg-type]  # bytes replies
            else:
                # Every lane's list is read: which one the script fills is known only once it has run (the others
                # do not exist, so their LRANGE costs next to nothing).
                (lane, n, wait_ms), read = self._run_and_read(self._take_lanes, LANES_TAKE_SCRIPT, keys, args, lists)
                jobs = read[int(lane) - 1] if int(n) else []
        jobs.reverse()  # the list holds them as the lane did, newest first
        return int(lane) - 1, jobs, int(wait_ms) / 1000

    def claim(self, queue: str, batch_id: str) -> list[bytes]:
        """The jobs of one of this worker's in-flight batches (after a take whose answer was lost)."""
        with redis_errors("reading an in-flight batch"):
            keys = [self.keys.inflight(queue, self.worker_id), self.keys.inflight_list(queue, self.worker_id, batch_id)]
            return list(self._claim(keys=keys, args=[batch_id]))

    def batch_jobs(self, queue: str, batch_id: str, first: int = 0, last: int | None = None) -> list[bytes]:
        """The jobs at positions ``first`` to ``last`` (default: the end) of one of this worker's in-flight batches
        taken into a list, oldest first as ``take`` returned them: element i is position first + i (fewer or none
        when the list is shorter or gone). Only that range is read, whatever the list has become."""
        batch = self.keys.inflight_list(queue, self.worker_id, batch_id)
        start = 0 if last is None else -(last + 1)  # the list holds the batch newest first: position p is -(p + 1)
        with redis_errors("reading an in-flight batch", batch):
            jobs: list[bytes] = list(self.client.lrange(batch, start, -(first + 1)))  # type: ignore[arg-type]
        jobs.reverse()
        return jobs

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
            # If an earlier attempt's answer was lost and the batch id is gone (for a partial commit: holds
            # exactly what it kept), that attempt ran (the script drops or rewrites the batch together with its
            # writes) and must not run a second time.
            retry = c.sent
            inflight = k.inflight(c.queue, self.worker_id)
            kept = pack_jobs(c.keep) if c.keep is not None else None
            batch = k.inflight_list(c.queue, self.worker_id, c.batch_id)
            if retry and (
                self.client.hget(inflight, c.batch_id) == kept
                if kept is not None
                else not self.client.hexists(inflight, c.batch_id) and not self.client.exists(batch)
            ):
                return
            c.sent = True
            queue_keys = [c.queue, k.scheduled(c.queue), inflight, k.inflight_batches(c.queue, self.worker_id), batch]
            outcome_keys = [k.dead, k.unregistered, k.results, k.stats, k.channels_gone]
            if self._other_slot(c.queue):
                marker = k.written(self.worker_id, c.queue, c.batch_id)
                if not c.outcomes_written and not (retry and self.client.exists(marker)):
                    done = self._pop_done_markers()
                    try:
                        self._commit_outcomes(
                            keys=[*outcome_keys, marker, *done],
                            args=[*outcome_args(c, self.results_maxlen), WRITTEN_MARKER_TTL],
                        )
                    except BaseException:
                        self._done_markers.extendleft(reversed(done))  # not deleted: try with a later commit
                        raise
                c.outcomes_written = True
                self._commit_queue(keys=queue_keys, args=queue_args(c))
                self._done_markers.append(marker)  # deleted with a later outcome write (else it expires)
                return
            self._commit(
                keys=[*outcome_keys, *queue_keys], args=[*outcome_args(c, self.results_maxlen), *queue_args(c)]
            )

    def commits_partially(self, queue: str) -> bool:
        """Can a batch taken from ``queue`` be committed in parts (one script, so not across cluster slots,
        where a retried half could not tell one part from the next)?"""
        return not self._other_slot(queue)

    def _pop_done_markers(self, most: int = 100) -> list[str]:
        """Markers of finished cluster commits, taken off the shared deque (loops commit on their own threads)."""
        out: list[str] = []
        while len(out) < most:
            try:
                out.append(self._done_markers.popleft())
            except IndexError:
                break
        return out

    def heartbeat(self, ttl: float, status: dict[str, Any]) -> None:
        """Refresh this worker's liveness key and registry entry (and follow a Sentinel failover)."""
        with redis_errors("heartbeat"):
            pool = self.client.connection_pool if isinstance(self.client, redis.Redis) else None
            if isinstance(pool, redis.sentinel.SentinelConnectionPool):
                # Asking the sentinels drops idle connections to a master they no longer name. A
                # deliberate failover leaves the old master up and writable until the sentinels
                # demote it, which can take many seconds; writes there are discarded at demotion
                # (taken jobs come back: duplicates, never losses), so move over as soon as we learn.
                pool.get_master_address()
            p = self.client.pipeline(transaction=False)
            p.set(self.keys.heartbeat(self.worker_id), json.dumps(status), px=int(ttl * 1000))
            p.sadd(self.keys.workers, self.worker_id)
            p.sadd(self.keys.list_workers, self.worker_id)
            p.execute()

    def claim_heartbeat(self, ttl: float, status: dict[str, Any]) -> dict[str, Any] | None:
        """Write this worker's heartbeat only if none is live; returns the live one's status otherwise."""
        key = self.keys.heartbeat(self.worker_id)
        with redis_errors("claiming the worker id"):
            if self.client.set(key, json.dumps(status), px=int(ttl * 1000), nx=True):
                return None
            raw = self.client.get(key)
        return read_status(raw) if raw else None

    def retire(self) -> None:
        """Remove this worker's heartbeat and registry entry at a clean stop."""
        with redis_errors("retiring worker"):
            p = self.client.pipeline(transaction=False)
            p.delete(self.keys.heartbeat(self.worker_id))
            p.srem(self.keys.workers, self.worker_id)
            p.srem(self.keys.list_workers, self.worker_id)
            p.execute()

    def requeue_held(self, queue: str) -> int:
        """Return every batch still in this worker's in-flight storage to the front of the queue."""
        with redis_errors("returning in-flight jobs"):
            return int(self._recover(keys=self._recover_keys(queue, self.worker_id), args=self._recover_args(queue)))

    def _recover_keys(self, queue: str, worker: str) -> list[str]:
        """RECOVER_SCRIPT's keys for one worker's batches taken from ``queue`` (without the heartbeat)."""
        return [self.keys.inflight(queue, worker), queue, self.keys.inflight_batches(queue, worker)]

    def _recover_args(self, queue: str, worker: str | None = None, batch_ids: list[str] | None = None) -> list[str]:
        """RECOVER_SCRIPT's arguments: the worker's in-flight list prefix, then the batch ids (none: all of them)."""
        return [self.keys.inflight_list_prefix(queue, worker or self.worker_id), *(batch_ids or [])]

    def requeue_orphans(self, queue: str, held: Callable[[], Collection[str]]) -> int:
        """Return this worker's in-flight batches that its process no longer holds; returns jobs moved.

        After a Sentinel failover the new master can lack writes the old one acknowledged: a batch
        committed on the old master is back in flight on the new one, and nothing would ever resolve
        it. ``held`` is read after the batch_id list, and the loop adds a batch_id before taking into it, so
        a batch taken meanwhile is never seen as unheld; one committed meanwhile is simply gone.
        """
        with redis_errors("returning orphaned in-flight jobs"):
            batch_ids = self._batch_ids(queue, self.worker_id)
            if not batch_ids:
                return 0
            orphans = sorted(batch_ids - set(held()))
            if not orphans:
                return 0
            keys = self._recover_keys(queue, self.worker_id)
            return int(self._recover(keys=keys, args=self._recover_args(queue, None, orphans)))

    def _batch_ids(self, queue: str, worker: str) -> set[str]:
        """The ids of a worker's in-flight batches taken from ``queue``, in either form (hash field or list)."""
        p = self.client.pipeline(transaction=False)
        p.hkeys(self.keys.inflight(queue, worker))
        p.smembers(self.keys.inflight_batches(queue, worker))
        fields, lists = p.execute()
        return {_text(f) for f in (*fields, *lists)}

    def requeue_from_dead_workers(self, queues: list[str], wrong: list[str] | None = None) -> dict[str, int]:
        """Return the in-flight jobs of workers whose heartbeat lapsed; returns jobs moved per worker.

        An in-flight key (or queue) holding another type is passed over, its worker kept registered, and named
        in ``wrong``: it must not keep every other dead worker's jobs from coming back."""
        moved: dict[str, int] = {}
        with redis_errors("recovering dead workers"):
            registered = self.client.smembers(self.keys.workers) | self.client.smembers(self.keys.list_workers)
            for worker in registered:
                wid = _text(worker)
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
                    keys = self._recover_keys(q, wid)
                    try:
                        with redis_errors("recovering a dead worker's jobs", f"{keys[0]}, {keys[2]} or {q}"):
                            n = int(
                                self._recover(
                                    keys=keys if self.cluster else [*keys, self.keys.heartbeat(wid)],
                                    args=self._recover_args(q, wid),
                                )
                            )
                    except KeyTypeError as exc:
                        if wrong is None:
                            raise
                        wrong.append(exc.key)
                        n = -1  # keep the worker registered: its jobs come back once the key is fixed
                    alive = alive or n < 0
                    total += max(n, 0)
                if not alive:
                    self.client.srem(self.keys.workers, worker)  # as stored: a member that is not UTF-8 goes too
                    self.client.srem(self.keys.list_workers, worker)
                    moved[wid] = total
        return moved

    def promote_due(self, queue: str, now: float, limit: int = 1000) -> int:
        """Move scheduled jobs whose time has come onto the queue; returns how many moved."""
        with redis_errors("moving scheduled jobs", f"{self.keys.scheduled(queue)} or {queue}"):
            return int(self._promote(keys=[self.keys.scheduled(queue), queue], args=[now, limit]))

    def push(self, queue: str, jobs: list[bytes]) -> int:
        """LPUSH jobs the way applications do (used by `apnsd push` and the demo)."""
        with redis_errors("pushing jobs", queue):
            return int(self.client.lpush(queue, *jobs))

    def schedule(self, queue: str, job: bytes, at: float) -> None:
        """Add a job to the scheduled set, due at unix time ``at``."""
        with redis_errors("scheduling a job", self.keys.scheduled(queue)):
            self.client.zadd(self.keys.scheduled(queue), {job: at})

    def record_unregistered(self, entries: dict[str, bytes]) -> None:
        """Write unregistered-token entries that did not come from a batch (feedback service)."""
        if entries:
            with redis_errors("recording unregistered tokens", self.keys.unregistered):
                self.client.hset(self.keys.unregistered, items=[x for pair in entries.items() for x in pair])

    def inflight_batches(self, queue: str) -> int:
        """How many batches this worker holds in Redis for a queue (hash fields and listed batches, one round trip)."""
        with redis_errors("counting in-flight batches"):
            p = self.client.pipeline(transaction=False)
            p.hlen(self.keys.inflight(queue, self.worker_id))
            p.scard(self.keys.inflight_batches(queue, self.worker_id))
            return sum(int(n) for n in p.execute())

    def inflight_count(self, queue: str, worker: str) -> int:
        """How many jobs a worker holds in flight for a queue."""
        with redis_errors("counting in-flight jobs", self.keys.inflight(queue, worker)):
            blobs = self.client.hvals(self.keys.inflight(queue, worker))
            lists = self.client.smembers(self.keys.inflight_batches(queue, worker))
            p = self.client.pipeline(transaction=False)
            for batch_id in lists:
                p.llen(self.keys.inflight_list(queue, worker, _text(batch_id)))
            listed = sum(int(n) for n in p.execute()) if lists else 0
        # Count without decoding the jobs: they are msgpack str, and not every job is valid UTF-8.
        return listed + sum(batch_length(_raw(b)) for b in blobs)

    # --- inspection (stats, health, dead letters) -------------------------------------------

    def ping(self) -> None:
        """One round trip: reachability and authentication (QueueError says which failed)."""
        with redis_errors("connecting (PING)"):
            self.client.ping()

    def wrong_typed_keys(self, queues: list[str]) -> list[tuple[str, str, str]]:
        """Keys apnsd writes that hold another type: (key, type held, type expected)."""
        k = self.keys
        expected = {k.dead: "list", k.unregistered: "hash", k.results: "stream", k.stats: "hash", k.workers: "set"}
        expected[k.list_workers] = "set"
        for q in queues:
            expected[q] = "list"
            expected[k.scheduled(q)] = "zset"
        wrong = []
        with redis_errors("checking key types"):
            for key, want in expected.items():
                held = self.client.type(key)
                held = held.decode() if isinstance(held, bytes) else str(held)
                if held not in ("none", want):
                    wrong.append((key, held, want))
        return wrong

    def depth(self, queue: str) -> int:
        """Jobs waiting in a queue."""
        with redis_errors("reading queue depth", queue):
            return int(self.client.llen(queue))

    def oldest(self, queue: str) -> bytes | None:
        """The job that will be taken next (the consuming end), without taking it; None when the queue is empty."""
        with redis_errors("reading the oldest job", queue):
            raw = self.client.lindex(queue, -1)
        return raw.encode() if isinstance(raw, str) else raw  # bytes: the client does not decode responses

    def scheduled_count(self, queue: str, until: float | None = None) -> int:
        """Jobs in the scheduled set (due by ``until`` if given)."""
        with redis_errors("counting scheduled jobs", self.keys.scheduled(queue)):
            key = self.keys.scheduled(queue)
            return int(self.client.zcard(key) if until is None else self.client.zcount(key, "-inf", until))

    def workers(self) -> list[tuple[str, dict[str, Any] | None]]:
        """Registered workers with their last heartbeat status (None when it lapsed)."""
        with redis_errors("listing workers", f"{self.keys.workers} or a worker heartbeat"):
            ids = sorted(_text(w) for w in self.client.smembers(self.keys.workers))
            beats = self.client.mget([self.keys.heartbeat(w) for w in ids]) if ids else []
        return [(w, read_status(b) if b else None) for w, b in zip(ids, beats, strict=False)]

    def heartbeat_of(self, worker: str) -> dict[str, Any] | None:
        """One worker's heartbeat status, or None if it lapsed."""
        with redis_errors("reading heartbeat"):
            raw = self.client.get(self.keys.heartbeat(worker))
        return read_status(raw) if raw else None

    def counts(self) -> dict[str, int]:
        """Dead letters, unregistered tokens and lifetime outcome totals."""
        with redis_errors("reading counts", f"{self.keys.dead}, {self.keys.unregistered} or {self.keys.stats}"):
            p = self.client.pipeline(transaction=False)
            p.llen(self.keys.dead)
            p.hlen(self.keys.unregistered)
            p.hgetall(self.keys.stats)
            dead, unreg, totals = p.execute()
        out = {"dead": int(dead), "unregistered": int(unreg)}
        # a count another program set to something else is left out rather than failing every reader
        out.update({f"total_{_text(k)}": int(v) for k, v in totals.items() if _raw(v).isdigit()})
        return out

    def dead_entries(self, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` dead-letter entries."""
        with redis_errors("reading dead letters", self.keys.dead):
            return [read_dead_entry(e) for e in self.client.lrange(self.keys.dead, 0, count - 1)]

    def _select_dead(self, limit: int | None, reason: str | None) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Dead entries, newest first, whose reason starts with ``reason``; at most ``limit`` (None: all)."""
        if limit is not None and limit <= 0:
            return
        found = 0
        for raw in self._dead_pages():
            entry = read_dead_entry(raw)
            if reason and not str(entry.get("reason", "")).startswith(reason):
                continue
            yield raw, entry
            found += 1
            if limit is not None and found >= limit:
                return

    def _dead_pages(self, page: int = 1000) -> Iterator[Any]:
        """The dead list, newest first, read a page at a time (it may hold millions of entries)."""
        start = 0
        while True:
            raws = self.client.lrange(self.keys.dead, start, start + page - 1)
            yield from raws
            if len(raws) < page:
                return
            start += page

    def dead_matching(self, limit: int, reason: str | None) -> list[dict[str, Any]]:
        """The newest ``limit`` dead entries whose reason starts with ``reason`` (all entries when None)."""
        with redis_errors("reading dead letters", self.keys.dead):
            return [entry for _, entry in self._select_dead(limit, reason)]

    def purge_dead(
        self, limit: int | None, reason: str | None, dry_run: bool = False, reasons: Counter[str] | None = None
    ) -> int:
        """Delete up to ``limit`` (None: all) dead entries with a reason prefix; counts them by reason."""
        removed = 0
        with redis_errors("purging dead letters", self.keys.dead):
            for raw, entry in list(self._select_dead(limit, reason)):
                if dry_run or self.client.lrem(self.keys.dead, 1, raw):
                    removed += 1
                    if reasons is not None:
                        reasons[str(entry.get("reason", ""))] += 1
        return removed

    def requeue_dead(
        self,
        queue_for: dict[str, str],
        default_queue: str,
        limit: int | None,
        reason: str | None,
        dry_run: bool = False,
        reasons: Counter[str] | None = None,
        lanes: Collection[str] = (),
    ) -> int:
        """Move up to ``limit`` (None: all) dead entries (optionally only a reason prefix) back onto their app's
        queue; with ``dry_run`` only count them. Counts by reason go into ``reasons``. An entry that names
        its lane (``queue``) goes back onto that lane when it is one of ``lanes`` (the configured ones)."""
        moved = 0
        with redis_errors("requeueing dead letters", f"{self.keys.dead} or a queue"):
            for raw, entry in list(self._select_dead(None, reason)):
                if limit is not None and moved >= limit:
                    break
                if not isinstance(entry.get("job"), str):
                    continue  # nothing to requeue: leave it for `dead list` and `dead purge`
                if dry_run or self._requeue_one(raw, entry, queue_for, default_queue, lanes):
                    moved += 1
                    if reasons is not None:
                        reasons[str(entry.get("reason", ""))] += 1
        return moved

    def _requeue_one(
        self, raw: Any, entry: dict[str, Any], queue_for: dict[str, str], default_queue: str, lanes: Collection[str]
    ) -> bool:
        """Move one dead entry's job onto its lane or app's queue; False when another requeuer took it first."""
        app = entry.get("app")
        queue, job = queue_for.get(app if isinstance(app, str) else "", default_queue), entry["job"].encode()
        wrong = str(entry.get("reason", "")).startswith(WRONG_QUEUE)  # its lane is another app's: the app's queue
        if isinstance(entry.get("queue"), str) and entry["queue"] in lanes and not wrong:
            queue = entry["queue"]  # only a configured lane: a dead entry never names a key to write to
        if self._other_slot(queue):
            # No transaction across slots: push first, so a crash can only requeue twice;
            # if another requeuer removed the entry meanwhile, take our copy back.
            self.client.lpush(queue, job)
            if self.client.lrem(self.keys.dead, 1, raw):
                return True
            self.client.lrem(queue, 1, job)
            return False
        return bool(self._requeue_dead(keys=[self.keys.dead, queue], args=[raw, job]))

    def unregistered(self, tokens: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Unregistered-token entries (all, or just the given tokens)."""
        with redis_errors("reading unregistered tokens", self.keys.unregistered):
            if tokens is None:
                items = self.client.hgetall(self.keys.unregistered).items()
                return {_text(k): read_object(v) or {} for k, v in items}
            values = self.client.hmget(self.keys.unregistered, tokens) if tokens else []
        return {t: read_object(v) or {} for t, v in zip(tokens, values, strict=False) if v}

    def channels_gone(self) -> dict[str, dict[str, Any]]:
        """Broadcast channels APNs answered ChannelNotRegistered for: channel id → entry."""
        with redis_errors("reading gone channels", self.keys.channels_gone):
            items = self.client.hgetall(self.keys.channels_gone).items()
        return {_text(k): read_object(v) or {} for k, v in items}

    def channels_gone_count(self) -> int:
        """How many channel ids the channels-gone store holds."""
        with redis_errors("reading gone channels", self.keys.channels_gone):
            return int(self.client.hlen(self.keys.channels_gone))

    def forget_channels(self, channels: list[str]) -> int:
        """Remove channel ids from the channels-gone store; returns how many were there."""
        if not channels:
            return 0
        with redis_errors("forgetting gone channels", self.keys.channels_gone):
            return int(self.client.hdel(self.keys.channels_gone, *channels))

    def forget_unregistered(self, tokens: list[str]) -> int:
        """Remove tokens from the unregistered store (the application has pruned them); returns how many were there."""
        if not tokens:
            return 0
        with redis_errors("forgetting unregistered tokens", self.keys.unregistered):
            return int(self.client.hdel(self.keys.unregistered, *tokens))


def _text(value: bytes | str) -> str:
    """A Redis reply as text (our clients return bytes; redis-py's types also allow str); bytes that are not
    UTF-8 (another program wrote them: apnsd writes only text) read as U+FFFD instead of raising."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _raw(value: bytes | str) -> bytes:
    """A Redis reply as bytes."""
    return value if isinstance(value, bytes) else value.encode()


UNREADABLE_DEAD = {"reason": "(unreadable dead letter)"}


def read_object(raw: bytes | str) -> dict[str, Any] | None:
    """A stored JSON object (dead letter, heartbeat, unregistered entry); None when another program wrote
    something else there."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than the decoder goes
        return None
    return value if isinstance(value, dict) else None


def read_dead_entry(raw: bytes | str) -> dict[str, Any]:
    """A dead letter as a dict; one that is not a JSON object reads as unreadable."""
    entry = read_object(raw)
    return dict(UNREADABLE_DEAD) if entry is None else entry


def read_status(raw: bytes | str) -> dict[str, Any]:
    """A heartbeat's status; {} when the key holds something else (the worker is alive, its status unreadable)."""
    return read_object(raw) or {}
