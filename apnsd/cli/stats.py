"""What `apnsd stats`, `apnsd dead` and `apnsd health` show, read through the queue adapter."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apnsd.config import Config
from apnsd.errors import QueueError
from apnsd.store.queue import JobQueue


def collect(config: Config, open_queue: Callable[[Config], JobQueue]) -> dict[str, Any]:
    """Queue depths, scheduled, in-flight per worker, live/dead workers, dead letters, unregistered."""
    q = open_queue(config)
    queues = list(config.queues())
    workers = []
    for wid, status in q.workers():
        inflight = {name: q.inflight_count(name, wid) for name in queues}
        workers.append(
            {
                "id": wid,
                "alive": status is not None,
                "in_flight": sum(inflight.values()),
                "last_heartbeat": status.get("time") if status else None,
            }
        )
    return {
        "queues": {
            name: {"depth": q.depth(name), "scheduled": q.scheduled_count(name), "apps": config.queues()[name]}
            for name in queues
        },
        "workers": workers,
        **q.counts(),
    }


def render(data: dict[str, Any]) -> str:
    """The human-readable form of collect()'s result."""
    lines = []
    for name, qd in data["queues"].items():
        lines.append(
            f"queue {name}: {qd['depth']} waiting, {qd['scheduled']} scheduled (apps: {', '.join(qd['apps'])})"
        )
    live = [w for w in data["workers"] if w["alive"]]
    lines.append(f"workers: {len(live)} alive, {len(data['workers']) - len(live)} dead")
    for w in data["workers"]:
        lines.append(
            f"  {w['id']}: {'alive' if w['alive'] else 'DEAD (in-flight jobs will be recovered)'}, {w['in_flight']} in flight"
        )
    lines.append(f"dead letters: {data['dead']}    unregistered tokens: {data['unregistered']}")
    totals = {k[6:]: v for k, v in data.items() if k.startswith("total_")}
    if totals:
        lines.append("lifetime: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    return "\n".join(lines)


def dead_list(config: Config, q: JobQueue, limit: int, reason: str | None, as_json: bool) -> int:
    """Print the newest dead letters."""
    entries = [
        e
        for e in q.dead_entries(limit if not reason else 10_000)
        if not reason or str(e.get("reason", "")).startswith(reason)
    ][:limit]
    for e in entries:
        if as_json:
            print(json.dumps(e))
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("time") or 0))
            token = (e.get("token") or "")[:8]
            print(
                f"{when}  {e.get('app') or '-':<10} {e.get('reason')}"
                + (f" (status {e['status']})" if e.get("status") else "")
                + (f" token {token}…" if token else "")
                + (f": {e['detail']}" if e.get("detail") else "")
            )
    if not as_json:
        print(f"({len(entries)} shown, {q.counts()['dead']} in {q.keys.dead})")
    return 0


def dead_requeue(config: Config, q: JobQueue, limit: int, reason: str | None) -> int:
    """Put dead letters back on their queue."""
    queue_for = {name: config.queue_key(app) for name, app in config.apps.items()}
    moved = q.requeue_dead(queue_for, queue_for.get("default") or next(iter(config.queues())), limit, reason)
    print(f"requeued {moved} job(s)")
    return 0


def health(config: Config, open_queue: Callable[[Config], JobQueue], liveness: bool = False) -> tuple[bool, str]:
    """(ok, one-line reason): a fresh worker on this host whose heartbeat Redis has and whose connects succeed.

    ``liveness`` checks only that the process is alive (a fresh status file, which its main loop writes every
    heartbeat whether or not Redis answers) and ignores Redis and the gateway side (failed connects, disabled
    apps): restarting the process fixes none of them, it only adds churn.
    """
    state = Path(config.worker.state_dir)
    ttl = config.worker.heartbeat_ttl
    now = time.time()
    fresh = []
    for f in sorted(state.glob("worker-*.json")):
        try:
            status = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if now - float(status.get("time", 0)) <= ttl:
            fresh.append(status)
    if not fresh:
        return False, f"unhealthy: no worker has written a fresh status to {state} in the last {ttl:.0f} s"
    for status in [] if liveness else fresh:
        if not status.get("redis", False):
            return False, f"unhealthy: worker {status['worker']} cannot reach Redis: {status.get('redis_error', '')}"
        for queue in status.get("queues", {}).values():
            for app, a in queue.get("apps", {}).items():
                if a.get("disabled"):
                    return False, f"unhealthy: app {app} is disabled: {a['disabled']}"
                if a.get("last_connect_error"):
                    return False, f"unhealthy: app {app}: last connection attempt failed: {a['last_connect_error']}"
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
