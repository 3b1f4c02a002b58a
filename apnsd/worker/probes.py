"""The verdicts behind /healthz (liveness) and /readyz (readiness), from what the daemon's threads publish.

Liveness asks only whether this process still works: its loops are running and iterating. It must not
fail because APNs or Redis is down, since restarting the process fixes neither and only adds connection
churn. Readiness asks whether it can deliver now: Redis answers and every app's connection is up, idle,
or still within the first few attempts of its reconnect schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from apnsd.worker.delivery import LoopSnapshot

# A loop publishes every 0.5 s; its longest legitimate pause is a Redis command waiting out its socket
# timeout (a few per iteration at most), so only a far longer silence means it is stuck.
STALL_LIMIT = 60.0
# Consecutive failed connects after which an app no longer counts as "connecting": with the default
# backoff that is a few seconds of failures, longer than a gateway's normal connection turnover.
READY_CONNECT_FAILURES = 3

Verdict = tuple[bool, str]


@dataclass(frozen=True)
class LoopView:
    """One delivery loop as the probes see it: its threads' liveness and its last published snapshot."""

    queue: str
    running: bool  # the loop's thread is alive and has not crashed
    feeder_running: bool
    snapshot: LoopSnapshot


def liveness(loops: list[LoopView], main_beat: float, now: float, stall_limit: float = STALL_LIMIT) -> Verdict:
    """Alive when the main loop and every delivery loop are running and have iterated within ``stall_limit``."""
    if now - main_beat > stall_limit:
        return False, f"dead: the main loop has not iterated for {now - main_beat:.0f} s"
    for lp in loops:
        if not lp.running:
            return False, f"dead: the delivery loop of {lp.queue} has stopped"
        if not lp.feeder_running:
            return False, f"dead: the feeder of {lp.queue} has stopped"
        quiet = now - lp.snapshot.at
        if quiet > stall_limit:
            return False, f"dead: the delivery loop of {lp.queue} has not iterated for {quiet:.0f} s"
    return True, f"alive: {len(loops)} delivery loop(s) running"


def readiness(
    loops: list[LoopView],
    redis_error: str | None,
    stopping: bool,
    alive: Verdict,
    max_failures: int = READY_CONNECT_FAILURES,
) -> Verdict:
    """Ready when alive, not stopping, Redis answered the last check, and no connection is disabled or failing."""
    if not alive[0]:
        return alive
    if stopping:
        return False, "not ready: stopping"
    if redis_error is not None:
        return False, f"not ready: Redis: {redis_error}"
    for lp in loops:
        for name, c in sorted(lp.snapshot.connections.items()):
            if c.disabled:
                return False, f"not ready: app {name} is disabled: {c.disabled}"
            if not c.up and c.failures >= max_failures:
                return False, f"not ready: app {name}: {c.failures} connection attempts failed: {c.last_connect_error}"
    return True, "ready"
