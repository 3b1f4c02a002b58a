"""`apnsd channels create|list|get|delete`: an app's Live Activity broadcast channels, via Apple's management API."""

from __future__ import annotations

import argparse
import sys

import msgspec

from apnsd.config import Config
from apnsd.core.jobs import parse_channel_id
from apnsd.errors import JobError


def add_channels_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `apnsd channels`."""
    p.add_argument("action", choices=["create", "list", "get", "delete"])
    p.add_argument("channel", nargs="?", help="the channel id (base64) for get and delete")
    p.add_argument("--app", help="the configured app whose credentials to use (default: default or the only one)")
    p.add_argument(
        "--policy",
        type=int,
        choices=[0, 1],
        default=0,
        help="create: message-storage policy, 0 = no message stored (default; frequent updates), "
        "1 = most recent message stored (up to 8 hours, for devices offline)",
    )
    env = p.add_mutually_exclusive_group()
    env.add_argument("--sandbox", action="store_const", const="sandbox", dest="environment", help="Apple's sandbox")
    env.add_argument("--production", action="store_const", const="production", dest="environment")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for each answer (default 15)")


def run_channels(args: argparse.Namespace, config: Config) -> int:
    """Do the action and print one line per channel (id, tab, policy); 1 when Apple refuses, 2 on bad usage."""
    from apnsd import logs
    from apnsd.cli.send import pick_app
    from apnsd.gateway.channels import POLICIES, ChannelApiError, ChannelManager

    try:
        name, app = pick_app(config, args.app)
        channel = _channel_argument(args)
        if not 0.1 <= args.timeout <= 300:
            raise ValueError("--timeout must be between 0.1 and 300 seconds")
    except ValueError as exc:
        print(f"apnsd channels: {exc}", file=sys.stderr)
        return 2
    if args.environment:
        app = msgspec.structs.replace(app, environment=args.environment)
    logs.configure("console", "error", sys.stderr)

    def line(cid: str, policy: int) -> str:
        return f"{cid}\t{POLICIES[policy]} ({policy})"

    with ChannelManager(name, app, args.timeout) as channels:
        try:
            if args.action == "create":
                print(line(channels.create(args.policy), args.policy))
            elif args.action == "list":
                for cid in channels.list():
                    print(line(cid, channels.get(cid)["message-storage-policy"]))
            elif args.action == "get":
                print(line(channel, channels.get(channel)["message-storage-policy"]))
            else:
                channels.delete(channel)
                print(f"deleted {channel}")
        except ChannelApiError as exc:
            host, port = channels.gateway
            said = f"{host}:{port} answered " if exc.status is not None else ""
            print(f"apnsd channels {args.action}: {said}{exc}", file=sys.stderr)
            return 1
    return 0


def _channel_argument(args: argparse.Namespace) -> str:
    """The channel id get and delete need (checked like a job's), '' for create and list; ValueError otherwise."""
    if args.action in ("create", "list"):
        if args.channel is not None:
            raise ValueError(f"{args.action} takes no channel id")
        return ""
    if args.channel is None:
        raise ValueError(f"{args.action} needs a channel id")
    try:
        return parse_channel_id(args.channel)
    except JobError as exc:
        raise ValueError(exc.detail) from None
