"""Pytest plugin: in-process daemons on threads (app_env, start_daemon) and their metrics, health and log helpers."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apnsd.cli import main as cli
from apnsd.config import Config, load_config
from apnsd.worker.daemon import Daemon
from tests.support.configs import quick_worker_env
from tests.support.jobs import LOG
from tests.support.wait import wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Running:
    """A daemon running on a thread, with the environment its config came from."""

    daemon: Daemon
    thread: threading.Thread
    config: Config
    env: dict[str, str]
    result: list[int]

    def stop(self) -> int:
        """Graceful stop (what SIGTERM does); returns the exit code."""
        self.daemon.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "daemon did not stop within 30 s"
        return self.result[0]


@pytest.fixture
def app_env(
    redis_server: Any, pki: Any, tmp_path: Path, rdb: Any, env_clean: None, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., dict[str, str]]:
    """Factory: APNSD_* variables for one app named ``app`` (binary protocol), also set in os.environ for the CLI."""

    def make(app: str, host: str, port: int, cert: str, **extra: str) -> dict[str, str]:
        a = f"APNSD_APP_{app.upper()}_"
        env = {
            **quick_worker_env(redis_server.url, tmp_path / "state"),
            a + "HOST": host,
            a + "PORT": str(port),
            a + "CA_FILE": pki.ca_cert,
            a + "CERT": cert,
            a + "PROTOCOL": "binary",
            a + "QUEUE": f"{app}:queue",
            a + "MAX_CONNECTS_PER_MINUTE": "60",
            a + "BACKOFF_INITIAL": "0.05",
            a + "CONFIRM_DELAY": "0.2",
            "APNSD_WORKER_HEARTBEAT_INTERVAL": "0.2",
            "APNSD_WORKER_HEARTBEAT_TTL": "3",
        }
        env.update({k if k.startswith("APNSD_") else f"APNSD_{k}": v for k, v in extra.items()})
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return env

    return make


@pytest.fixture
def start_daemon(binary_mock: Any) -> Iterator[Callable[[dict[str, str]], Running]]:
    """Factory: run a Daemon on a thread from an APNSD_* environment; stopped at teardown, before the mocks."""
    running: list[Running] = []

    def start(env: dict[str, str]) -> Running:
        config = load_config(None, env)
        result: list[int] = []
        d = Daemon(config)
        t = threading.Thread(target=lambda: result.append(d.run()), daemon=True, name="daemon")
        r = Running(d, t, config, env, result)
        running.append(r)
        t.start()
        wait_for(lambda: d.health_path.exists() or not t.is_alive(), 10, "the worker's first status file")
        return r

    yield start
    for r in running:
        if r.thread.is_alive():
            r.stop()


def health(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `apnsd health [args]` in-process; returns its exit code and what it printed."""
    capsys.readouterr()
    code = cli.main(["health", *args])
    return code, capsys.readouterr().out


def scrape(port: int) -> Samples:
    """GET /metrics and index every sample by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or None when it is not exported."""
    return samples.get((name, frozenset(labels.items())))


def log_mark() -> int:
    """Where the session's log buffer ends now."""
    return len(LOG.getvalue())


def events_since(mark: int, name: str, **fields: Any) -> list[dict[str, Any]]:
    """JSON log events named ``name`` (with the given field values) written after ``mark``."""
    out = []
    for line in LOG.getvalue()[mark:].splitlines():
        if line.startswith("{"):
            ev = json.loads(line)
            if ev.get("event") == name and all(ev.get(k) == v for k, v in fields.items()):
                out.append(ev)
    return out
