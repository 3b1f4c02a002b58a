"""What `apnsd stats` shows: queues, workers, dead letters and unregistered tokens, read through the queue adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apnsd.cli.plain import shown
from apnsd.config import Config
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
        "channels_gone": q.channels_gone_count(),
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
            f"  {shown(w['id'])}: {'alive' if w['alive'] else 'DEAD (in-flight jobs will be recovered)'}, "
            f"{w['in_flight']} in flight"
        )
    lines.append(f"dead letters: {data['dead']}    unregistered tokens: {data['unregistered']}")
    if data.get("channels_gone"):
        lines.append(f"gone broadcast channels: {data['channels_gone']}")
    totals = {k[6:]: v for k, v in data.items() if k.startswith("total_")}
    if totals:
        lines.append("lifetime: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    return "\n".join(lines)
