"""`apnsd send`: one notification straight to the gateway with an app's credentials, no Redis; prints the answer."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import msgspec

from apnsd.config import AppConfig, Config
from apnsd.core.jobs import Notification
from apnsd.gateway.oneshot import OneShot

# What an operator should do about the answers a first push most often gets.
ADVICE = {
    "BadDeviceToken": "the token is malformed or from the other environment: debug builds from Xcode register "
    'sandbox tokens (use --sandbox or environment = "sandbox"), TestFlight/App Store builds production ones',
    "DeviceTokenNotForTopic": "the token belongs to another app: set topic to the bundle id of the app that "
    "registered it",
    "TopicDisallowed": "the credentials may not push to this topic (bundle id)",
    "BadTopic": "the topic is not valid for this push type (voip needs the .voip suffix, ...)",
    "MissingTopic": "set topic to the app's bundle id",
    "InvalidProviderToken": "Apple does not accept the token: check key_id (the 10-character Key ID of the .p8), "
    "team_id (the Team ID) and that the .p8 key was not revoked",
    "MissingProviderToken": "the gateway wants token (.p8) authentication or a client certificate",
    "ExpiredProviderToken": "the provider token is older than an hour: is the clock of this machine right?",
    "BadCertificate": "the gateway does not accept the client certificate",
    "BadCertificateEnvironment": "the certificate is for the other environment: switch --sandbox/--production",
    "Forbidden": "the credentials are not allowed to push for this app",
    "Unregistered": "the app was removed from that device, or it no longer accepts notifications",
    "PayloadTooLarge": "the payload is over the size limit",
}


def add_send_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `apnsd send`."""
    p.add_argument("--token", "-t", required=True, help="device token (hex)")
    p.add_argument(
        "--app", help="the configured app whose credentials and gateway to use (default: default or the only one)"
    )
    p.add_argument("--alert", "-a", help="alert body text")
    p.add_argument("--title", help="alert title")
    p.add_argument("--badge", type=int)
    p.add_argument("--sound")
    p.add_argument("--data", help="JSON object merged into the payload beside aps (custom data)")
    p.add_argument("--push-type", help="apns-push-type (alert, background, voip, ...)")
    p.add_argument("--topic", help="apns-topic (default: the app's topic or its certificate's bundle id)")
    p.add_argument("--priority", type=int)
    env = p.add_mutually_exclusive_group()
    env.add_argument("--sandbox", action="store_const", const="sandbox", dest="environment", help="Apple's sandbox")
    env.add_argument("--production", action="store_const", const="production", dest="environment")
    p.add_argument("--timeout", type=_seconds, default=15.0, help="seconds to wait for the answer (default 15)")


def _seconds(text: str) -> float:
    """--timeout: a finite number of seconds between 0.1 and 300."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.1 <= value <= 300:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0.1 and 300")
    return value


def pick_app(config: Config, name: str | None) -> tuple[str, AppConfig]:
    """The app named, else "default", else the only configured one; ValueError says which exist."""
    if name is None:
        name = "default" if "default" in config.apps or len(config.apps) != 1 else next(iter(config.apps))
    if name not in config.apps:
        raise ValueError(f"app {name!r} is not configured (configured: {', '.join(sorted(config.apps))})")
    return name, config.apps[name]


def build_payload(args: argparse.Namespace) -> dict[str, Any]:
    """The APNs payload the options describe; ValueError when --data is not a JSON object."""
    aps: dict[str, Any] = {}
    if args.title is not None:
        aps["alert"] = {"title": args.title, **({"body": args.alert} if args.alert is not None else {})}
    elif args.alert is not None:
        aps["alert"] = args.alert
    if args.badge is not None:
        aps["badge"] = args.badge
    if args.sound is not None:
        aps["sound"] = args.sound
    if args.push_type == "background" and not aps:
        aps["content-available"] = 1
    payload: dict[str, Any] = {}
    if args.data:
        try:
            data = msgspec.json.decode(args.data)
        except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested deeper than the decoder goes
            raise ValueError(f"--data is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("--data must be a JSON object")
        payload.update(data)
    payload["aps"] = aps
    return payload


def notification_for(config: Config, name: str, job: dict[str, Any]) -> Notification:
    """Validate a job exactly like the daemon; ValueError with the reason when it is refused."""
    from apnsd.gateway.apps import make_parser

    good, bad = make_parser(config).parse(msgspec.json.encode(job))
    if bad:
        raise ValueError(f"{bad[0].reason}: {bad[0].detail}")
    return good[0]


def run_send(args: argparse.Namespace, config: Config) -> int:
    """Send one notification and print status, reason, apns-id and round trip; 0 only on 200."""
    from apnsd import logs
    from apnsd.gateway.apps import build_session, load_credentials, validity_problem
    from apnsd.gateway.oneshot import send_one

    try:
        name, app = pick_app(config, args.app)
        if args.environment:
            app = msgspec.structs.replace(app, environment=args.environment)
            config = msgspec.structs.replace(config, apps={**config.apps, name: app})
        job: dict[str, Any] = {"token": args.token, "app": name, "payload": build_payload(args)}
        for key in ("push_type", "topic", "priority"):
            if getattr(args, key) is not None:
                job[key] = getattr(args, key)
        note = notification_for(config, name, job)
    except ValueError as exc:
        print(f"apnsd send: {exc}", file=sys.stderr)
        return 2
    logs.configure("console", "warning", sys.stderr)
    creds = load_credentials(name, app)
    problem = validity_problem(creds)
    if problem:
        print(f"apnsd send: app {name!r}: {problem}", file=sys.stderr)
        return 1
    host, port = app.gateway()
    print(f"app {name}: {app.protocol}, {app.environment}, gateway {host}:{port}" + _via(app))
    result = send_one(build_session(name, app, creds), note, args.timeout)
    print_result(result, app.protocol)
    return 0 if result.outcome is not None and result.outcome.status == 200 else 1


def _via(app: AppConfig) -> str:
    from apnsd.proxy import redact

    return f" via proxy {redact(app.proxy)}" if app.proxy else ""


def print_result(result: OneShot, protocol: str) -> None:
    """The answer as aligned lines, with advice for the common rejections."""
    o = result.outcome
    if o is None:
        print(f"  error         {result.error}")
        if result.connect_time is None:  # never connected: no request went out, so no apns-id or round trip
            print(f"  gave up after {result.round_trip * 1000:.1f} ms")
            return
    elif protocol == "binary" and o.status == 200:
        print("  status        accepted (binary protocol: no error response within confirm_delay)")
    else:
        print(f"  status        {o.status}")
        print(f"  reason        {o.reason or '-'}")
        if o.reason in ADVICE:
            print(f"  meaning       {ADVICE[o.reason]}")
    print(f"  apns-id       {result.apns_id}")
    connect = f" (connect {result.connect_time * 1000:.1f} ms)" if result.connect_time is not None else ""
    print(f"  round trip    {result.round_trip * 1000:.1f} ms{connect}")
