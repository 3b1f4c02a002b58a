"""The credential breaker: a refused certificate or provider token suspends the app and keeps its jobs."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from apnsd.cli.health import health
from apnsd.config import load_config
from apnsd.gateway.credentials import load_public_key
from apnsd.metrics import REGISTRY
from apnsd.store.queue import JobQueue, connect
from apnsd.worker.daemon import Daemon
from tests.support.configs import quick_worker_env
from tests.support.jobs import LOG, good_tokens, job, push_all
from tests.support.wait import wait_for

QUEUE = "apnsd:queue"
PARK = "0.5"


@pytest.fixture
def start(
    redis_server: Any, pki: Any, tmp_path: Path, env_clean: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Daemon]]:
    """Factory: run a daemon whose apps (name → (gateway, APNSD_APP_<NAME>_* overrides)) share one queue."""
    started: list[tuple[Daemon, threading.Thread]] = []

    def run(apps: dict[str, tuple[Any, dict[str, str]]]) -> Daemon:
        env = {**quick_worker_env(redis_server.url, tmp_path / "state"), "APNSD_WORKER_HEARTBEAT_INTERVAL": "0.2"}
        for name, (gateway, keys) in apps.items():
            a = f"APNSD_APP_{name.upper()}_"
            env |= {
                a + "HOST": gateway.host,
                a + "PORT": str(gateway.port),
                a + "CA_FILE": pki.ca_cert,
                a + "MAX_CONNECTS_PER_MINUTE": "60",
                a + "BACKOFF_INITIAL": "0.05",
                a + "MISMATCH_GUARD_PARK": PARK,
                a + "CREDENTIAL_PROBE_INTERVAL": "0",
            }
            env |= {a + k: v for k, v in keys.items()}
            if "TOKEN_KEY" not in keys:
                env.setdefault(a + "CERT", pki.client_pem)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        daemon = Daemon(load_config(None, env))
        thread = threading.Thread(target=daemon.run, daemon=True, name="daemon")
        thread.start()
        started.append((daemon, thread))
        wait_for(lambda: daemon.health_path.exists() or not thread.is_alive(), 10, "the worker's first status file")
        return daemon

    yield run
    for daemon, thread in started:
        daemon.request_stop()
        thread.join(30)


def _events(name: str, **fields: Any) -> list[dict[str, Any]]:
    out = []
    for line in LOG.getvalue().splitlines():
        if line.startswith("{") and (e := json.loads(line))["event"] == name:
            if all(e.get(k) == v for k, v in fields.items()):
                out.append(e)
    return out


def _waiting(jq: JobQueue, app: str) -> list[dict[str, Any]]:
    """The app's jobs back in Redis: in the queue or parked in the scheduled set."""
    raws = jq.client.lrange(QUEUE, 0, -1) + jq.client.zrange(jq.keys.scheduled(QUEUE), 0, -1)
    return [j for j in map(msgspec.json.decode, raws) if j.get("app") == app]


def _parked_since(jq: JobQueue, app: str, since: float) -> int:
    """How many of the app's jobs were parked (again) after ``since`` (wall clock)."""
    scored = jq.client.zrange(jq.keys.scheduled(QUEUE), 0, -1, withscores=True)
    return sum(1 for raw, at in scored if msgspec.json.decode(raw).get("app") == app and at > since)


def _health(daemon: Daemon) -> str:
    ok, reason = health(daemon.config, lambda c: JobQueue(connect(c.redis.url), "apnsd", "h"))
    return "ok" if ok else reason


def test_credential_answers_suspend_one_app_while_the_other_delivers(
    start: Callable[..., Daemon], http2_mock: Any, jq: JobQueue
) -> None:
    """BadCertificate for every request: "bad" (two connections, one suspension) stops after one flight, keeps
    every job unspent; "good" delivers everything."""
    bad = http2_mock(initial_streams=1000, reject_prefixes=(("", 403, "BadCertificate"),))
    good = http2_mock()
    daemon = start({"bad": (bad, {"CONNECTIONS": "2"}), "good": (good, {})})
    before = len(_events("app_suspended"))
    bad_tokens, good_tokens_ = good_tokens(300, seed=21), good_tokens(60, seed=22)
    push_all(jq, [job(t, app="bad") for t in bad_tokens] + [job(t, app="good") for t in good_tokens_])

    wait_for(lambda: len(_events("app_suspended")) > before, 20, "the breaker tripping")
    tripped = time.time()
    wait_for(lambda: set(good_tokens_) == set(good.record.accepted_tokens()), 20, "the good app delivering")
    # Every bad job back in Redis, and each parked again after the trip: each came back at least once.
    wait_for(lambda: len(bad_tokens) == len(_waiting(jq, "bad")), 20, "every bad job waiting in Redis")
    wait_for(lambda: _parked_since(jq, "bad", tripped + 2 * float(PARK)) == len(bad_tokens), 20, "re-parked jobs")

    (event,) = _events("app_suspended")[before:]
    assert ("error", "bad", "credentials") == (event["level"], event["app"], event["cause"])
    assert event["reason"].startswith("the production gateway answered 403 BadCertificate: ")
    assert [] == jq.dead_entries(1000)
    assert [] == [j for j in _waiting(jq, "bad") if j.get("attempts")]
    assert sorted(bad_tokens) == sorted(j["token"] for j in _waiting(jq, "bad"))
    assert 1 == max(Counter(r.token for r in bad.record.received).values())  # sent once, then never again
    assert (2, ["suspended"] * 2) == (
        bad.record.connections,
        [e["reason"] for e in _events("disconnected", app="bad")],
    )
    assert 1.0 == REGISTRY.get_sample_value("apnsd_app_suspended", {"app": "bad"})
    assert 0.0 == REGISTRY.get_sample_value("apnsd_app_suspended", {"app": "good"})
    unhealthy = wait_for(lambda: (h := _health(daemon)) != "ok" and h, 10, "health reporting the suspension")
    assert unhealthy.startswith("unhealthy: app bad is suspended: the production gateway answered 403 BadCertificate")


def test_sighup_with_the_right_key_id_delivers_every_parked_job_exactly_once(
    start: Callable[..., Daemon], http2_mock: Any, pki: Any, jq: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """InvalidProviderToken (wrong key id) suspends "tok"; after SIGHUP with the right one all its jobs go out once."""
    gateway = http2_mock(
        client_ca=False, jwt_public_key=load_public_key(pki.p8_public), jwt_key_id=pki.key_id, jwt_team_id=pki.team_id
    )
    token_keys = {"TOKEN_KEY": pki.p8_key, "KEY_ID": "WRONGKEY12", "TEAM_ID": pki.team_id, "TOPIC": "com.example.app"}
    daemon = start({"tok": (gateway, token_keys), "good": (http2_mock(), {})})
    before = len(_events("app_suspended"))
    tokens = good_tokens(150, seed=23)
    push_all(jq, [job(t, app="tok") for t in tokens])
    wait_for(lambda: len(_events("app_suspended")) > before, 20, "the breaker tripping")
    wait_for(lambda: len(tokens) == len(_waiting(jq, "tok")), 20, "every job waiting in Redis")
    assert [("InvalidProviderToken", 1)] == [(r.reason, 1) for r in gateway.record.received]
    assert "wrong key_id or team_id" in _events("app_suspended")[-1]["reason"]

    monkeypatch.setenv("APNSD_APP_TOK_KEY_ID", pki.key_id)
    reloads = len(_events("reloaded"))
    daemon.request_reload()
    wait_for(lambda: len(_events("reloaded")) > reloads, 10, "the reload")

    wait_for(lambda: set(tokens) == set(gateway.record.accepted_tokens()), 30, "the parked jobs delivered")
    assert {1} == set(gateway.record.accepted_tokens().values())
    assert [] == jq.dead_entries(1000)
    assert 0.0 == REGISTRY.get_sample_value("apnsd_app_suspended", {"app": "tok"})
    assert "ok" == wait_for(lambda: _health(daemon) == "ok" and "ok", 10, "health back to ok")


def test_a_trial_request_every_probe_interval_resumes_the_app(
    start: Callable[..., Daemon], http2_mock: Any, jq: JobQueue
) -> None:
    """The gateway refuses the first two requests: one trip, one refused trial, an accepted trial, all delivered."""
    gateway = http2_mock(burst_status=(403, "BadCertificate", 2))
    daemon = start({"flaky": (gateway, {"CREDENTIAL_PROBE_INTERVAL": "1"})})
    marks = {e: len(_events(e, app="flaky")) for e in ("app_suspended", "credential_probe", "app_resumed")}
    refused = len(_events("credential_probe_refused", app="flaky"))
    tokens = good_tokens(40, seed=24)
    push_all(jq, [job(t, app="flaky") for t in tokens])

    wait_for(lambda: set(tokens) == set(gateway.record.accepted_tokens()), 30, "every job delivered")

    assert {1} == set(gateway.record.accepted_tokens().values())
    assert len(tokens) + 2 == len(gateway.record.received)
    counts = {e: len(_events(e, app="flaky")) - n for e, n in marks.items()}
    assert {"app_suspended": 1, "credential_probe": 2, "app_resumed": 1} == counts
    assert 1 == len(_events("credential_probe_refused", app="flaky")) - refused
    assert [] == jq.dead_entries(1000)
    assert 0.0 == REGISTRY.get_sample_value("apnsd_app_suspended", {"app": "flaky"})
    assert "ok" == wait_for(lambda: _health(daemon) == "ok" and "ok", 10, "health ok")


def test_a_certificate_that_does_not_fit_the_config_suspends_its_app_at_start(
    start: Callable[..., Daemon], http2_mock: Any, pki: Any, jq: JobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox-only certificate on production and a topic the certificate lacks: no connect, jobs kept until fixed."""
    sandbox_gw, topic_gw, good = http2_mock(), http2_mock(), http2_mock()
    before = len(_events("app_suspended", cause="certificate"))
    daemon = start(
        {
            "sbx": (sandbox_gw, {"CERT": pki.sandbox_pem}),
            "topic": (topic_gw, {"TOPIC": "com.other.app"}),
            "good": (good, {}),
        }
    )
    events = _events("app_suspended", cause="certificate")[before:]
    assert ["sbx", "topic"] == sorted(e["app"] for e in events)
    tokens = {app: good_tokens(20, seed=25 + i) for i, app in enumerate(("sbx", "topic", "good"))}
    push_all(jq, [job(t, app=app) for app, ts in tokens.items() for t in ts])

    wait_for(lambda: set(tokens["good"]) == set(good.record.accepted_tokens()), 20, "the good app delivering")
    for app in ("sbx", "topic"):
        wait_for(lambda app=app: len(_waiting(jq, app)) == 20, 20, f"{app}'s jobs waiting in Redis")
    assert (0, 0) == (sandbox_gw.record.connections, topic_gw.record.connections)
    assert [] == jq.dead_entries(1000)
    reasons = {e["app"]: e["reason"] for e in events}
    assert f"certificate {pki.sandbox_pem}: sandbox-only certificate used against production gateway" in reasons["sbx"]
    assert "topic 'com.other.app' is not one of the certificate's topics" in reasons["topic"]
    assert 1.0 == REGISTRY.get_sample_value("apnsd_app_suspended", {"app": "sbx"})
    assert _health(daemon).startswith("unhealthy: app sbx is suspended: certificate ")

    monkeypatch.setenv("APNSD_APP_SBX_ENVIRONMENT", "sandbox")
    daemon.request_reload()
    wait_for(lambda: set(tokens["sbx"]) == set(sandbox_gw.record.accepted_tokens()), 20, "sbx delivering once fixed")
    assert {1} == set(sandbox_gw.record.accepted_tokens().values())
    assert 0 == topic_gw.record.connections
