"""What `apnsd stats` and `apnsd health` show, read through the queue adapter."""

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
    lanes = {name: _lanes(config, name, q) for name in queues}
    workers = []
    for wid, status in q.workers():
        inflight = {lane: q.inflight_count(lane, wid) for lane in config.all_lane_keys()}
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
            name: {
                "depth": sum(lane["depth"] for lane in lanes[name].values()),
                "scheduled": sum(lane["scheduled"] for lane in lanes[name].values()),
                "apps": config.queues()[name],
                **({"lanes": lanes[name]} if len(lanes[name]) > 1 else {}),
            }
            for name in queues
        },
        "workers": workers,
        **q.counts(),
    }


def _lanes(config: Config, queue: str, q: JobQueue) -> dict[str, dict[str, Any]]:
    """Each lane of a queue, highest priority first: its name, list key, depth and scheduled jobs."""
    names = next((config.apps[a].lanes for a in config.queues()[queue] if config.apps[a].lanes), ("default",))
    return {
        name: {"key": key, "depth": q.depth(key), "scheduled": q.scheduled_count(key)}
        for name, key in zip(names, config.lanes(queue), strict=True)
    }


def render(data: dict[str, Any]) -> str:
    """The human-readable form of collect()'s result."""
    lines = []
    for name, qd in data["queues"].items():
        lines.append(
            f"queue {name}: {qd['depth']} waiting, {qd['scheduled']} scheduled (apps: {', '.join(qd['apps'])})"
        )
        for lane, ld in qd.get("lanes", {}).items():
            lines.append(f"  lane {lane} ({ld['key']}): {ld['depth']} waiting, {ld['scheduled']} scheduled")
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


def health(config: Config, open_queue: Callable[[Config], JobQueue], liveness: bool = False) -> tuple[bool, str]:
    """(ok, one-line reason): a fresh worker on this host whose heartbeat Redis has and whose connects succeed.

    ``liveness`` checks only that the process is alive (fresh status file, heartbeat in Redis) and ignores the
    gateway side (failed connects, disabled apps): restarting the process fixes neither, it only adds churn.
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
                if a.get("suspended"):
                    return False, f"unhealthy: app {app} is suspended: {a['suspended']}"
                if a.get("last_connect_error"):
                    return False, f"unhealthy: app {app}: last connection attempt failed: {a['last_connect_error']}"
    try:
        q = open_queue(config)
        missing = [s["worker"] for s in fresh if q.heartbeat_of(s["worker"]) is None]
    except QueueError as exc:
        return False, f"unhealthy: {exc}"
    if missing:
        return False, f"unhealthy: heartbeat of {', '.join(missing)} is missing in Redis"
    return True, f"healthy: {len(fresh)} worker(s) alive"
