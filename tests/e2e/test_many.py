"""Many at once: several workers on one queue, several apps in one daemon, a broken app beside good ones, receipts."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import msgspec
import pytest

from apnsd.client import Client
from apnsd.config import Config, load_config
from apnsd.gateway.credentials import load_public_key
from apnsd.store.queue import JobQueue
from apnsd.testing.mock import MockGateway
from apnsd.worker.daemon import Daemon
from tests.support.configs import quick_worker_env
from tests.support.jobs import good_tokens, inflight_keys, run_drained

ALERT = {"aps": {"alert": "hello"}}


def app_env(name: str, mock: MockGateway, pki: Any, **keys: str) -> dict[str, str]:
    """APNSD_APP_<NAME>_* variables pointing one app at a mock gateway (certificate auth unless overridden)."""
    env = {
        "HOST": mock.host,
        "PORT": str(mock.port),
        "CA_FILE": pki.ca_cert,
        "CERT": pki.client_pem,
        "PROTOCOL": mock.protocol,
        "MAX_CONNECTS_PER_MINUTE": "60",
        "BACKOFF_INITIAL": "0.05",
        "CONFIRM_DELAY": "0.2",
        "RETRY_BACKOFF": "0.05",
        **keys,
    }
    return {f"APNSD_APP_{name.upper()}_{k}": v for k, v in env.items() if v != ""}


def apps_config(redis_server: Any, tmp_path: Any, *apps: dict[str, str]) -> Config:
    """A Config with exactly the given apps (no implicit default app)."""
    base = quick_worker_env(redis_server.url, tmp_path / "state")
    for a in apps:
        base.update(a)
    return load_config(None, base)


def jobs_for(app: str, tokens: list[str]) -> list[dict[str, Any]]:
    """One job per token for ``app``, each with an id naming its position."""
    return [{"token": t, "payload": ALERT, "app": app, "id": f"{app}-{i}"} for i, t in enumerate(tokens)]


@pytest.mark.timeout(120)
def test_three_workers_share_one_queue_and_deliver_each_job_exactly_once(
    jq, rdb, http2_mock, make_config, redis_server, monkeypatch
):
    """Three worker daemons on one queue of 100,000 jobs deliver each exactly once, and their takes add up."""
    taken: Counter[str] = Counter()
    lock = threading.Lock()

    class CountingQueue(JobQueue):
        """The real queue adapter, counting the jobs each worker moves into its in-flight storage."""

        def take(self, queue: str, count: int, field: str | None = None) -> tuple[str, list[bytes]]:
            field, raws = super().take(queue, count, field)
            with lock:
                taken[self.worker_id] += len(raws)
            return field, raws

        def claim(self, queue: str, field: str) -> list[bytes]:
            raws = super().claim(queue, field)
            with lock:
                taken[self.worker_id] += len(raws)
            return raws

    monkeypatch.setattr("apnsd.worker.daemon.JobQueue", CountingQueue)
    mock = http2_mock()
    mock.record.keep_payloads = False
    tokens = good_tokens(100_000, seed=11)
    assert 100_000 == Client(redis_server.url).enqueue_many({"token": t, "payload": ALERT} for t in tokens)
    daemons = [Daemon(make_config(mock, WORKER_ID=f"worker-{i}"), drain=True) for i in range(3)]
    codes: dict[str, int] = {}
    threads = [
        threading.Thread(target=lambda d=d: codes.__setitem__(d.worker_id, d.run()), daemon=True) for d in daemons
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    for d, t in zip(daemons, threads, strict=False):
        if t.is_alive():  # not drained in time: stop it so the failure below does not leave it running
            d.request_stop()
            t.join(30)

    assert {f"worker-{i}": 0 for i in range(3)} == codes
    accepted = mock.record.accepted_tokens()
    assert set(tokens) == set(accepted)
    assert {1} == set(accepted.values())
    assert 100_000 == len(mock.record.received)
    assert 100_000 == sum(taken.values()), dict(taken)
    assert 0 == jq.depth("apnsd:queue")
    assert [] == inflight_keys(rdb)
    assert {"total_delivered": 100_000} == {k: v for k, v in jq.counts().items() if k.startswith("total_")}


def tokens_by_app(jobs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """The tokens of a job list, grouped by app."""
    out: dict[str, set[str]] = {}
    for j in jobs:
        out.setdefault(j["app"], set()).add(j["token"])
    return out


def interleave(*lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Round-robin merge, so that every app's jobs are spread through the queue."""
    return [j for group in zip(*lists, strict=False) for j in group]


@pytest.mark.timeout(60)
def test_each_app_gets_exactly_its_own_jobs_over_one_connection(
    jq, rdb, http2_mock, binary_mock, pki, redis_server, tmp_path
):
    """Certificate, token-auth and binary apps in one daemon, on a shared and an own queue, each reach only
    their gateway, once."""
    mock_alpha = http2_mock()
    mock_beta = http2_mock(
        client_ca=False,
        jwt_public_key=load_public_key(pki.p8_public),
        jwt_key_id=pki.key_id,
        jwt_team_id=pki.team_id,
        allowed_topics=("com.example.app",),
    )
    mock_gamma = binary_mock()
    config = apps_config(
        redis_server,
        tmp_path,
        app_env("alpha", mock_alpha, pki),
        app_env(
            "beta",
            mock_beta,
            pki,
            CERT="",
            TOKEN_KEY=pki.p8_key,
            KEY_ID=pki.key_id,
            TEAM_ID=pki.team_id,
            TOPIC="com.example.app",
        ),
        app_env("gamma", mock_gamma, pki, QUEUE="apnsd:gamma"),
    )
    alpha, beta, gamma = (
        jobs_for(a, good_tokens(1000, seed=s)) for a, s in (("alpha", 21), ("beta", 22), ("gamma", 23))
    )
    client = Client.from_config(config)
    assert 3000 == client.enqueue_many(interleave(alpha, beta, gamma))
    assert (2000, 1000) == (jq.depth("apnsd:queue"), jq.depth("apnsd:gamma"))

    assert 0 == run_drained(config, timeout=50)

    assert tokens_by_app(alpha)["alpha"] == set(mock_alpha.record.accepted_tokens())
    assert tokens_by_app(beta)["beta"] == set(mock_beta.record.accepted_tokens())
    assert tokens_by_app(gamma)["gamma"] == set(mock_gamma.record.accepted_tokens())
    assert [1000, 1000, 1000] == [len(m.record.received) for m in (mock_alpha, mock_beta, mock_gamma)]
    assert [1, 1, 1] == [m.record.connections for m in (mock_alpha, mock_beta, mock_gamma)]
    beta_headers = dict(mock_beta.record.received[0].headers)
    assert ("com.example.app", True) == (
        beta_headers["apns-topic"],
        beta_headers["authorization"].startswith("bearer "),
    )
    assert [] == jq.dead_entries(10)
    assert [] == inflight_keys(rdb)


@pytest.mark.timeout(60)
def test_an_app_with_an_expired_certificate_does_not_stop_the_others(
    jq, rdb, http2_mock, binary_mock, pki, redis_server, tmp_path
):
    """The expired app's jobs are dead-lettered as app_disabled without a connection; the others deliver everything."""
    mock_alpha, mock_stale, mock_gamma = http2_mock(), http2_mock(), binary_mock()
    config = apps_config(
        redis_server,
        tmp_path,
        app_env("alpha", mock_alpha, pki),
        app_env("stale", mock_stale, pki, CERT=pki.expired_pem),
        app_env("gamma", mock_gamma, pki, QUEUE="apnsd:gamma"),
    )
    alpha, stale, gamma = (
        jobs_for(a, good_tokens(500, seed=s)) for a, s in (("alpha", 31), ("stale", 32), ("gamma", 33))
    )
    Client.from_config(config).enqueue_many(interleave(alpha, stale, gamma))

    assert 0 == run_drained(config, timeout=50)

    assert tokens_by_app(alpha)["alpha"] == set(mock_alpha.record.accepted_tokens())
    assert tokens_by_app(gamma)["gamma"] == set(mock_gamma.record.accepted_tokens())
    assert (0, 0) == (mock_stale.record.connections, len(mock_stale.record.received))
    dead = jq.dead_entries(1000)
    assert tokens_by_app(stale)["stale"] == {e["token"] for e in dead}
    assert 500 == len(dead)
    assert {"stale"} == {e["app"] for e in dead}
    assert all(e["reason"].startswith("app_disabled") and "expired" in e["reason"] for e in dead), dead[0]["reason"]
    assert sorted(j["id"] for j in stale) == sorted(msgspec.json.decode(e["job"])["id"] for e in dead)
    assert [] == inflight_keys(rdb)


def receipts(rdb: Any) -> list[dict[str, str]]:
    """Every entry of the results stream, oldest first, as str → str."""
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rdb.xrange("apnsd:results")]


@pytest.mark.timeout(60)
def test_every_notification_has_one_receipt_with_its_outcome(jq, rdb, http2_mock, make_config, redis_server):
    """With results_stream on, each notification (delivered, unregistered or refused) has exactly one receipt."""
    mock = http2_mock(reject_prefixes=(("bad0", 410, "Unregistered"),))
    good = good_tokens(1000, seed=41)
    gone = ["bad0" + t[4:] for t in good_tokens(5, seed=42)]
    jq.push(
        "apnsd:queue",
        [
            msgspec.json.encode(j)
            for j in [
                *({"token": t, "payload": ALERT, "id": f"good-{i}"} for i, t in enumerate(good)),
                *({"token": t, "payload": ALERT, "id": f"gone-{i}"} for i, t in enumerate(gone)),
                {"tokens": [good_tokens(1, seed=43)[0], "xyz"], "payload": ALERT, "id": "fan"},
                {"token": good_tokens(1, seed=44)[0], "payload": ALERT, "id": "late", "expiration": 1},
            ]
        ],
    )

    assert 0 == run_drained(make_config(mock, REDIS_RESULTS_STREAM="true"))

    got = receipts(rdb)
    expected = {
        **{(f"good-{i}", t): ("delivered", "") for i, t in enumerate(good)},
        **{(f"gone-{i}", t): ("unregistered", "Unregistered") for i, t in enumerate(gone)},
        ("fan", good_tokens(1, seed=43)[0]): ("delivered", ""),
        ("fan", "xyz"): ("dead", "bad_token"),
        ("late", good_tokens(1, seed=44)[0]): ("dead", "expired"),
    }
    assert expected == {(r["id"], r["token"]): (r["outcome"], r["reason"]) for r in got}
    assert len(expected) == len(got)
    assert {"id", "apns_id", "token", "app", "outcome", "status", "reason", "time"} == set(got[0])
    accepted_ids = {r.ident for r in mock.record.received if r.status == 200}
    assert accepted_ids == {r["apns_id"] for r in got if r["outcome"] == "delivered"}


@pytest.mark.timeout(60)
def test_results_stream_is_capped_near_results_maxlen(jq, rdb, http2_mock, make_config):
    """The receipt stream keeps about results_maxlen of the newest entries (trimmed approximately, never below)."""
    mock = http2_mock()
    tokens = good_tokens(3000, seed=51)
    jq.push(
        "apnsd:queue",
        [msgspec.json.encode({"token": t, "payload": ALERT, "id": f"j-{i}"}) for i, t in enumerate(tokens)],
    )

    assert 0 == run_drained(make_config(mock, REDIS_RESULTS_STREAM="true", REDIS_RESULTS_MAXLEN="500"))

    kept = receipts(rdb)
    assert 500 <= len(kept) <= 600, len(kept)
    assert 3000 == rdb.xinfo_stream("apnsd:results")["entries-added"]
    assert 3000 == len(mock.record.accepted_tokens())
    assert len(kept) == len({r["id"] for r in kept})
