"""`apnsd health` (the exec form): this host's worker status files and heartbeats, as an exit code and one line."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from apnsd.cli.plain import shown
from apnsd.config import Config, state_dir
from apnsd.errors import QueueError
from apnsd.store.queue import JobQueue


def health(config: Config, open_queue: Callable[[Config], JobQueue], liveness: bool = False) -> tuple[bool, str]:
    """(ok, one-line reason): a fresh worker on this host whose heartbeat Redis has and whose connects succeed.

    ``liveness`` checks only that the process is alive (a fresh status file, which its main loop writes every
    heartbeat whether or not Redis answers) and ignores Redis and the gateway side (failed connects, disabled
    apps): restarting the process fixes none of them, it only adds churn.
    """
    state = state_dir(config.worker)
    ttl = config.worker.heartbeat_ttl
    now = time.time()
    fresh = []
    for f in sorted(state.glob("worker-*.json")):
        try:
            status = json.loads(f.read_text())
        except (OSError, ValueError, RecursionError):
            continue
        # A file apnsd did not write (another version, another program): unreadable, not a traceback.
        stamp = status.get("time") if isinstance(status, dict) else None
        if not isinstance(stamp, int | float) or isinstance(stamp, bool) or not isinstance(status.get("worker"), str):
            continue
        if math.isfinite(stamp) and now - stamp <= ttl and _apps_of(status) is not None:
            fresh.append(status)
    if not fresh:
        return False, f"unhealthy: no worker has written a fresh status to {state} in the last {ttl:.0f} s"
    for status in [] if liveness else fresh:
        if not status.get("redis", False):
            return False, shown(
                f"unhealthy: worker {status['worker']} cannot reach Redis: {status.get('redis_error', '')}"
            )
        for app, a in _apps_of(status) or []:
            if a.get("disabled"):
                return False, shown(f"unhealthy: app {app} is disabled: {a['disabled']}")
            if a.get("suspended"):
                return False, shown(f"unhealthy: app {app} is suspended: {a['suspended']}")
            if a.get("last_connect_error"):
                return False, shown(f"unhealthy: app {app}: last connection attempt failed: {a['last_connect_error']}")
    if liveness:
        return True, f"healthy: {len(fresh)} worker(s) alive"
    try:
        q = open_queue(config)
        missing = [s["worker"] for s in fresh if q.heartbeat_of(s["worker"]) is None]
    except QueueError as exc:
        return False, f"unhealthy: {exc}"
    if missing:
        return False, f"unhealthy: heartbeat of {', '.join(missing)} is missing in Redis"
    return True, f"healthy: {len(fresh)} worker(s) alive"


def _apps_of(status: dict[str, Any]) -> list[tuple[str, dict[str, Any]]] | None:
    """(connection, its state) for each app connection of a worker status; None when the status does not have
    the shape apnsd writes (another version, another program): such a file counts as no status."""
    queues = status.get("queues", {})
    if not isinstance(queues, dict) or not all(isinstance(q, dict) for q in queues.values()):
        return None
    apps = [q.get("apps", {}) for q in queues.values()]
    if not all(isinstance(a, dict) and all(isinstance(v, dict) for v in a.values()) for a in apps):
        return None
    return [(str(name), state) for a in apps for name, state in a.items()]
