"""What applications import to hand jobs to apnsd: validated enqueue, scheduling, Live Activity broadcasts and
their channels, the unregistered and gone-channel stores.

Every job is checked exactly as the daemon checks it (``JobParser``, with the app's payload limits)
before anything reaches Redis, so a bad job fails in the caller with the reason code the daemon
would have dead-lettered it with. Redis access goes through ``apnsd.store.queue``, its one home.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from apnsd.config import DEFAULT_LANE, LANE_NAME, AppConfig, Config, lane_key, parser_limits
from apnsd.core.jobs import JobParser, normalise_token
from apnsd.errors import ConfigError, JobError
from apnsd.store.layout import Keys
from apnsd.store.queue import JobQueue, client_for, connect

CHUNK = 1000  # jobs per LPUSH in enqueue_many
# Keyword fields enqueue() accepts; anything else is a typo, not a field the daemon would read.
FIELDS = frozenset({"id", "priority", "expiration", "push_type", "topic", "collapse_id", "send_at", "enqueued_at"})

_encode = msgspec.json.encode


class Client:
    """Enqueues validated jobs for apnsd and reads what it reports back about tokens.

    Without ``apps`` every app name is accepted, with HTTP/2 payload limits, and its jobs go to the
    shared queue ``<prefix>:queue``. With ``apps`` (an apnsd config's ``apps`` table, see
    ``from_config``) unknown apps are refused as ``unknown_app`` and each app's protocol limits and
    own ``queue`` apply, as in the daemon.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "apnsd",
        *,
        apps: Mapping[str, AppConfig] | None = None,
        socket_timeout: float = 5.0,
        config: Config | None = None,
    ) -> None:
        redis_client = client_for(config.redis) if config is not None else connect(url, socket_timeout)
        self._jq = JobQueue(redis_client, prefix, f"client:{socket.gethostname()}:{os.getpid()}")
        self._config = config
        self._apps = dict(apps) if apps is not None else None
        self._default_queue = Keys(prefix).default_queue
        # Configured apps share one parser (unknown apps are refused); otherwise one per app name seen.
        self._configured = _parser_for(apps) if apps is not None else None
        self._parsers: dict[str, JobParser] = {}

    @classmethod
    def from_config(cls, config: Any) -> Client:
        """A client for the Redis deployment (plain, Sentinel, Cluster), prefix, apps and queues (shards
        included) of an apnsd ``Config``."""
        return cls(
            config.redis.url,
            config.redis.prefix,
            apps=config.apps,
            socket_timeout=config.redis.socket_timeout,
            config=config,
        )

    def enqueue(
        self,
        token: str | Sequence[str],
        payload: Mapping[str, Any] | str,
        *,
        app: str = "default",
        lane: str | None = None,
        **fields: Any,
    ) -> None:
        """Validate one job and LPUSH it (a list of tokens fans out) onto the app's queue, or one of its
        lanes (``lane="urgent"``); with ``send_at`` it is scheduled instead (and comes back to that lane)."""
        job = self._job(token, payload, app, fields)
        raw = self._validate(job)
        queue = self.queue_for(app, job.get("token", ""), lane)
        if "send_at" in job:
            self._jq.schedule(queue, raw, float(job["send_at"]))
        else:
            self._jq.push(queue, [raw])

    def schedule(
        self,
        token: str | Sequence[str],
        payload: Mapping[str, Any] | str,
        at: float,
        *,
        app: str = "default",
        lane: str | None = None,
        **fields: Any,
    ) -> None:
        """Validate one job and put it in the scheduled set, to be queued (on ``lane``) at unix time ``at``."""
        self.enqueue(token, payload, app=app, lane=lane, send_at=float(at), **fields)

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> int:
        """Validate every job (dicts in the README's job format), then LPUSH them, one command per 1,000.

        Nothing is pushed unless every job is valid; a JobError names the first bad job's index.
        Jobs with ``send_at`` go to the scheduled set. A ``lane`` key picks the job's lane and is not
        pushed with it. Returns how many jobs were enqueued.
        """
        now = time.time()
        by_queue: dict[str, list[bytes]] = {}
        scheduled: list[tuple[str, bytes, float]] = []
        for i, spec in enumerate(jobs):
            if not isinstance(spec, Mapping):
                raise JobError("bad_field", f"job {i}: a job is a mapping of fields, got {type(spec).__name__}")
            job = dict(spec)
            lane = job.pop("lane", None)
            job.setdefault("enqueued_at", now)
            try:
                raw = self._validate(job)
                queue = self.queue_for(job.get("app", "default"), job.get("token", ""), lane)
            except JobError as exc:
                raise JobError(exc.reason, f"job {i}: {exc.detail}") from None
            if "send_at" in job:
                scheduled.append((queue, raw, float(job["send_at"])))
            else:
                by_queue.setdefault(queue, []).append(raw)
        for queue, raws in by_queue.items():
            for start in range(0, len(raws), CHUNK):
                self._jq.push(queue, raws[start : start + CHUNK])
        for queue, raw, at in scheduled:
            self._jq.schedule(queue, raw, at)
        return sum(map(len, by_queue.values())) + len(scheduled)

    def broadcast(self, channel: str, payload: Mapping[str, Any] | str, *, app: str = "default", **fields: Any) -> None:
        """Validate one Live Activity broadcast to every subscriber of ``channel`` and LPUSH it (or schedule it)."""
        job = self._job("", payload, app, fields)
        del job["token"]
        job["channel"] = channel
        raw = self._validate(job)
        queue = self.queue_for(app, channel)
        if "send_at" in job:
            self._jq.schedule(queue, raw, float(job["send_at"]))
        else:
            self._jq.push(queue, [raw])

    def channels(self, app: str = "default", timeout: float = 15.0) -> Any:
        """A ``ChannelManager`` for one configured app: ``create(policy)``, ``get(id)``, ``list()``, ``delete(id)``.

        Needs the app's credentials, so only on a client built ``from_config``; close it (or use ``with``)
        when done, since it keeps its connection to Apple's channel management API open between calls.
        """
        from apnsd.gateway.channels import ChannelManager

        cfg = (self._apps or {}).get(app) if self._config is not None else None
        if cfg is None:
            raise ConfigError(f"apps.{app}", "channel management needs a client built with Client.from_config")
        return ChannelManager(app, cfg, timeout)

    def channels_gone(self) -> dict[str, dict[str, Any]]:
        """Channels APNs answered ChannelNotRegistered for: channel id → {app, reason, status, timestamp_ms, time}."""
        return self._jq.channels_gone()

    def forget_channels(self, channels: Iterable[str]) -> int:
        """Remove channel ids from the gone-channel store once your application has dealt with them."""
        return self._jq.forget_channels(list(channels))

    def unregistered(self, tokens: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Tokens APNs reported gone: token → {app, reason, status, timestamp_ms, time}.

        With ``tokens``, only those (in any form the daemon accepts), keyed as you passed them;
        without, the whole store, keyed by normalised token.
        """
        if tokens is None:
            return self._jq.unregistered()
        normal = {normalise_token(t): t for t in tokens}
        return {normal[t]: info for t, info in self._jq.unregistered(list(normal)).items()}

    def forget_unregistered(self, tokens: Iterable[str]) -> int:
        """Remove tokens from the unregistered store once your application has dealt with them."""
        return self._jq.forget_unregistered([normalise_token(t) for t in tokens])

    def queue_for(self, app: str, token: Any = "", lane: Any = None) -> str:
        """The Redis list an app's jobs go to (with shards, the token picks the shard), or one of its lanes.

        With configured apps a lane the app does not declare is refused (JobError ``bad_field``), as the
        daemon would never take from it; without, any well-formed lane name is accepted."""
        cfg = (self._apps or {}).get(app)
        if self._config is not None and cfg is not None:
            queue = self._config.queue_key(cfg, token if isinstance(token, str) else "")
        else:
            queue = (cfg.queue if cfg is not None and cfg.queue else None) or self._default_queue
        if lane is None or lane == DEFAULT_LANE:
            return queue
        if not isinstance(lane, str) or not LANE_NAME.match(lane):
            raise JobError("bad_field", f"lane {lane!r} is not a lane name (lower case letters, digits, - and _)")
        if cfg is not None and lane not in cfg.lanes:
            declared = ", ".join(cfg.lanes) or "none"
            raise JobError("bad_field", f"app {app!r} has no lane {lane!r} (its lanes: {declared})")
        return lane_key(queue, lane)

    # --- validation --------------------------------------------------------------------------

    def _job(
        self, token: str | Sequence[str], payload: Mapping[str, Any] | str, app: str, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        unknown = sorted(set(fields) - FIELDS)
        if unknown:
            raise JobError(
                "bad_field", f"unknown job field(s) {', '.join(unknown)} (known: {', '.join(sorted(FIELDS))})"
            )
        if not isinstance(token, (str, list, tuple)):
            raise JobError("bad_field", f"token must be a string or a list of strings, got {type(token).__name__}")
        job: dict[str, Any] = {"token": token} if isinstance(token, str) else {"tokens": list(token)}
        job.update(payload=payload, app=app)
        job.update({k: v for k, v in fields.items() if v is not None})
        job.setdefault("enqueued_at", time.time())
        return job

    def _validate(self, job: dict[str, Any]) -> bytes:
        """The job as the bytes to push, or JobError with the daemon's reason for refusing it."""
        at = job.get("send_at")
        if isinstance(at, float) and not math.isfinite(at):  # JSON has none: it would be encoded as null
            raise JobError("bad_field", f"send_at must be a finite unix time, got {at}")
        try:
            problem = _not_json(job, "")
        except RecursionError:  # deeper than Python goes: the encoder refuses it below
            problem = None
        if problem:
            raise JobError("bad_field", problem)
        try:
            raw = _encode(job)
        except (TypeError, UnicodeEncodeError, msgspec.EncodeError) as exc:  # Unicode: a lone surrogate
            raise JobError("bad_field", f"job cannot be encoded as JSON: {exc}") from None
        good, bad = self._parser(job.get("app", "default")).parse(raw)
        if bad:
            raise JobError(bad[0].reason, bad[0].detail)
        if not good:
            raise JobError("missing_token", "job has no token")
        return raw

    def _parser(self, app: Any) -> JobParser:
        if self._configured is not None:
            return self._configured
        name = app if isinstance(app, str) else "default"  # a non-string app is refused as bad_field
        if name not in self._parsers:
            self._parsers[name] = _parser_for({name: AppConfig()})
        return self._parsers[name]


# What JSON holds as itself. msgspec would also encode others, altering them silently: NaN and infinities
# as null, bytes as base64, sets as arrays, dates as text, non-text keys as text.
_JSON_SCALARS = (str, int, type(None))


def _not_json(value: Any, where: str) -> str | None:
    """What in ``value`` (found at field path ``where``) JSON cannot carry as it is; None when all of it can."""
    if isinstance(value, _JSON_SCALARS):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value}, which JSON cannot carry (no NaN or infinity)"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where or 'job'} has the key {key!r}: JSON object keys are text"
            problem = _not_json(item, f"{where}.{key}" if where else key)
            if problem:
                return problem
        return None
    if isinstance(value, list | tuple):
        return next((p for i, item in enumerate(value) if (p := _not_json(item, f"{where}[{i}]"))), None)
    kind = type(value).__name__
    return f"{where} is a {kind}, which JSON cannot carry as it is (text, number, bool, null, list or object)"


def _parser_for(apps: Mapping[str, AppConfig]) -> JobParser:
    """A parser with the daemon's per-app protocol and payload limits."""
    return JobParser(parser_limits(apps))
