"""`apnsd stats --watch`: per queue and per app, live numbers and rates, redrawn in place or as JSON lines."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from apnsd.cli import jsonout
from apnsd.config import Config
from apnsd.errors import QueueError
from apnsd.store.queue import JobQueue
from apnsd.worker.gauges import OldestJob

KINDS = ("delivered", "dead", "unregistered", "retried")
HOME_AND_CLEAR = "\x1b[H\x1b[J"


@dataclass
class Worker:
    """One live worker's last heartbeat: when it was written and its running totals per app."""

    time: float
    totals: dict[str, dict[str, int]]
    rates: dict[str, dict[str, float]] = field(default_factory=dict)  # per app, over its last interval


@dataclass
class Reading:
    """Everything one refresh shows, read from Redis (queues, heartbeats of the live workers)."""

    wall: float
    queues: dict[str, dict[str, Any]]
    apps: dict[str, dict[str, Any]]
    workers: dict[str, Worker]
    dead_workers: int
    dead: int
    unregistered: int
    rates: dict[str, dict[str, float | None]] = field(default_factory=dict)


def read(config: Config, q: JobQueue, oldest: OldestJob) -> Reading:
    """One reading: depth, scheduled, oldest age and in flight per queue; connections and totals per app."""
    now = time.time()
    queues: dict[str, dict[str, Any]] = {
        name: {
            "apps": apps,
            "depth": q.depth(name),
            "scheduled": q.scheduled_count(name),
            "oldest_age": round(oldest.age(name, q.oldest(name), now), 3),
            "in_flight": 0,
        }
        for name, apps in config.queues().items()
    }
    apps: dict[str, dict[str, Any]] = {
        name: {"connections": 0, "configured": app.connections} for name, app in config.apps.items()
    }
    workers: dict[str, Worker] = {}
    dead_workers = 0
    for wid, status in q.workers():
        if status is None:
            dead_workers += 1
            continue
        try:  # a heartbeat is another process's JSON (maybe another version): read it defensively
            workers[wid] = Worker(float(status.get("time", 0.0)), _totals(status.get("outcomes")))
            for name, qs in (status.get("queues") or {}).items():
                if name in queues:
                    queues[name]["in_flight"] += int(qs.get("in_flight", 0))
                for key, a in (qs.get("apps") or {}).items():
                    app = str(key).split("#")[0]
                    if app in apps and a.get("connected"):
                        apps[app]["connections"] += 1
        except (AttributeError, TypeError, ValueError):
            continue
    counts = q.counts()
    return Reading(now, queues, apps, workers, dead_workers, counts["dead"], counts["unregistered"])


def _totals(raw: Any) -> dict[str, dict[str, int]]:
    """A heartbeat's per-app running totals, keeping only numbers."""
    if not isinstance(raw, dict):
        return {}
    return {
        str(app): {str(k): int(v) for k, v in per.items() if isinstance(v, int | float) and math.isfinite(v)}
        for app, per in raw.items()
        if isinstance(per, dict)
    }


def add_rates(prev: Reading | None, cur: Reading) -> None:
    """Per app and kind, notifications per second over each live worker's last heartbeat interval.

    Heartbeats carry running totals and come every worker.heartbeat_interval: a worker whose heartbeat
    has not changed since the previous refresh keeps the rate of its last interval. None on the first.
    """
    for app in cur.apps:
        cur.rates[app] = dict.fromkeys(KINDS, None if prev is None else 0.0)
    if prev is None:
        return
    for wid, w in cur.workers.items():
        before = prev.workers.get(wid)
        if before is None:
            continue
        if w.time <= before.time:
            w.rates = before.rates
        else:
            dt = w.time - before.time
            w.rates = {
                app: {k: max(0, totals.get(k, 0) - before.totals.get(app, {}).get(k, 0)) / dt for k in KINDS}
                for app, totals in w.totals.items()
            }
        for app, per in w.rates.items():
            if app in cur.rates:
                for k, v in per.items():
                    cur.rates[app][k] = (cur.rates[app][k] or 0.0) + v


def as_json(r: Reading) -> dict[str, Any]:
    """One refresh as a JSON object."""
    return {
        "time": round(r.wall, 3),
        "queues": r.queues,
        "apps": {
            a: {**v, "per_second": {k: None if x is None else round(x, 2) for k, x in r.rates[a].items()}}
            for a, v in r.apps.items()
        },
        "workers": {"alive": len(r.workers), "dead": r.dead_workers},
        "dead": r.dead,
        "unregistered": r.unregistered,
    }


def _age(seconds: float) -> str:
    """0.5s, 3.2m, 1.5h; - for an empty queue."""
    return (
        "-"
        if not seconds
        else f"{seconds:.1f}s"
        if seconds < 60
        else f"{seconds / 60:.1f}m"
        if seconds < 3600
        else f"{seconds / 3600:.1f}h"
    )


def _rate(v: float | None) -> str:
    """A rate with one decimal; - before there are two readings."""
    return "-" if v is None else f"{v:,.1f}"


def render(r: Reading, every: float) -> str:
    """The compact table of one refresh."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.wall))
    lines = [
        f"apnsd stats  {when} UTC  every {every:g}s  workers {len(r.workers)} alive, {r.dead_workers} dead  "
        f"dead letters {r.dead}  unregistered {r.unregistered}",
        "",
        f"{'QUEUE':<24} {'WAITING':>9} {'SCHEDULED':>9} {'OLDEST':>8} {'IN FLIGHT':>9}",
    ]
    for name, qd in r.queues.items():
        lines.append(
            f"{name[:24]:<24} {qd['depth']:>9,} {qd['scheduled']:>9,} {_age(qd['oldest_age']):>8} {qd['in_flight']:>9,}"
        )
    lines += ["", f"{'APP':<16} {'CONN':>5} {'DELIVERED/s':>11} {'DEAD/s':>8} {'UNREG/s':>8} {'RETRIED/s':>9}"]
    for app, a in r.apps.items():
        rates = r.rates.get(app, {})
        conn = f"{a['connections']}/{a['configured']}"
        lines.append(
            f"{app[:16]:<16} {conn:>5} {_rate(rates.get('delivered')):>11} {_rate(rates.get('dead')):>8}"
            f" {_rate(rates.get('unregistered')):>8} {_rate(rates.get('retried')):>9}"
        )
    return "\n".join(lines)


def watch(
    config: Config,
    q: JobQueue,
    every: float,
    json_lines: bool,
    out: TextIO,
    refreshes: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Refresh every ``every`` seconds until Ctrl-C (or ``refreshes`` times): redraw on a terminal, else append."""
    try:
        return _refresh(config, q, every, json_lines, out, refreshes, sleep)
    except KeyboardInterrupt:  # the way a watch ends
        return 0


def _refresh(
    config: Config,
    q: JobQueue,
    every: float,
    json_lines: bool,
    out: TextIO,
    refreshes: int | None,
    sleep: Callable[[float], None],
) -> int:
    oldest = OldestJob()
    live = not json_lines and out.isatty()
    prev: Reading | None = None
    n = 0
    while refreshes is None or n < refreshes:
        if n:
            sleep(every)
        try:
            cur = read(config, q, oldest)
        except QueueError as exc:
            if prev is None:
                raise  # nothing read yet: a wrong URL or password, not an outage to sit through
            _say_unavailable(exc, every, json_lines, live, out)
            n += 1
            continue
        add_rates(prev, cur)
        if json_lines:
            out.write(jsonout.dumps(as_json(cur)) + "\n")
        else:
            out.write((HOME_AND_CLEAR if live else "\n" if n else "") + render(cur, every) + "\n")
        out.flush()
        prev = cur
        n += 1
    return 0


def _say_unavailable(exc: QueueError, every: float, json_lines: bool, live: bool, out: TextIO) -> None:
    """A refresh that could not read Redis (a restart, a failover): say so and try again at the next one."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    if json_lines:
        out.write(jsonout.dumps({"time": round(time.time(), 3), "error": str(exc)}) + "\n")
    else:
        out.write((HOME_AND_CLEAR if live else "\n") + f"apnsd stats  {when} UTC  {exc}; retrying every {every:g}s\n")
    out.flush()
