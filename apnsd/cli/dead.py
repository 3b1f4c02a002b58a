"""`apnsd dead list | requeue | purge`: inspect dead letters, put them back on their queue, or delete them."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

from apnsd.cli import jsonout
from apnsd.cli.plain import shown
from apnsd.config import Config
from apnsd.store.queue import JobQueue


def add_dead_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `apnsd dead`."""
    p.add_argument("action", choices=["list", "requeue", "purge"])
    p.add_argument("--reason", help="only entries whose reason starts with this (e.g. app_disabled, BadDeviceToken)")
    p.add_argument("--limit", type=int, help="list: how many to show (default 20); requeue/purge: at most this many")
    p.add_argument("--all", action="store_true", help="requeue/purge: every matching entry")
    p.add_argument("--dry-run", action="store_true", help="requeue/purge: only count what would be moved or deleted")
    p.add_argument("--json", action="store_true", help="list: one JSON entry per line")


def usage_problem(args: argparse.Namespace) -> str | None:
    """Why the options do not make sense together (requeue/purge need --all or --limit N), or None."""
    if args.limit is not None and args.limit < 1:
        return "--limit must be at least 1"
    if args.action != "list" and args.all == (args.limit is not None):
        return f"{args.action} needs exactly one of --all or --limit N (add --dry-run to only count)"
    if args.action == "list" and (args.all or args.dry_run):
        return "--all and --dry-run are for requeue and purge"
    return None


def run_dead(args: argparse.Namespace, config: Config, q: JobQueue) -> int:
    """Carry out one `apnsd dead` action (options already checked by usage_problem)."""
    if args.action == "list":
        return dead_list(q, args.limit or 20, args.reason, args.json)
    limit = None if args.all else args.limit
    reasons: Counter[str] = Counter()
    if args.action == "requeue":
        queue_for = {name: config.queue_key(app) for name, app in config.apps.items()}
        default = queue_for.get("default") or next(iter(config.queues()))
        lanes = set(config.all_lane_keys())
        count = q.requeue_dead(queue_for, default, limit, args.reason, args.dry_run, reasons, lanes)
        verb = "would requeue" if args.dry_run else "requeued"
    else:
        count = q.purge_dead(limit, args.reason, args.dry_run, reasons)
        verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {count} job(s)" + (", by reason:" if reasons else ""))
    for reason, n in reasons.most_common():
        print(f"  {n:>8}  {shown(reason)}")
    return 0


def dead_list(q: JobQueue, limit: int, reason: str | None, as_json: bool) -> int:
    """Print the newest dead letters."""
    entries = q.dead_matching(limit, reason)
    for e in entries:
        if as_json:
            print(jsonout.dumps(e))
        else:
            print(_line(e))
    if not as_json:
        print(f"({len(entries)} shown, {q.counts()['dead']} in {q.keys.dead})")
    return 0


def _line(e: dict[str, Any]) -> str:
    """One dead letter as a line; fields of the wrong type (another program's entries) are shown, never fatal."""
    stamp = e.get("time")
    when = "????-??-?? ??:??:??"
    if type(stamp) in (int, float):
        try:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))
        except (ValueError, OverflowError, OSError):  # NaN, or beyond what a date holds
            pass
    token = e.get("token")
    token = token[:8] if isinstance(token, str) else ""
    return (
        f"{when}  {shown(e.get('app') or '-'):<10} {shown(e.get('reason'))}"
        + (f" (status {shown(e['status'])})" if e.get("status") else "")
        + (f" token {shown(token)}…" if token else "")
        + (f": {shown(e['detail'])}" if e.get("detail") else "")
    )
