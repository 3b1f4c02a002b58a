"""The `apnsd` command: run, demo, push, send, check, channels, mock, stats, dead, health."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from apnsd import __version__
from apnsd.core.headers import is_utf8
from apnsd.errors import ApnsdError

LOG_LEVELS = ("debug", "info", "warning", "error")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    garbled = _not_utf8(args)
    if garbled:
        print(f"apnsd {args.command}: --{garbled.replace('_', '-')} is not UTF-8 text", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except ApnsdError as exc:
        print(f"apnsd {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `apnsd dead list | head`: the reader has all it wanted
        _silence_stdout()
        return EXIT_BROKEN_PIPE


EXIT_BROKEN_PIPE = 141  # what a shell reports for a program ended by SIGPIPE, as `cat big | head` does


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not hit the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file (an embedding application, a test capture)
        pass


# Options naming files: the OS takes any bytes there (Python keeps them as surrogate escapes, and hands them back).
PATH_OPTIONS = frozenset({"config", "pki_dir", "cert", "key", "client_ca", "jwt_key", "feedback", "record"})


def _not_utf8(args: argparse.Namespace) -> str | None:
    """The first text option holding bytes that are not UTF-8 (a Latin-1 terminal): no job or request carries them."""
    for name, value in vars(args).items():
        if name in PATH_OPTIONS:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and not is_utf8(item):
                return name
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apnsd", description="Apple push notifications from a Redis list.")
    p.add_argument("--version", action="version", version=f"apnsd {__version__}")
    sub = p.add_subparsers(dest="command")

    def cmd(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        if name != "mock":
            sp.add_argument("--config", "-c", help="TOML config (default: $APNSD_CONFIG, then /etc/apnsd/apnsd.toml)")
        return sp

    r = cmd("run", _run, "Run the daemon (refuses to start without a config file or APNSD_* variables).")
    r.add_argument("--drain", action="store_true", help="exit 0 once the queue is empty and every job has its outcome")
    r.add_argument(
        "--log-level", type=str.lower, choices=LOG_LEVELS, help="override log.level (any case: DEBUG, info, ...)"
    )

    dm = sub.add_parser(
        "demo",
        help="A throwaway local redis-server and mock gateway, sample jobs delivered by the daemon.",
        description="A throwaway local redis-server and mock gateway, sample jobs delivered by the daemon. "
        "Never touches your configuration or Apple.",
    )
    dm.set_defaults(func=_demo)
    dm.add_argument("--drain", action="store_true", help="stop and print a summary once every job has its outcome")
    dm.add_argument("--jobs", type=int, default=1000, help="sample jobs to enqueue (plus three deliberately bad ones)")

    ps = cmd("push", _push, "Enqueue one notification job from the shell.")
    target = ps.add_mutually_exclusive_group(required=True)
    target.add_argument("--token", "-t", action="append", help="device token (hex); repeat to fan out")
    target.add_argument("--channel", help="a Live Activity broadcast channel id (base64) instead of tokens")
    ps.add_argument("--alert", "-a", help="alert text")
    ps.add_argument("--badge", type=int)
    ps.add_argument("--sound")
    ps.add_argument("--payload", help="raw payload JSON (instead of --alert/--badge/--sound)")
    ps.add_argument("--app", default="default")
    ps.add_argument("--lane", help="push onto one of the app's lanes (its `lanes` setting), e.g. urgent or bulk")
    ps.add_argument("--topic")
    ps.add_argument("--push-type")
    ps.add_argument("--priority", type=int)
    ps.add_argument("--expiration", type=int)
    ps.add_argument("--collapse-id")
    ps.add_argument("--id")
    ps.add_argument("--at", type=_send_at, help="send later: unix seconds, or +SECONDS from now")

    ck = cmd(
        "check", _check, "Check config and credentials (certificate subject, topics, environment, expiry, key match)."
    )
    ck.add_argument("--connect", action="store_true", help="also resolve, connect and complete the TLS handshake")
    ck.add_argument(
        "--probe",
        action="store_true",
        help="also send one real request with a dummy token per app: 400 BadDeviceToken proves the credentials work",
    )

    from apnsd.cli.send import add_send_arguments

    add_send_arguments(
        cmd("send", _send, "Send one notification straight to the gateway with an app's credentials (no Redis).")
    )

    st = cmd("stats", _stats, "Queue depths, in-flight jobs, workers, dead letters, unregistered tokens.")
    st.add_argument("--json", action="store_true", help="JSON (with --watch: one object per line and refresh)")
    st.add_argument(
        "--watch",
        type=_interval,
        metavar="SECONDS",
        help="refresh every SECONDS: per queue and app, rates, depth, oldest-job age, in flight, connections",
    )

    from apnsd.cli.dead import add_dead_arguments

    add_dead_arguments(cmd("dead", _dead, "List, requeue or purge dead-lettered jobs."))

    hc = cmd("health", _health, "Exit 0 when this host's worker is alive and its last connection attempt did not fail.")
    hc.add_argument(
        "--liveness",
        action="store_true",
        help="only check that the worker is alive (fresh status, heartbeat in Redis); ignore gateway failures",
    )
    hc.add_argument(
        "--http",
        action="store_true",
        help="ask the running daemon's metrics listener instead: /healthz with --liveness, else /readyz",
    )

    from apnsd.cli.channels import add_channels_arguments

    add_channels_arguments(
        cmd("channels", _channels, "Create, list, read or delete an app's Live Activity broadcast channels.")
    )

    from apnsd.cli.mock import add_mock_arguments

    add_mock_arguments(cmd("mock", None, "Run a local fake APNs gateway (binary or HTTP/2) over TLS."))
    return p


LAST_SEND_AT = 253_402_300_800.0  # 10000-01-01T00:00:00Z; time.localtime() overflows not far beyond


def _send_at(text: str) -> float:
    """--at as an absolute unix time: unix seconds, or +SECONDS from now."""
    try:
        at = time.time() + float(text[1:]) if text.startswith("+") else float(text)
    except ValueError:
        at = math.nan
    if not math.isfinite(at):
        raise argparse.ArgumentTypeError(f"{text!r} is neither unix seconds nor +SECONDS")
    if not at < LAST_SEND_AT:  # checked before anything is pushed: the confirmation prints the date
        raise argparse.ArgumentTypeError(f"{text!r} is after the year 9999")
    return at


def _load(args: argparse.Namespace) -> Any:
    from apnsd.config import find_config_path, load_config

    return load_config(find_config_path(args.config, os.environ))


NO_CONFIG = """apnsd run: no configuration found: no --config, no $APNSD_CONFIG, no /etc/apnsd/apnsd.toml
and no APNSD_* variables. Write a config file (config/apnsd.toml for certificates and
config/token-auth.toml for a .p8 key are ready examples) and pass it with --config.
To see apnsd work without Apple or your own Redis: apnsd demo --drain"""


def _run(args: argparse.Namespace) -> int:
    import msgspec

    from apnsd import logs
    from apnsd.config import find_config_path, has_env_overrides, load_config
    from apnsd.worker.daemon import Daemon

    path = find_config_path(args.config, os.environ)
    if path is None and not has_env_overrides(os.environ):
        print(NO_CONFIG, file=sys.stderr)
        return 2
    config = load_config(path)
    if args.log_level:
        config = msgspec.structs.replace(config, log=msgspec.structs.replace(config.log, level=args.log_level))
    logs.configure(config.log.format, config.log.level)
    return Daemon(config, drain=args.drain).run()


def _demo(args: argparse.Namespace) -> int:
    from apnsd.cli.demo import run_demo

    if not 0 <= args.jobs <= 1_000_000:
        print("apnsd demo: --jobs must be between 0 and 1000000", file=sys.stderr)
        return 2
    return run_demo(args.jobs, drain=args.drain)


def _queue(config: Any) -> Any:
    from apnsd.store.queue import JobQueue, client_for
    from apnsd.worker.daemon import default_worker_id

    return JobQueue(client_for(config.redis), config.redis.prefix, "cli:" + default_worker_id())


def _push(args: argparse.Namespace) -> int:
    import msgspec

    config = _load(args)
    if args.app not in config.apps:
        print(f"apnsd push: app {args.app!r} is not configured", file=sys.stderr)
        return 2
    if args.payload:
        try:
            payload = msgspec.json.decode(args.payload)
        except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested deeper than the decoder goes
            print(f"apnsd push: --payload is not valid JSON: {exc}", file=sys.stderr)
            return 2
    else:
        aps = {k: v for k, v in (("alert", args.alert), ("badge", args.badge), ("sound", args.sound)) if v is not None}
        payload = {"aps": aps}
    job: dict[str, Any] = {"payload": payload, "app": args.app, "enqueued_at": time.time()}
    if args.channel is not None:
        job["channel"] = args.channel
    else:
        job.update({"token": args.token[0]} if len(args.token) == 1 else {"tokens": args.token})
    for key in ("topic", "push_type", "priority", "expiration", "collapse_id", "id"):
        if getattr(args, key) is not None:
            job[key] = getattr(args, key)
    from apnsd.config import lane_key, parser_limits
    from apnsd.core.jobs import JobParser

    app = config.apps[args.app]
    good, bad = JobParser(parser_limits({args.app: app})).parse(msgspec.json.encode(job))
    if bad:
        print(f"apnsd push: {bad[0].reason}: {bad[0].detail}", file=sys.stderr)
        return 2
    if args.lane is not None and args.lane != "default" and args.lane not in app.lanes:
        declared = ", ".join(app.lanes) or "none: set lanes in its config"
        print(f"apnsd push: app {args.app!r} has no lane {args.lane!r} (its lanes: {declared})", file=sys.stderr)
        return 2
    q = _queue(config)
    queue = lane_key(config.queue_key(app, args.channel or args.token[0]), args.lane or "default")
    if args.at is not None:
        at = args.at
        job["send_at"] = at
        q.schedule(queue, msgspec.json.encode(job), at)
        print(
            f"scheduled 1 job on {q.keys.scheduled(queue)} for {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))}"
        )
    else:
        depth = q.push(queue, [msgspec.json.encode(job)])
        what = "a broadcast" if args.channel is not None else f"{len(good)} notification(s)"
        print(f"queued 1 job ({what}) on {queue}; depth now {depth}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from apnsd.cli.check import run_check

    if args.probe:
        from apnsd import logs

        logs.configure("console", "error", sys.stderr)
    return run_check(_load(args), args.connect, sys.stdout, probe=args.probe, redis=True)


def _send(args: argparse.Namespace) -> int:
    from apnsd.cli.send import run_send

    return run_send(args, _load(args))


def _channels(args: argparse.Namespace) -> int:
    from apnsd.cli.channels import run_channels

    return run_channels(args, _load(args))


def _interval(text: str) -> float:
    """--watch SECONDS: a finite number of seconds, at least 0.1."""
    try:
        every = float(text)
    except ValueError:
        every = math.nan
    if not math.isfinite(every) or every < 0.1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds of at least 0.1")
    return every


def _stats(args: argparse.Namespace) -> int:
    from apnsd.cli import jsonout
    from apnsd.cli.stats import collect, render

    if args.watch is not None:
        from apnsd.cli.watch import watch

        config = _load(args)
        return watch(config, _queue(config), args.watch, args.json, sys.stdout)
    data = collect(_load(args), _queue)
    print(jsonout.dumps(data, indent=2) if args.json else render(data))
    return 0


def _dead(args: argparse.Namespace) -> int:
    from apnsd.cli.dead import run_dead, usage_problem

    problem = usage_problem(args)
    if problem:
        print(f"apnsd dead: {problem}", file=sys.stderr)
        return 2
    config = _load(args)
    return run_dead(args, config, _queue(config))


def _health(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.http:  # what container health checks run every few seconds: keep it light
        from apnsd.cli.health_http import http_health

        ok, reason = http_health(config, args.liveness)
    else:
        from apnsd.cli.health import health

        ok, reason = health(config, _queue, liveness=args.liveness)
    print(reason)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
