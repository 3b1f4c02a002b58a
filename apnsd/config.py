"""One TOML file plus APNSD_* environment overrides, validated once into a frozen tree."""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import tomllib
import typing
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from apnsd.core.headers import check_topic
from apnsd.errors import ConfigError, JobError
from apnsd.proxy import parse_proxy, proxy_from_env

GATEWAYS = {
    ("http2", "production"): ("api.push.apple.com", 443),
    ("http2", "sandbox"): ("api.sandbox.push.apple.com", 443),
}
# Apple retired the binary interface (2021-03-31) and its hosts: binary apps name their gateway (a mock, a
# compatible gateway); these are only the protocol's customary ports.
BINARY_PORT, FEEDBACK_PORT = 2195, 2196
BINARY_NEEDS_HOST = 'protocol = "binary" needs an explicit host: Apple\'s binary gateways were retired in 2021'
# Apple's channel management API (create, read, list, delete broadcast channels): its own hosts and ports.
CHANNEL_GATEWAYS = {
    "production": ("api-manage-broadcast.push.apple.com", 2196),
    "sandbox": ("api-manage-broadcast.sandbox.push.apple.com", 2195),
}
PAYLOAD_LIMITS = {"binary": 2048, "http2": 4096}
MAX_TOKEN_REFRESH = 3300.0  # below Apple's 3600 s token lifetime, with room for clock skew
VOIP_PAYLOAD_LIMIT = 5120
STOP_MARGIN = 5.0  # seconds past grace_period + block_timeout a stop may take to write the last outcomes and close


MAX_FILE_BYTES = 16 * 1024 * 1024  # a config, secret or credential file; a larger one is a mistake (a disk image)


def read_file(path: str | Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """A file's bytes, read at most ``limit`` + 1 bytes far: a larger one (a disk image, ``/dev/zero``) is refused,
    as is a directory. A pipe is read like a file, so ``--config <(envsubst < apnsd.toml.in)`` and secrets on
    ``/dev/stdin`` work; a named pipe no program writes to reads as empty instead of waiting. Errors are OSError
    with a readable strerror."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: opening a FIFO must not wait
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        os.set_blocking(fd, True)  # a writer's data is waited for; with no writer at all, read() ends at once
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        size = f"{limit >> 20} MiB" if limit and not limit % (1 << 20) else f"{limit} bytes"
        raise OSError(errno.EFBIG, f"larger than {size}")
    return data


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base for config sections: immutable, and unknown keys are an error rather than ignored."""


def tagged_prefix(prefix: str, cluster: bool) -> str:
    """The prefix key names start with. In cluster mode it is wrapped as a hash tag (``{apnsd}``) so that the
    shared keys (dead, unregistered, results, stats, workers, heartbeats) live in one slot."""
    return f"{{{prefix}}}" if cluster and not has_hash_tag(prefix) else prefix


def has_hash_tag(key: str) -> bool:
    """True when Redis Cluster hashes only part of ``key``: a non-empty ``{...}`` (the first ``{`` and the
    next ``}``)."""
    start = key.find("{")
    return start >= 0 and key.find("}", start + 1) > start + 1


class RedisConfig(_Section, frozen=True):
    """Where the queue lives (one server, Sentinel or Cluster) and how its keys are named."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "apnsd"
    socket_timeout: float = 5.0
    results_stream: bool = False
    results_maxlen: int = 100_000
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    sentinels: tuple[str, ...] = ()
    service: str = "mymaster"
    sentinel_password: str = ""
    cluster: bool = False
    shards: int = 0

    @property
    def key_prefix(self) -> str:
        """The prefix key names start with (``tagged_prefix``)."""
        return tagged_prefix(self.prefix, self.cluster)


class WorkerConfig(_Section, frozen=True):
    """How one worker process takes, holds and returns jobs."""

    id: str = ""
    batch_size: int = 1000
    max_in_flight: int = 64_000
    block_timeout: float = 1.0
    grace_period: float = 20.0
    heartbeat_interval: float = 5.0
    heartbeat_ttl: float = 30.0
    recover_interval: float = 10.0
    state_dir: str = ""  # empty: default_state_dir()
    lane_poll: float = 0.05

    @property
    def stop_allowance(self) -> float:
        """The longest a graceful stop takes: the grace period, a last take coming back, and closing up."""
        return self.grace_period + self.block_timeout + STOP_MARGIN


def state_dir(w: WorkerConfig, env: Mapping[str, str] | None = None) -> Path:
    """The worker's state directory: configured, else private to the user (never a shared path in /tmp).

    $XDG_STATE_HOME/apnsd or ~/.local/state/apnsd when the home directory exists; else (containers,
    system users without a home) /tmp/apnsd-<uid>, which the daemon creates 0700 and refuses when another
    user owns it.
    """
    if w.state_dir:
        return Path(w.state_dir)
    env = os.environ if env is None else env
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "apnsd"
    home = Path(env.get("HOME", "") or "/nonexistent")
    if env.get("HOME") and home.is_dir() and os.access(home, os.W_OK):
        return home / ".local" / "state" / "apnsd"
    return Path(f"/tmp/apnsd-{os.geteuid()}")


class MetricsConfig(_Section, frozen=True):
    """The Prometheus endpoint; an empty listen address turns it off."""

    listen: str = "127.0.0.1:9464"


class LogConfig(_Section, frozen=True):
    """Log format and level."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class AppConfig(_Section, frozen=True):
    """One application: its credentials, gateway, queue and delivery policy."""

    protocol: Literal["http2", "binary"] = "http2"
    environment: Literal["production", "sandbox"] = "production"
    host: str = ""
    port: int = 0
    queue: str = ""
    topic: str = ""
    cert: str = ""
    key: str = ""
    pkcs12: str = ""
    passphrase: str = ""
    ca_file: str = ""
    token_key: str = ""
    key_id: str = ""
    team_id: str = ""
    token_refresh: float = 3000.0
    payload_limit: int = 0
    connect_timeout: float = 10.0
    reconnect_interval: float = 10_800.0
    max_connects_per_minute: int = 6
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    max_attempts: int = 0
    retry_backoff: float = 2.0
    outage_backoff: float = 60.0
    outage_backoff_max: float = 900.0
    throttle_delay: float = 60.0
    retry_for: float = 86_400.0
    ping_interval: float = 3600.0
    ping_timeout: float = 15.0
    stall_timeout: float = 10.0
    confirm_delay: float = 0.3
    standby_connections: int = 2
    feedback_interval: float = 0.0
    feedback_host: str = ""
    feedback_port: int = 0
    channels_host: str = ""
    channels_port: int = 0
    connections: int = 1
    proxy: str = ""
    mismatch_guard_answers: int = 100
    mismatch_guard_window: float = 300.0
    mismatch_guard_park: float = 15.0
    credential_probe_interval: float = 300.0
    lanes: tuple[str, ...] = ()
    lower_lane_every: int = 10
    lane_window: int = 1000
    max_rate: float = 0.0
    lane_max_rate: dict[str, float] = msgspec.field(default_factory=dict)

    @property
    def auth(self) -> Literal["token", "certificate"]:
        """Token auth when a .p8 key is configured, certificate auth otherwise."""
        return "token" if self.token_key else "certificate"

    def gateway(self) -> tuple[str, int]:
        """The host and port to connect to: configured, or Apple's HTTP/2 gateway for the environment."""
        if self.protocol == "binary":
            if not self.host:
                raise ConfigError("host", BINARY_NEEDS_HOST)
            return (self.host, self.port or BINARY_PORT)
        host, port = GATEWAYS[(self.protocol, self.environment)]
        return (self.host or host, self.port or port)

    def feedback_gateway(self) -> tuple[str, int]:
        """The binary feedback service's host and port: feedback_host (else host), port 2196 unless set."""
        host = self.feedback_host or self.host
        if not host:
            raise ConfigError("feedback_host", BINARY_NEEDS_HOST)
        return (host, self.feedback_port or FEEDBACK_PORT)

    def channels_gateway(self) -> tuple[str, int]:
        """The channel management API's host and port: configured, else Apple's for the environment."""
        host, port = CHANNEL_GATEWAYS[self.environment]
        return (self.channels_host or self.host or host, self.channels_port or port)

    def payload_limit_for(self, push_type: str | None) -> int:
        """The largest payload in bytes this app may send for the given push type."""
        if self.payload_limit:
            return self.payload_limit
        if self.protocol == "http2" and push_type == "voip":
            return VOIP_PAYLOAD_LIMIT
        return PAYLOAD_LIMITS[self.protocol]


def parser_limits(apps: Mapping[str, AppConfig]) -> dict[str, tuple[str, int, int]]:
    """What the job parser knows of each app: protocol, payload limit, voip payload limit."""
    return {
        name: (app.protocol, app.payload_limit_for(None), app.payload_limit_for("voip")) for name, app in apps.items()
    }


class Config(_Section, frozen=True):
    """The whole validated configuration."""

    redis: RedisConfig = RedisConfig()
    worker: WorkerConfig = WorkerConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    apps: dict[str, AppConfig] = msgspec.field(default_factory=lambda: {"default": AppConfig()})
    source: str = ""

    def queue_keys(self, app: AppConfig) -> list[str]:
        """Every Redis list an app's jobs are taken from: its own queue, the shared queue, or the
        shard queues ``<prefix>:{0}:queue`` … (each shard its own hash tag, so its own cluster slot)."""
        if app.queue:
            return [app.queue]
        if self.redis.shards:
            bare = self.redis.prefix.replace("{", "").replace("}", "")
            return [f"{bare}:{{{i}}}:queue" for i in range(self.redis.shards)]
        return [f"{self.redis.key_prefix}:queue"]

    def queue_key(self, app: AppConfig, token: str = "") -> str:
        """The Redis list to push an app's job onto; with shards, picked by a hash of the token."""
        keys = self.queue_keys(app)
        return keys[zlib.crc32(token.encode()) % len(keys)] if token else keys[0]

    def queues(self) -> dict[str, list[str]]:
        """Map each queue key to the names of the apps that read it."""
        out: dict[str, list[str]] = {}
        for name, app in self.apps.items():
            for key in self.queue_keys(app):
                out.setdefault(key, []).append(name)
        return out

    def lanes(self, queue: str) -> list[str]:
        """A queue's lane keys, highest priority first: just ``[queue]`` when its apps declare no lanes."""
        names = next((self.apps[a].lanes for a in self.queues().get(queue, []) if self.apps[a].lanes), ())
        return [lane_key(queue, lane) for lane in names] or [queue]

    def lane_rates(self, queue: str) -> tuple[float, list[float]]:
        """A queue's throttle: its ``max_rate`` and each lane's (0 = unlimited), shared out among an app's shards."""
        apps = [self.apps[a] for a in self.queues().get(queue, [])]
        app = next((a for a in apps if a.max_rate or a.lane_max_rate), None)
        if app is None:
            return 0.0, [0.0] * len(self.lanes(queue))
        share = len(self.queue_keys(app))  # shard queues split the app's rate evenly (tokens hash evenly)
        names = app.lanes or ("default",)
        return app.max_rate / share, [app.lane_max_rate.get(lane, 0.0) / share for lane in names]

    def all_lane_keys(self) -> list[str]:
        """Every list apnsd takes from: each queue's lanes."""
        return [key for queue in self.queues() for key in self.lanes(queue)]


DEFAULT_LANE = "default"
LANE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# suffixes apnsd itself puts after a queue key
RESERVED_LANES = ("scheduled", "inflight", "inflight-batch", "inflight-batches", "throttle", "written")


def lane_key(queue: str, lane: str) -> str:
    """The Redis list of one lane: the queue key itself for the default lane, ``<queue>:<lane>`` otherwise.

    The suffix keeps a queue's hash tag, so in cluster mode every lane shares its queue's slot."""
    return queue if lane == DEFAULT_LANE else f"{queue}:{lane}"


_SECTIONS = ("redis", "worker", "metrics", "log")
_SECTION_TYPES: dict[str, type] = {
    "redis": RedisConfig,
    "worker": WorkerConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
}
_PATH_KEYS = ("cert", "key", "pkcs12", "ca_file", "token_key")
# Keys whose value is a secret: each may instead be read from a file, ``<key>_file`` in TOML or
# APNSD_…_<KEY>_FILE in the environment, as container platforms mount secrets.
SECRET_KEYS: dict[str, tuple[str, ...]] = {"redis": ("url", "sentinel_password"), "apps": ("passphrase", "proxy")}
_REDIS_PATH_KEYS = ("ssl_ca_file", "ssl_cert_file", "ssl_key_file")


def find_config_path(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """The config file to read: --config, then $APNSD_CONFIG, then /etc/apnsd/apnsd.toml if present."""
    if explicit:
        return explicit
    if env.get("APNSD_CONFIG"):
        return env["APNSD_CONFIG"]
    default = Path("/etc/apnsd/apnsd.toml")
    return str(default) if default.is_file() else None


def has_env_overrides(env: Mapping[str, str]) -> bool:
    """True when any APNSD_* variable other than APNSD_CONFIG is set."""
    return any(k.startswith("APNSD_") and k != "APNSD_CONFIG" for k in env)


def load_config(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment and validate; raises ConfigError naming the key."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path:
        # Errors about the file name what named it: the variable when the path came from there.
        origin = "APNSD_CONFIG" if env.get("APNSD_CONFIG") == path else "--config"
        try:
            raw = tomllib.loads(read_file(path).decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(origin, f"file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(origin, f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(origin, f"{path} is not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(origin, f"{path} is not UTF-8 text") from None
        base = Path(path).resolve().parent
    _apply_env(raw, env)
    _read_secret_files(raw, base)
    log = raw.get("log")
    if isinstance(log, dict) and isinstance(log.get("level"), str):
        log["level"] = log["level"].lower()  # DEBUG, Info and debug are the same level
    raw_apps = raw.pop("apps", None)
    try:
        config = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(*_split_validation(str(exc))) from None
    apps = {
        name: _env_proxy(_resolve_paths(app, base), env) for name, app in _convert_apps(raw_apps, config.apps).items()
    }
    config = msgspec.structs.replace(
        config, redis=_resolve_paths(config.redis, base, _REDIS_PATH_KEYS), apps=apps, source=path or ""
    )
    validate(config)
    return config


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Overlay APNSD_<SECTION>_<KEY> and APNSD_APP_<NAME>_<KEY> onto the parsed TOML."""
    app_keys = sorted(AppConfig.__struct_fields__, key=len, reverse=True)
    for var, value in env.items():
        if not var.startswith("APNSD_") or var == "APNSD_CONFIG":
            continue
        rest = var[len("APNSD_") :].lower()
        if rest.startswith("app_"):
            name_key = rest[len("app_") :]
            secret = _secret_file_key(name_key, SECRET_KEYS["apps"])
            key = secret or next((k for k in app_keys if name_key.endswith("_" + k)), None)
            if key is None:
                raise ConfigError(var, f"ends in no known app key (one of: {', '.join(sorted(app_keys))})")
            name = name_key[: -len(key) - 1]
            table = raw.setdefault("apps", {}).setdefault(name, {})
            _set_env(table, key, value if secret else _env_value(AppConfig, key, value))
            continue
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            raise ConfigError(
                var,
                "is not a known setting "
                "(APNSD_REDIS_*, APNSD_WORKER_*, APNSD_METRICS_*, APNSD_LOG_*, APNSD_APP_<NAME>_*)",
            )
        secret = _secret_file_key("_" + key, SECRET_KEYS.get(section, ()))
        table = raw.setdefault(section, {})
        _set_env(table, key, value if secret else _env_value(_SECTION_TYPES[section], key, value))


def _secret_file_key(name_key: str, secrets: tuple[str, ...]) -> str | None:
    """``passphrase_file`` when ``name_key`` (e.g. ``default_passphrase_file``) names a secret's file key."""
    return next((f"{k}_file" for k in secrets if name_key.endswith(f"_{k}_file")), None)


def _set_env(table: dict[str, Any], key: str, value: Any) -> None:
    """Set a key from the environment; a secret and its ``_file`` twin replace each other (the environment wins)."""
    if not isinstance(table, dict):
        return  # a malformed TOML table: conversion names it
    secret = key.removesuffix("_file")
    if secret in (*SECRET_KEYS["redis"], *SECRET_KEYS["apps"]):
        table.pop(secret if key.endswith("_file") else f"{key}_file", None)
    table[key] = value


def _read_secret_files(raw: dict[str, Any], base: Path) -> None:
    """Replace each ``<secret>_file`` key by the file's content (without its trailing newline)."""
    tables: list[tuple[str, Any, tuple[str, ...]]] = [("redis", raw.get("redis"), SECRET_KEYS["redis"])]
    apps = raw.get("apps")
    if isinstance(apps, dict):
        tables += [(f"apps.{name}", table, SECRET_KEYS["apps"]) for name, table in apps.items()]
    for where, table, secrets in tables:
        if not isinstance(table, dict):
            continue
        for key in secrets:
            path = table.pop(f"{key}_file", None)
            if path is None:
                continue
            name = f"{where}.{key}_file"
            _require(isinstance(path, str) and bool(path), name, "must be the path of a file")
            _require(not table.get(key), name, f"set {key} or {key}_file, not both")
            file = base / path
            try:
                value = read_file(file).decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise ConfigError(name, f"{file} is not UTF-8 text") from None
            except OSError as exc:
                raise ConfigError(name, f"cannot read {file}: {exc.strerror or exc}") from None
            except ValueError:  # the OS takes no NUL byte in a path
                raise ConfigError(name, "must be the path of a file (it holds a NUL character)") from None
            _require(bool(value), name, f"{file} is empty")
            table[key] = value


def _env_value(section: type, key: str, value: str) -> str | list[str]:
    """A list-typed key (``sentinels``) is written as comma-separated items in the environment."""
    hint = typing.get_type_hints(section).get(key)
    if typing.get_origin(hint) in (list, tuple):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _convert_apps(raw_apps: Any, default: dict[str, AppConfig]) -> dict[str, AppConfig]:
    """Validate each [apps.<name>] table on its own, so that errors name the app (msgspec hides dict keys)."""
    if raw_apps is None:
        return default
    if not isinstance(raw_apps, dict):
        raise ConfigError("apps", "must be a table of [apps.<name>] tables")
    apps: dict[str, AppConfig] = {}
    for name, table in raw_apps.items():
        try:
            apps[name] = msgspec.convert(table, AppConfig, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(*_split_validation(str(exc), f"apps.{name}")) from None
    return apps


_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(.*)`$")


def _split_validation(message: str, base: str = "") -> tuple[str, str]:
    """Turn msgspec's 'problem - at `$.a.b`' into ('a.b', 'problem'); an unknown field is named in the key."""
    problem, sep, where = message.rpartition(" - at `")
    if not sep:
        problem, where = message, ""
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    unknown = _UNKNOWN_FIELD.match(problem)
    if unknown:
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        problem = "is not a known key"
    key = ".".join(part for part in (base, path) if part)
    return (key or "config", problem)


def _env_proxy(app: AppConfig, env: Mapping[str, str]) -> AppConfig:
    """An app without its own ``proxy`` uses HTTPS_PROXY unless NO_PROXY exempts its gateway host."""
    if app.proxy or (app.protocol == "binary" and not app.host):  # the latter is reported by validation
        return app
    proxy = proxy_from_env(*app.gateway(), env)
    if not proxy:
        return app
    try:
        parse_proxy(proxy)
    except ValueError as exc:
        raise ConfigError("HTTPS_PROXY", str(exc)) from None
    return msgspec.structs.replace(app, proxy=proxy)


_S = typing.TypeVar("_S", bound=_Section)


def _resolve_paths(section: _S, base: Path, keys: tuple[str, ...] = _PATH_KEYS) -> _S:
    """Make credential paths absolute, relative to the config file's folder."""
    changes = {k: str(base / v) for k in keys if (v := getattr(section, k)) and not os.path.isabs(v)}
    return msgspec.structs.replace(section, **changes) if changes else section


_URL_SECRET = re.compile(r"(?i)([?&](?:password|pass|pwd|auth|token)=)[^&#]*")


def redact_url(url: str) -> str:
    """A Redis URL fit for logs: the userinfo's password and any password-like query value replaced by ***."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0] or ("@" in rest and "?" not in rest.split("@")[0]):
        user = rest.rpartition("@")[0].partition(":")[0]
        rest = f"{user + ':' if user else ''}***@{rest.rpartition('@')[2]}"
    return scheme + sep + _URL_SECRET.sub(r"\1***", rest)


def _printable(value: str) -> bool:
    """True for text without control characters or spaces (Redis key names, worker ids)."""
    return value.isprintable() and " " not in value


def require_credentials(config: Config) -> None:
    """Every app has a certificate (``cert`` or ``pkcs12``) or a token key: what delivering needs.

    Not part of ``validate``: ``apnsd push``, ``stats`` and the Python client read the same config
    without needing the credentials. A mistyped ``APNSD_APP_<NAME>_…`` variable creates an app with
    none, and is caught here.
    """
    for name, app in config.apps.items():
        _require(
            bool(app.cert or app.pkcs12 or app.token_key),
            f"apps.{name}",
            "has no credentials: set cert (PEM), pkcs12 or token_key (a misspelt APNSD_APP_<NAME>_* variable "
            "creates an app of its own)",
        )


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


REDIS_INT_MAX = 2**63 - 1  # Redis refuses larger integer arguments (XTRIM MAXLEN): every commit would fail
MAX_SECONDS = 1_000_000.0  # every duration setting; larger ones overflow timers (and mean a typo)
_HOST = re.compile(r"[A-Za-z0-9._-]+|\[?[0-9A-Fa-f:.]+\]?")


_NOT_SECONDS = frozenset({"max_rate"})  # float settings that are rates, checked with their own rules


def _validate_numbers(section: _Section, base: str) -> None:
    """Every float setting but a rate is a duration in seconds: finite (no nan or inf) and within range."""
    for name in section.__struct_fields__:
        value = getattr(section, name)
        if type(value) is float and name not in _NOT_SECONDS:
            _require(
                math.isfinite(value) and 0 <= value <= MAX_SECONDS,
                f"{base}.{name}",
                f"must be a finite number of seconds from 0 to {MAX_SECONDS:.0f}, got {value}",
            )


def validate(config: Config) -> None:
    """Check ranges and combinations that types alone cannot express."""
    for name in _SECTIONS:
        _validate_numbers(getattr(config, name), name)
    for name, app in config.apps.items():
        _validate_numbers(app, f"apps.{name}")
    w = config.worker
    _require(1 <= w.batch_size <= 10_000, "worker.batch_size", "must be between 1 and 10000")
    _require(w.max_in_flight >= w.batch_size, "worker.max_in_flight", "must be at least worker.batch_size")
    _require(0.05 <= w.block_timeout <= 30, "worker.block_timeout", "must be between 0.05 and 30 seconds")
    _require(w.grace_period > 0, "worker.grace_period", "must be positive")
    _require(0.005 <= w.lane_poll <= 1, "worker.lane_poll", "must be between 0.005 and 1 second")
    _require(
        0 < w.heartbeat_interval < w.heartbeat_ttl,
        "worker.heartbeat_ttl",
        "must be larger than worker.heartbeat_interval",
    )
    _require(w.heartbeat_interval > 0, "worker.heartbeat_interval", "must be positive")
    _require(w.recover_interval > 0, "worker.recover_interval", "must be positive")
    _require(w.max_in_flight <= 10_000_000, "worker.max_in_flight", "must be at most 10000000")
    _require(_printable(w.id), "worker.id", "must be printable text without spaces")
    _validate_redis(config)
    _validate_paths(config.redis, "redis", _REDIS_PATH_KEYS)
    _validate_paths(w, "worker", ("state_dir",))
    for name, app in config.apps.items():
        _validate_paths(app, f"apps.{name}", _PATH_KEYS)
    if config.metrics.listen:
        _host, sep, port = config.metrics.listen.rpartition(":")
        _require(
            bool(sep) and port.isdigit() and 0 < int(port) < 65536,
            "metrics.listen",
            "must be host:port, or empty to turn metrics off",
        )
    _require(bool(config.apps), "apps", "at least one app must be configured")
    for name, app in config.apps.items():
        _validate_app(name, app)
        _validate_lanes(config, name, app)


def _validate_paths(section: _Section, base: str, keys: tuple[str, ...]) -> None:
    """File paths the OS can take: no NUL character (open() would raise instead of saying which key)."""
    for key in keys:
        _require("\x00" not in getattr(section, key), f"{base}.{key}", "must be a file path without a NUL character")


def _validate_redis(config: Config) -> None:
    r = config.redis
    scheme, _, rest = r.url.partition("://")
    _require(bool(r.prefix), "redis.prefix", "must not be empty")
    _require(scheme in ("redis", "rediss", "unix"), "redis.url", "must start with redis://, rediss:// or unix://")
    try:
        _ = urlsplit(r.url).port  # parsing it is the check: a port out of range or not a number, a bad IPv6 address
    except ValueError as exc:
        raise ConfigError("redis.url", f"is not a valid URL: {exc}") from None
    for key in _REDIS_PATH_KEYS:
        _require(not getattr(r, key) or scheme == "rediss", f"redis.{key}", "is used only with a rediss:// url")
    _require(not (r.cluster and r.sentinels), "redis.cluster", "choose Sentinel (redis.sentinels) or Cluster, not both")
    if r.sentinels:
        _require(
            scheme != "unix",
            "redis.url",
            "with redis.sentinels, use a redis:// or rediss:// url (it gives the password, "
            "database and TLS for the master; its host is ignored)",
        )
        _require(bool(r.service), "redis.service", "must name the master the sentinels monitor (e.g. mymaster)")
        for s in r.sentinels:
            host, sep, port = s.rpartition(":")
            _require(
                bool(host and sep) and port.isdigit() and 0 < int(port) < 65536,
                "redis.sentinels",
                f"{s!r} is not host:port",
            )
    if r.cluster:
        _require(
            scheme != "unix", "redis.url", "with redis.cluster, use a redis:// or rediss:// url of any cluster node"
        )
        db = rest.partition("/")[2].partition("?")[0]
        _require(db in ("", "0"), "redis.url", "Redis Cluster has only database 0")
        for name, app in config.apps.items():
            _require(
                not app.queue or has_hash_tag(app.queue),
                f"apps.{name}.queue",
                'with redis.cluster, needs a hash tag such as "{push}:queue" so that its in-flight and '
                "scheduled keys share its slot",
            )
    _require(0 <= r.shards <= 1024, "redis.shards", "must be between 0 (one queue) and 1024")
    _require(r.socket_timeout > 0, "redis.socket_timeout", "must be positive")
    _require(
        0 <= r.results_maxlen <= REDIS_INT_MAX,
        "redis.results_maxlen",
        f"must be 0 (no cap) or more, at most {REDIS_INT_MAX} (what Redis takes)",
    )
    _require(_printable(r.prefix), "redis.prefix", "must be printable text without spaces")


def _validate_app(name: str, app: AppConfig) -> None:
    k = f"apps.{name}."
    _require(
        name.replace("-", "").replace("_", "").isalnum() and name == name.lower(),
        f"apps.{name}",
        "app names are lower case letters, digits, - and _",
    )
    _require(0 <= app.port < 65536, k + "port", "must be a TCP port number (1-65535; 0 = the protocol's default)")
    _require(
        0 <= app.feedback_port < 65536,
        k + "feedback_port",
        "must be a TCP port number (1-65535; 0 = the protocol's default)",
    )
    for key in ("host", "feedback_host"):
        value = getattr(app, key)
        _require(not value or bool(_HOST.fullmatch(value)), k + key, "must be a host name or an IP address")
    if app.topic:
        try:
            check_topic(app.topic, wildcard_ok=True)
        except JobError as exc:
            raise ConfigError(k + "topic", exc.detail) from None
    _require(not app.queue or _printable(app.queue), k + "queue", "must be printable text without spaces")
    _require(0 <= app.channels_port < 65536, k + "channels_port", "must be a TCP port number (1-65535; 0 = Apple's)")
    if app.proxy:
        try:
            parse_proxy(app.proxy)
        except ValueError as exc:
            raise ConfigError(k + "proxy", str(exc)) from None
    if app.token_key:
        _require(app.protocol == "http2", k + "token_key", 'token (.p8) auth exists only for protocol = "http2"')
        _require(
            not (app.cert or app.pkcs12),
            k + "token_key",
            "choose token auth or certificate auth, not both: remove cert/pkcs12 for a .p8 key "
            "(config/token-auth.toml is a token-auth example)",
        )
        _require(
            len(app.key_id) == 10 and app.key_id.isalnum(),
            k + "key_id",
            "must be the 10-character key id of the .p8 key",
        )
        _require(len(app.team_id) == 10 and app.team_id.isalnum(), k + "team_id", "must be the 10-character team id")
        _require(bool(app.topic), k + "topic", "token auth needs the app's bundle id as topic")
        _require(
            1200 <= app.token_refresh <= MAX_TOKEN_REFRESH,
            k + "token_refresh",
            f"must be between 1200 and {MAX_TOKEN_REFRESH:g} s: Apple refuses a new token within 20 minutes and "
            "a token older than an hour; the margin keeps a token in flight under an hour old",
        )
    _require(not (app.cert and app.pkcs12), k + "pkcs12", "set cert (PEM) or pkcs12, not both")
    _require(not (app.key and not app.cert), k + "key", "a key file needs a cert file")
    _require(0 <= app.payload_limit <= 65536, k + "payload_limit", "must be between 0 (protocol default) and 65536")
    _require(app.connect_timeout > 0, k + "connect_timeout", "must be positive")
    _require(
        app.reconnect_interval >= 60,
        k + "reconnect_interval",
        "must be at least 60 seconds (APNs treats churn as abuse)",
    )
    _require(1 <= app.max_connects_per_minute <= 60, k + "max_connects_per_minute", "must be between 1 and 60")
    _require(
        0 < app.backoff_initial <= app.backoff_max,
        k + "backoff_max",
        "must be at least backoff_initial, which must be positive",
    )
    _require(app.max_attempts >= 0, k + "max_attempts", "must be 0 (no count limit: retry_for decides) or more")
    _require(1 <= app.connections <= 16, k + "connections", "must be between 1 and 16")
    _require(app.retry_backoff > 0, k + "retry_backoff", "must be positive")
    _require(0 < app.outage_backoff <= 3600, k + "outage_backoff", "must be between 0 and 3600 seconds")
    _require(
        app.outage_backoff <= app.outage_backoff_max <= 86_400,
        k + "outage_backoff_max",
        "must be at least outage_backoff and at most 86400 seconds",
    )
    _require(0 < app.throttle_delay <= 3600, k + "throttle_delay", "must be between 0 and 3600 seconds")
    _require(0 < app.retry_for <= 30 * 86_400, k + "retry_for", "must be between 0 and 2592000 seconds (30 days)")
    _require(app.confirm_delay > 0, k + "confirm_delay", "must be positive")
    _require(
        0 <= app.standby_connections <= 4,
        k + "standby_connections",
        "must be between 0 (off) and 4 (binary: warm connections kept while error responses are frequent)",
    )
    _require(app.ping_interval > 0, k + "ping_interval", "must be positive")
    _require(0 < app.ping_timeout <= 300, k + "ping_timeout", "must be between 0 and 300 seconds")
    _require(0 < app.stall_timeout <= 3600, k + "stall_timeout", "must be between 0 and 3600 seconds")
    _require(
        app.mismatch_guard_answers == 0 or app.mismatch_guard_answers >= 10,
        k + "mismatch_guard_answers",
        "must be 0 (guard off) or at least 10 answers",
    )
    _require(
        0 < app.mismatch_guard_window <= 86_400, k + "mismatch_guard_window", "must be between 0 and 86400 seconds"
    )
    _require(0.5 <= app.mismatch_guard_park <= 3600, k + "mismatch_guard_park", "must be between 0.5 and 3600 seconds")
    _require(
        app.credential_probe_interval == 0 or 1 <= app.credential_probe_interval <= 86_400,
        k + "credential_probe_interval",
        "must be 0 (resume only on SIGHUP) or between 1 and 86400 seconds",
    )
    _require(
        app.feedback_interval == 0 or app.feedback_interval >= 10,
        k + "feedback_interval",
        "must be 0 (off) or at least 10 seconds",
    )
    _require(app.protocol != "binary" or bool(app.host), k + "host", BINARY_NEEDS_HOST)


def _validate_lanes(config: Config, name: str, app: AppConfig) -> None:
    """Lanes and throttles: valid names, the default lane present, one set of lanes and one throttle per queue."""
    k = f"apps.{name}."
    if app.lanes:
        for lane in app.lanes:
            _require(
                isinstance(lane, str) and bool(LANE_NAME.match(lane)) and lane not in RESERVED_LANES,
                k + "lanes",
                f"{lane!r} is not a lane name (1-32 lower case letters, digits, - and _; not one of "
                f"{', '.join(RESERVED_LANES)})",
            )
        _require(len(set(app.lanes)) == len(app.lanes), k + "lanes", "names a lane twice")
        _require(
            DEFAULT_LANE in app.lanes,
            k + "lanes",
            'must include "default" (the queue key itself, where jobs pushed without a lane go)',
        )
        _require(len(app.lanes) <= 8, k + "lanes", "at most 8 lanes")
    _require(1 <= app.lane_window <= 100_000, k + "lane_window", "must be between 1 and 100000")
    _require(2 <= app.lower_lane_every <= 1000, k + "lower_lane_every", "must be between 2 and 1000")
    for key, rate in [("max_rate", app.max_rate), *((f"lane_max_rate.{ln}", r) for ln, r in app.lane_max_rate.items())]:
        _require(
            isinstance(rate, (int, float)) and rate == rate and 0 <= rate <= 10_000_000,
            k + key,
            "must be a number of notifications per second between 0 (unlimited) and 10000000",
        )
    for lane in app.lane_max_rate:
        _require(lane in (app.lanes or (DEFAULT_LANE,)), k + "lane_max_rate", f"names {lane!r}, which is not in lanes")
    for queue in config.queue_keys(app):
        for key in config.lanes(queue):
            _require(
                key == queue or key not in config.queues(),
                k + "lanes",
                f"lane list {key} is another queue's key: rename the lane or that queue",
            )
        readers = [a for a in config.queues()[queue] if a != name]
        for other in readers:
            _require(
                config.apps[other].lanes == app.lanes,
                k + "lanes",
                f"apps reading the same queue must declare the same lanes "
                f"({other} declares {list(config.apps[other].lanes)})",
            )
        _require(
            not (app.max_rate or app.lane_max_rate) or not readers,
            k + "max_rate",
            "a throttle needs the app to be the only reader of its queue "
            f"(give it its own queue; {readers[0] if readers else ''} reads it too)",
        )
