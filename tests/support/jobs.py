"""Jobs as applications push them, and the waits and checks the end-to-end tests share."""

from __future__ import annotations

import io
import random
import threading
from typing import Any

import msgspec
import redis

from apnsd.config import Config
from apnsd.store.queue import JobQueue
from apnsd.worker.daemon import Daemon

LOG = io.StringIO()
"""Every log line of the test session, as JSON (configured once by the conftest)."""


def job(token: str, **extra: Any) -> bytes:
    """One job as an application would LPUSH it."""
    return msgspec.json.encode({"token": token, "payload": {"aps": {"alert": "hello"}}, **extra})


def good_tokens(n: int, seed: int = 1) -> list[str]:
    """``n`` distinct valid tokens, deterministic per seed, all starting with "a" so that no fault
    prefix ("bad0", "dead", …) can match one by chance."""
    rng = random.Random(seed)
    return [f"a{rng.getrandbits(252):063x}" for _ in range(n)]


def push_all(q: JobQueue, jobs: list[bytes], queue: str = "apnsd:queue") -> None:
    """LPUSH jobs in chunks of 1,000, oldest first."""
    for i in range(0, len(jobs), 1000):
        q.push(queue, jobs[i : i + 1000])


def run_drained(config: Config, timeout: float = 120.0) -> int:
    """Run the daemon in-process (a thread) until the queue is drained; returns its exit code."""
    result: list[int] = []
    d = Daemon(config, drain=True)
    t = threading.Thread(target=lambda: result.append(d.run()), daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        d.request_stop()
        t.join(30)
        raise AssertionError(f"daemon did not drain within {timeout} s")
    return result[0]


def inflight_keys(rdb: redis.Redis) -> list[bytes]:
    """Every in-flight storage key left in Redis (hashes, index sets, batch lists)."""
    return list(rdb.scan_iter(match="*:inflight*"))


def inflight_batches(rdb: redis.Redis) -> int:
    """How many in-flight batches Redis holds, in either form: fields of the in-flight hashes, and batch lists."""
    fields = sum(int(rdb.hlen(k)) for k in rdb.scan_iter(match="*:inflight:*"))
    return fields + len(list(rdb.scan_iter(match="*:inflight-batch:*")))
