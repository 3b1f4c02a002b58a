"""The environment-mismatch guard: an app whose answers are mostly BadDeviceToken is suspended, not pruned."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apnsd.cli.health import health
from apnsd.config import load_config
from apnsd.metrics import REGISTRY
from apnsd.store.queue import JobQueue, connect
from apnsd.worker.daemon import Daemon
from tests.support.configs import quick_worker_env
from tests.support.jobs import LOG, good_tokens, job, push_all
from tests.support.wait import wait_for

MIN_ANSWERS = 20


@pytest.fixture
def two_apps(
    redis_server: Any,
    rdb: Any,
    pki: Any,
    http2_mock: Any,
    tmp_path: Path,
    env_clean: None,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    """Apps "prod" (its gateway answers BadDeviceToken to every token) and "other" (a healthy gateway), one queue."""
    bad_gateway = http2_mock(reject_prefixes=(("", 400, "BadDeviceToken"),))
    good_gateway = http2_mock()
    env = {**quick_worker_env(redis_server.url, tmp_path / "state"), "APNSD_WORKER_HEARTBEAT_INTERVAL": "0.2"}
    for app, gateway in (("PROD", bad_gateway), ("OTHER", good_gateway)):
        a = f"APNSD_APP_{app}_"
        env |= {
            a + "HOST": gateway.host,
            a + "PORT": str(gateway.port),
            a + "CA_FILE": pki.ca_cert,
            a + "CERT": pki.client_pem,
            a + "MAX_CONNECTS_PER_MINUTE": "60",
            a + "BACKOFF_INITIAL": "0.05",
            a + "MISMATCH_GUARD_ANSWERS": str(MIN_ANSWERS),
            a + "MISMATCH_GUARD_PARK": "0.5",
        }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config = load_config(None, env)
    daemon = Daemon(config)
    thread = threading.Thread(target=daemon.run, daemon=True, name="daemon")
    thread.start()
    wait_for(lambda: daemon.health_path.exists() or not thread.is_alive(), 10, "the worker's first status file")
    yield {"daemon": daemon, "config": config, "bad": bad_gateway, "good": good_gateway, "monkeypatch": monkeypatch}
    daemon.request_stop()
    thread.join(30)


def _events(name: str) -> list[dict[str, Any]]:
    return [
        e for line in LOG.getvalue().splitlines() if line.startswith("{") and (e := json.loads(line))["event"] == name
    ]


def test_bad_device_token_for_every_token_suspends_the_app_and_keeps_its_jobs(
    two_apps: dict[str, Any], jq: JobQueue
) -> None:
    """The guard suspends "prod" after MIN_ANSWERS answers; its other jobs wait unsent, "other" keeps delivering."""
    before = len(_events("app_suspended"))
    prod_tokens, other_tokens = good_tokens(200, seed=11), good_tokens(50, seed=12)
    push_all(jq, [job(t, app="prod") for t in prod_tokens] + [job(t, app="other") for t in other_tokens])

    wait_for(lambda: len(_events("app_suspended")) > before, 20, "the app suspended")
    wait_for(lambda: set(other_tokens) == set(two_apps["good"].record.accepted_tokens()), 20, "the other app delivered")

    (event,) = _events("app_suspended")[before:]
    assert ("prod", "production") == (event["app"], event["environment"])
    assert "sandbox tokens sent to the production gateway" in event["reason"]
    assert 1.0 == REGISTRY.get_sample_value("apnsd_app_suspended", {"app": "prod"})
    # The suspension is logged when the answers arrive; their dead letters are committed a moment later.
    dead = wait_for(lambda: d if len(d := jq.dead_entries(1000)) >= MIN_ANSWERS else None, 10, "the dead letters")
    assert [("BadDeviceToken", 1)] * MIN_ANSWERS == [(e["reason"], e["attempts"]) for e in dead]
    assert {} == jq.unregistered()
    assert MIN_ANSWERS == len(two_apps["bad"].record.received)
    waiting = jq.keys.scheduled("apnsd:queue")
    wait_for(
        lambda: len(prod_tokens) - MIN_ANSWERS == jq.client.zcard(waiting) + jq.depth("apnsd:queue"),
        10,
        "every other prod job parked in the scheduled set",
    )
    assert all(b'"attempts"' not in raw for raw in jq.client.zrange(waiting, 0, -1))

    def unhealthy() -> str:
        ok, reason = health(two_apps["config"], lambda c: JobQueue(connect(c.redis.url), "apnsd", "h"))
        return "" if ok else reason

    assert wait_for(unhealthy, 10, "health reporting the suspension").startswith("unhealthy: app prod is suspended: ")


def test_reload_with_fixed_config_delivers_the_parked_jobs_exactly_once(two_apps: dict[str, Any], jq: JobQueue) -> None:
    """After SIGHUP with the right gateway, every parked job is delivered once and none was counted as an attempt."""
    before = len(_events("app_suspended"))
    prod_tokens = good_tokens(100, seed=13)
    push_all(jq, [job(t, app="prod") for t in prod_tokens])
    wait_for(lambda: len(_events("app_suspended")) > before, 20, "the app suspended")

    good = two_apps["good"]
    two_apps["monkeypatch"].setenv("APNSD_APP_PROD_PORT", str(good.port))
    reloads = len(_events("reloaded"))
    two_apps["daemon"].request_reload()
    wait_for(lambda: len(_events("reloaded")) > reloads, 10, "the reload")

    dead_tokens = {e["token"] for e in jq.dead_entries(1000)}
    wait_for(lambda: set(prod_tokens) - dead_tokens == set(good.record.accepted_tokens()), 30, "parked jobs delivered")
    assert MIN_ANSWERS == len(dead_tokens)
    assert {1} == set(good.record.accepted_tokens().values())
    assert 0.0 == REGISTRY.get_sample_value("apnsd_app_suspended", {"app": "prod"})
