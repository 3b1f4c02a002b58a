"""Through a real HTTP CONNECT proxy (tinyproxy) to the mock gateways: daemon, send, check; refusals and secrets."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from apnsd.cli.probe import DUMMY_TOKEN
from apnsd.config import load_config
from apnsd.store.queue import JobQueue
from apnsd.worker.daemon import Daemon
from tests.support.jobs import LOG, good_tokens, job, push_all, run_drained
from tests.support.wait import wait_for

SECRET = "pr0xy-s3cret"


def test_http2_daemon_delivers_everything_through_the_proxy(jq: JobQueue, http2_mock, make_config, tinyproxy):
    """With apps.<name>.proxy the daemon tunnels through the proxy, once, and every job arrives once."""
    mock, proxy = http2_mock(), tinyproxy()
    tokens = good_tokens(500, seed=21)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(mock, APP_DEFAULT_PROXY=proxy.url))

    assert set(tokens) == set(mock.record.accepted_tokens())
    assert [f"CONNECT 127.0.0.1:{mock.port} HTTP/1.1"] == proxy.tunnels()


def test_binary_daemon_with_proxy_credentials_never_logs_the_password(
    jq: JobQueue, binary_mock, make_config, tinyproxy
):
    """Basic credentials in the proxy URL open the tunnel; the password appears in no log line."""
    mock, proxy = binary_mock(), tinyproxy(auth=("alice", SECRET))
    tokens = good_tokens(200, seed=22)
    push_all(jq, [job(t) for t in tokens])
    mark = len(LOG.getvalue())

    config = make_config(mock, APP_DEFAULT_PROXY=f"http://alice:{SECRET}@127.0.0.1:{proxy.port}")
    assert 0 == run_drained(config)

    assert set(tokens) == set(mock.record.accepted_tokens())
    assert 1 == len(proxy.tunnels())
    logged = LOG.getvalue()[mark:]
    assert SECRET not in logged
    assert f"via proxy http://alice:***@127.0.0.1:{proxy.port}" in logged


def test_https_proxy_environment_is_used_and_no_proxy_bypasses_it(http2_mock, tinyproxy):
    """HTTPS_PROXY applies to an app without its own proxy; NO_PROXY naming the gateway host turns it off."""
    mock, proxy = http2_mock(), tinyproxy()

    base = {"APNSD_APP_DEFAULT_HOST": mock.host, "APNSD_APP_DEFAULT_PORT": str(mock.port)}
    assert proxy.url == load_config(None, {**base, "HTTPS_PROXY": proxy.url}).apps["default"].proxy
    bypass = {**base, "HTTPS_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.0/8"}
    assert "" == load_config(None, bypass).apps["default"].proxy


def test_proxy_refusing_connect_backs_off_and_loses_nothing(jq: JobQueue, http2_mock, make_config, tinyproxy):
    """A proxy that refuses the CONNECT: a clear connect_failed error, paced retries, every job still queued."""
    mock, proxy = http2_mock(), tinyproxy(connect_ports=(443,))
    tokens = good_tokens(50, seed=23)
    push_all(jq, [job(t) for t in tokens])
    mark = len(LOG.getvalue())
    daemon = Daemon(make_config(mock, APP_DEFAULT_PROXY=proxy.url, APP_DEFAULT_BACKOFF_INITIAL="0.2"))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()), daemon=True)
    thread.start()

    wait_for(lambda: len(proxy.tunnels()) >= 3, 20, "three paced connection attempts")
    daemon.request_stop()
    thread.join(30)

    failures = [json.loads(line) for line in LOG.getvalue()[mark:].splitlines() if '"connect_failed"' in line]
    assert failures[0]["error"].startswith(f"proxy {proxy.url} refused CONNECT 127.0.0.1:{mock.port}: HTTP/1.")
    assert failures[0]["retry_in"] > 0
    assert ([0], 0, len(tokens), 0) == (result, mock.record.connections, jq.depth("apnsd:queue"), jq.counts()["dead"])


# --- send and check through the proxy ------------------------------------------------------------------


def write_config(tmp_path: Path, mock: Any, pki: Any, **app: str) -> str:
    """A TOML config with app "default" pointed at ``mock``."""
    keys = {"host": mock.host, "port": mock.port, "ca_file": pki.ca_cert, "cert": pki.client_pem, **app}
    keys["protocol"] = mock.protocol
    path = tmp_path / "apnsd.toml"
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items())
    path.write_text(f'[metrics]\nlisten = ""\n[apps.default]\n{body}\n')
    return str(path)


@pytest.mark.parametrize("protocol", ["http2", "binary"])
def test_send_goes_through_the_proxy_from_https_proxy(
    cli, tmp_path, pki, http2_mock, binary_mock, tinyproxy, monkeypatch, protocol
):
    """`apnsd send` honours HTTPS_PROXY for both protocols and says which proxy it used."""
    mock = http2_mock() if protocol == "http2" else binary_mock()
    proxy = tinyproxy(auth=("bob", SECRET))
    path = write_config(tmp_path, mock, pki, confirm_delay=0.2)
    monkeypatch.setenv("HTTPS_PROXY", f"http://bob:{SECRET}@127.0.0.1:{proxy.port}")

    code, out, _ = cli("send", "-c", path, "--token", "ab" * 32, "--alert", "hi")

    assert (0, ["ab" * 32]) == (code, list(mock.record.accepted_tokens()))
    assert f"via proxy http://bob:***@127.0.0.1:{proxy.port}" in out and SECRET not in out
    assert 1 == len(proxy.tunnels())


def test_check_connect_and_probe_go_through_the_proxy(
    cli, tmp_path, pki, http2_mock, tinyproxy, redis_server, monkeypatch
):
    """`apnsd check --connect --probe` opens its tunnel through the proxy and proves the certificate there."""
    monkeypatch.setenv("APNSD_REDIS_URL", redis_server.url)  # check also checks Redis (not through the proxy)
    mock = http2_mock(reject_prefixes=((DUMMY_TOKEN[:8], 400, "BadDeviceToken"),))
    proxy = tinyproxy()
    path = write_config(tmp_path, mock, pki, topic="com.example.app", proxy=proxy.url)

    code, out, _ = cli("check", "--connect", "--probe", "-c", path)

    assert 0 == code, out
    assert f"  proxy         {proxy.url} (HTTP CONNECT; the proxy resolves 127.0.0.1)" in out
    assert "ok     probe: the gateway accepted the certificate" in out
    assert 2 == len(proxy.tunnels())  # one for --connect, one for --probe


def test_wrong_proxy_password_is_a_clear_error(cli, tmp_path, pki, http2_mock, tinyproxy):
    """A proxy that wants other credentials: `apnsd send` prints the 407 and a hint, never the password."""
    mock, proxy = http2_mock(), tinyproxy(auth=("alice", SECRET))
    path = write_config(tmp_path, mock, pki, proxy=f"http://alice:wrong-{SECRET}@127.0.0.1:{proxy.port}")

    code, out, _ = cli("send", "-c", path, "--token", "ab" * 32, "--alert", "hi")

    assert 1 == code
    (error,) = [line for line in out.splitlines() if line.startswith("  error ")]
    # tinyproxy answers 401 where RFC 9110 says 407; either gets the same hint
    assert f"proxy http://alice:***@127.0.0.1:{proxy.port} refused CONNECT 127.0.0.1:{mock.port}: HTTP/1.0 401" in error
    assert "the proxy wants credentials, or refused these" in error
    assert SECRET not in out
