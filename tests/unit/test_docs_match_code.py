"""The README and config/apnsd.toml against the code: config keys, defaults and limits, CLI verbs and
options, metrics and log events, read from both sides so that they cannot drift apart."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.metrics import MetricWrapperBase

from apnsd import config as C
from apnsd import metrics
from apnsd.cli.main import _parser
from apnsd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
# The verbs the design contract (DESIGN.md, kept outside this repository) promises.
DESIGN_VERBS = {"run", "demo", "push", "send", "check", "mock", "stats", "dead", "health"}
SECTIONS: dict[str, type[msgspec.Struct]] = {
    "redis": C.RedisConfig,
    "worker": C.WorkerConfig,
    "metrics": C.MetricsConfig,
    "log": C.LogConfig,
    "apps.default": C.AppConfig,
}
EXAMPLE_VALUES = {("apps.default", "cert")}  # set in the example on purpose: it names where the secret is mounted
SECRET_FILE_TWINS = {"passphrase_file", "proxy_file", "url_file", "sentinel_password_file"}


def section(text: str, start: str, end: str) -> str:
    """The part of ``text`` from the heading ``start`` to the heading ``end``, on one line."""
    return re.sub(r"\s+", " ", text[text.index(start) : text.index(end)])


def example_keys() -> dict[tuple[str, str], tuple[bool, Any]]:
    """(section, key) → (commented out, value) for every `key = value` line of config/apnsd.toml."""
    found: dict[tuple[str, str], tuple[bool, Any]] = {}
    current = ""
    for line in (REPO / "config" / "apnsd.toml").read_text().splitlines():
        header = re.match(r"^#?\s*\[(.+)\]\s*$", line)
        if header:
            current = header.group(1) if not line.startswith("#") else ""  # a commented-out second app is prose
            continue
        pair = re.match(r"^(#?)\s*([a-z_0-9]+)\s*=\s*(.*?)\s*(?:#.*)?$", line)
        if pair and current in SECTIONS:
            value = tomllib.loads(f"v = {pair.group(3)}")["v"]
            found[(current, pair.group(2))] = (bool(pair.group(1)), value)
    return found


def default(name: str, key: str) -> Any:
    """The default of a config key, as TOML would spell it."""
    value = getattr(SECTIONS[name](), key)
    return list(value) if isinstance(value, tuple) else value


def test_the_example_config_names_every_key_and_no_unknown_one() -> None:
    """config/apnsd.toml ("documents every key with its default") has a line for each key config.py knows,
    set or commented out, and none that config.py does not know (a secret's `_file` twin aside)."""
    documented = set(example_keys())
    known = {(name, key) for name, struct in SECTIONS.items() for key in struct.__struct_fields__}
    missing = known - documented - {("apps.default", "passphrase")}  # only as passphrase_file: no secret in a file
    unknown = {(name, key) for name, key in documented - known if key not in SECRET_FILE_TWINS}

    assert (set(), set()) == (missing, unknown)


def test_the_example_config_shows_the_defaults() -> None:
    """Every key set in config/apnsd.toml, and every commented-out number or switch, holds config.py's default
    (commented-out strings and lists are examples of what to write)."""
    wrong = {
        (name, key): (value, default(name, key))
        for (name, key), (commented, value) in example_keys().items()
        if (name, key) not in EXAMPLE_VALUES
        and key not in SECRET_FILE_TWINS
        and (not commented or isinstance(value, int | float | bool))
        and value != default(name, key)
    }

    assert {} == wrong


UNITS = {"h": 3600.0, "minutes": 60.0, "s": 1.0, None: 1.0}


def readme_defaults() -> dict[str, float]:
    """Config key → the default README's Configuration section gives for it (`key` (default N unit ...)."""
    text = section(README, "## Configuration", "## What happens to a notification")
    out = {}
    for m in re.finditer(r"`(\w+)`(?: seconds)? \(([^()]*(?:\([^()]*\)[^()]*)*)\)", text):
        number = re.search(r"(?:default |^)(\d[\d,]*(?:\.\d+)?)\s*(h|minutes|s)?\b", m.group(2))
        if number and m.group(1) in C.AppConfig.__struct_fields__ + C.WorkerConfig.__struct_fields__:
            out[m.group(1)] = float(number.group(1).replace(",", "")) * UNITS[number.group(2)]
    return out


def test_the_readme_gives_the_defaults_the_code_has() -> None:
    """Each default README's Configuration section states (`reconnect_interval` 3 h, `grace_period` 20 s, ...)
    is config.py's."""
    stated = readme_defaults()
    actual = {
        key: float(getattr(C.AppConfig() if key in C.AppConfig.__struct_fields__ else C.WorkerConfig(), key))
        for key in stated
    }

    assert stated == actual
    assert {"reconnect_interval", "token_refresh", "grace_period", "batch_size", "max_in_flight"} <= set(stated)


TOKEN_AUTH = {"token_key": "/k.p8", "key_id": "ABC123DEFG", "team_id": "DEF123GHIJ", "topic": "com.example.app"}


def accepts(**app: Any) -> bool:
    """True when config.py takes these values for the default app (under token auth for token_refresh)."""
    base = TOKEN_AUTH if "token_refresh" in app else {"cert": "/x.pem"}
    return _loads({f"APNSD_APP_DEFAULT_{k.upper()}": str(v) for k, v in {**base, **app}.items()})


def readme_range(key: str) -> tuple[float, float]:
    """The `low–high` range README's Configuration section gives for ``key``."""
    text = section(README, "## Configuration", "## What happens to a notification")
    m = re.search(rf"`{key}`[^`]*?(\d[\d,]*)–(\d[\d,]*)", text)
    assert m, f"README gives no range for {key}"
    return float(m.group(1).replace(",", "")), float(m.group(2).replace(",", ""))


@pytest.mark.parametrize("key", ["connections", "token_refresh"])
def test_the_readme_ranges_are_the_ones_enforced(key: str) -> None:
    """`connections` 1–16 and `token_refresh` 1200–3300 s: the ends are accepted, one step beyond refused."""
    low, high = readme_range(key)
    step = 1 if key == "connections" else 0.5

    assert (False, True, True, False) == tuple(
        accepts(**{key: int(v) if step == 1 else v}) for v in (low - step, low, high, high + step)
    )


def test_the_readme_duration_and_port_limits_are_the_ones_enforced() -> None:
    """Durations up to 1,000,000 s, ports 1–65535 (0 = the protocol's), results_maxlen up to 2^63−1."""
    text = section(README, "## Configuration", "## What happens to a notification")
    top = float(re.search(r"finite number of seconds up to (\d[\d,]*)", text).group(1).replace(",", ""))  # type: ignore[union-attr]

    assert "ports are 1–65535 (0 = the protocol's default)" in text
    assert "`results_maxlen` is from 0 to 2^63−1" in text
    assert (True, False) == (accepts(backoff_max=top), accepts(backoff_max=top + 1))
    assert (True, True, False) == (accepts(port=0), accepts(port=65535), accepts(port=65536))
    redis = [{"APNSD_REDIS_RESULTS_MAXLEN": str(n)} for n in (2**63 - 1, 2**63)]
    assert [True, False] == [_loads(env) for env in redis]


def _loads(env: dict[str, str]) -> bool:
    """True when config.py takes this environment."""
    try:
        C.load_config(None, env)
    except ConfigError:
        return False
    return True


# --- the command line ---------------------------------------------------------------------------------------


def cli_options() -> dict[str, set[str]]:
    """Verb → every option its parser (and its sub-verbs' parsers) take."""
    verbs = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    out: dict[str, set[str]] = {}
    for verb, parser in verbs.items():
        options: set[str] = set()
        todo = [parser]
        while todo:
            p = todo.pop()
            for action in p._actions:
                options.update(action.option_strings)
                if isinstance(action, argparse._SubParsersAction):
                    todo.extend(action.choices.values())
        out[verb] = options
    return out


def documented_options(text: str) -> set[tuple[str, str]]:
    """(verb, option) for every `apnsd VERB ... --option` in a code span, code line or Commands table row."""
    spans = re.findall(r"`([^`\n]+)`", text) + re.findall(r"^\s*(?:\$ )?(apnsd .*)$", text, re.M)
    rows = [line for line in text.splitlines() if line.startswith("| `apnsd ")]
    found = set()
    for span in spans + rows:
        for m in re.finditer(r"\bapnsd ([a-z]+)\b([^`]*)", span if span in rows else span.split("#")[0]):
            found.update((m.group(1), opt) for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", m.group(2)))
    return found


def test_every_cli_verb_and_option_the_docs_name_exists() -> None:
    """Every `apnsd VERB --option` in README.md is an option of that verb, and the design contract's verbs
    (run, demo, push, send, check, mock, stats, dead, health) all exist."""
    options = cli_options()
    named = documented_options(README)
    unknown = {(verb, opt) for verb, opt in named if verb in options and opt not in options[verb]}

    assert set() == unknown
    assert DESIGN_VERBS <= set(options)
    assert len(named) > 30  # the extraction found the documented options


# --- metrics and log events ---------------------------------------------------------------------------------


def exported_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """apnsd's own series as scraped: name → (type, labels)."""
    out = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            if value._type == "info":  # its labels are the keys of the value it holds: scrape it
                sample = value.collect()[0].samples[0]
                out[sample.name] = ("gauge", tuple(sample.labels))
            else:
                suffix = "_total" if value._type == "counter" else ""
                out[value._name + suffix] = (value._type, tuple(value._labelnames))
    return out


def test_the_readme_metric_table_is_what_the_daemon_exports() -> None:
    """Every apnsd_* row of README's metric table names an exported series with that type and those labels,
    and every exported apnsd_* series has a row."""
    rows = re.findall(r"^\| `(apnsd_\w+)` \| (\w+) \| ([^|]*) \|", README, re.M)
    unlinked = [(name, kind, re.sub(r"\]\([^)]*\)", "]", labels)) for name, kind, labels in rows]
    documented = {
        name: (kind, tuple(re.findall(r"\w+", re.sub(r"\(.*?\)", "", labels))))  # "–": none; (...): a remark
        for name, kind, labels in unlinked
    }

    assert exported_metrics() == documented


# The series the design contract (DESIGN.md, "Metrics listener") promises, and the metric that carries each.
DESIGN_SERIES = {
    "jobs taken": "apnsd_jobs_taken_total",
    "delivered": "apnsd_notifications_total",
    "failed by reason": "apnsd_notifications_failed_total",
    "retried": "apnsd_notifications_retried_total",
    "queue depth": "apnsd_queue_depth",
    "oldest-job age": "apnsd_queue_oldest_job_age_seconds",
    "in-flight": "apnsd_in_flight",
    "dead-letter size": "apnsd_dead_letters",
    "unregistered size": "apnsd_unregistered_tokens",
    "connection state": "apnsd_connection_up",
    "reconnects": "apnsd_connects_total",
    "gateway round trip": "apnsd_gateway_round_trip_seconds",
    "certificate expiry": "apnsd_certificate_expiry_timestamp_seconds",
    "delivery latency": "apnsd_delivery_latency_seconds",
}


def test_every_series_the_design_promises_is_exported() -> None:
    """Each series of the design contract's metrics list has its metric among those the daemon exports."""
    missing = {what: name for what, name in DESIGN_SERIES.items() if name not in exported_metrics()}

    assert {} == missing


NOT_EVENTS = {"event", "reason", "cause", "key", "debug", "info", "warning", "error"}


def test_every_log_event_the_readme_names_is_logged() -> None:
    """Each event README's Logs section and the signals paragraph name is written somewhere in apnsd/."""
    logs = section(README, "### Logs", "### Troubleshooting certificates") + section(
        README, "Signals: ", "### Container"
    )
    keys = {key for struct in SECTIONS.values() for key in struct.__struct_fields__}
    named = set(re.findall(r"`([a-z]+(?:_[a-z]+)+|[a-z]+)`", logs)) - NOT_EVENTS - keys
    source = "".join(p.read_text() for p in (REPO / "apnsd").rglob("*.py"))
    silent = {e for e in named if f'"{e}"' not in source}

    assert set() == silent
    assert {"connected", "batch_committed", "stop_hurried", "status"} <= named
