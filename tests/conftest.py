"""Shared fixtures: a real redis-server, a test PKI, mock gateways over real TLS, and daemon runners."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from apnsd import logs
from apnsd.cli.main import main as cli_main
from apnsd.config import Config, load_config
from apnsd.store.queue import JobQueue, connect
from apnsd.testing.mock import BinaryFaults, MockGateway
from apnsd.testing.redis_server import RedisServer
from tests.support.configs import quick_worker_env
from tests.support.jobs import LOG

pytest_plugins = ["tests.support.pki", "tests.support.tinyproxy", "tests.support.daemons", "tests.support.node_gateway"]


@pytest.fixture(scope="session", autouse=True)
def _quiet_logs() -> None:
    """Logs go to an in-memory buffer as JSON, configured once for the whole session."""
    logs.configure("json", "info", LOG)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session, on a free loopback port."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def rdb(redis_server: RedisServer) -> redis.Redis:
    """A client on a freshly flushed database."""
    client = connect(redis_server.url)
    client.flushall()
    return client


@pytest.fixture
def jq(rdb: redis.Redis) -> JobQueue:
    """A JobQueue handle for pushing and inspecting from tests."""
    return JobQueue(rdb, "apnsd", "test-inspector")


@pytest.fixture
def binary_mock(pki: Any) -> Iterator[Callable[..., MockGateway]]:
    """Factory for started binary mock gateways; all are stopped at teardown."""
    started: list[MockGateway] = []

    def make(**faults: Any) -> MockGateway:
        m = MockGateway("binary", pki.server_cert, pki.server_key, pki.ca_cert, binary_faults=BinaryFaults(**faults))
        started.append(m.start(with_feedback=True))
        return m

    yield make
    for m in started:
        m.stop()


@pytest.fixture
def http2_mock(pki: Any) -> Iterator[Callable[..., MockGateway]]:
    """Factory for started HTTP/2 mock gateways; all are stopped at teardown."""
    from apnsd.testing.http2_mock import Http2Faults

    started: list[MockGateway] = []

    def make(client_ca: bool = True, **faults: Any) -> MockGateway:
        m = MockGateway(
            "http2",
            pki.server_cert,
            pki.server_key,
            pki.ca_cert if client_ca else None,
            http2_faults=Http2Faults(**faults),
        )
        started.append(m.start())
        return m

    yield make
    for m in started:
        m.stop()


@pytest.fixture
def make_config(redis_server: RedisServer, pki: Any, tmp_path: Any) -> Callable[..., Config]:
    """A Config for a mock gateway: ``protocol``, the mock, and extra APNSD_* overrides."""

    def make(mock: MockGateway, **env: str) -> Config:
        base = {
            **quick_worker_env(redis_server.url, tmp_path / "state"),
            "APNSD_APP_DEFAULT_HOST": mock.host,
            "APNSD_APP_DEFAULT_PORT": str(mock.port),
            "APNSD_APP_DEFAULT_CA_FILE": pki.ca_cert,
            "APNSD_APP_DEFAULT_CERT": pki.client_pem,
            "APNSD_APP_DEFAULT_PROTOCOL": mock.protocol,
            "APNSD_APP_DEFAULT_MAX_CONNECTS_PER_MINUTE": "60",
            "APNSD_APP_DEFAULT_BACKOFF_INITIAL": "0.05",
            "APNSD_APP_DEFAULT_CONFIRM_DELAY": "0.2",
            "APNSD_APP_DEFAULT_RETRY_BACKOFF": "0.05",
            "APNSD_APP_DEFAULT_OUTAGE_BACKOFF": "0.05",
            "APNSD_APP_DEFAULT_THROTTLE_DELAY": "0.05",
        }
        base.update({k if k.startswith("APNSD_") else f"APNSD_{k}": v for k, v in env.items()})
        return load_config(None, base)

    return make


@pytest.fixture
def env_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    """No APNSD_* variables from the outer environment leak into a test."""
    for k in list(os.environ):
        if k.startswith("APNSD_"):
            monkeypatch.delenv(k)


@pytest.fixture
def cli(env_clean: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    """Run `apnsd argv…` in-process (the session's log setup left alone); returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(logs, "configure", lambda *a, **k: None)
    for var in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run
