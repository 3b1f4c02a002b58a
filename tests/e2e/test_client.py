"""Pushing jobs from applications: apnsd.client, the examples in docs/clients.md and docs/job.schema.json."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from apnsd.cli import main as cli
from apnsd.cli.demo import sample_jobs
from apnsd.client import Client
from apnsd.core.jobs import MAX_COLLAPSE_ID, PRIORITIES, PUSH_TYPE_SUFFIXES
from apnsd.errors import JobError
from tests.support.docs_examples import doc_example, localised
from tests.support.jobs import good_tokens, inflight_keys, run_drained

ROOT = Path(__file__).resolve().parents[2]
ALERT = {"aps": {"alert": "hello"}}
T = good_tokens(1, seed=60)[0]

# Jobs the daemon refuses, with its reason, and whether the schema alone can tell.
BAD_JOBS: list[tuple[dict[str, Any], str, bool]] = [
    ({"token": "zz" * 32, "payload": ALERT}, "bad_token", True),
    ({"token": "ab" * 31, "payload": ALERT}, "bad_token_length", True),
    ({"token": "ab" * 101, "payload": ALERT}, "bad_token_length", True),
    ({"token": T[:32] + "\t" + T[32:], "payload": ALERT}, "bad_token", True),
    ({"token": "{length = 32, bytes = 0x965b251e ... 376eab7c }", "payload": ALERT}, "token_is_description", True),
    ({"tokens": [], "payload": ALERT}, "missing_token", True),
    ({"payload": ALERT}, "missing_token", True),
    ({"token": T, "tokens": [T], "payload": ALERT}, "bad_field", True),
    ({"token": T}, "missing_payload", True),
    ({"token": T, "payload": [1]}, "bad_payload", True),
    ({"token": T, "payload": "not json"}, "bad_payload", False),
    ({"token": T, "payload": {"aps": {"alert": "x" * 4100}}}, "payload_too_large", False),
    ({"token": T, "payload": ALERT, "priority": 7}, "bad_priority", True),
    ({"token": T, "payload": ALERT, "priority": "10"}, "bad_field", True),
    ({"token": T, "payload": ALERT, "push_type": "shout"}, "bad_push_type", True),
    ({"token": T, "payload": {"aps": {"content-available": 1}}, "priority": 10}, "bad_priority", False),
    ({"token": T, "payload": ALERT, "push_type": "voip", "topic": "com.example.app"}, "bad_topic", False),
    ({"token": T, "payload": ALERT, "expiration": -1}, "bad_expiration", True),
    ({"token": T, "payload": ALERT, "collapse_id": "x" * 65}, "bad_collapse_id", True),
    ({"token": T, "payload": ALERT, "app": "nosuchapp"}, "unknown_app", False),
]


@pytest.fixture(scope="module")
def schema() -> jsonschema.Draft202012Validator:
    """A validator for docs/job.schema.json."""
    doc = json.loads((ROOT / "docs" / "job.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc)


def queued(rdb: Any, queue: str = "apnsd:queue") -> list[dict[str, Any]]:
    """The jobs waiting in a queue, in the order the daemon takes them."""
    return [json.loads(raw) for raw in reversed(rdb.lrange(queue, 0, -1))]


def queued_job(rdb: Any, schema: Any, token: str) -> dict[str, Any]:
    """The one job an example queued: for ``token``, and valid against the job schema."""
    jobs = queued(rdb)
    assert [token] == [j["token"] for j in jobs]
    schema.validate(jobs[0])
    return jobs[0]


def assert_delivered_once(config: Any, mock: Any, rdb: Any, token: str) -> None:
    """Run the daemon until drained and check the gateway accepted ``token`` exactly once."""
    assert 0 == run_drained(config)
    assert {token: 1} == dict(mock.record.accepted_tokens())
    assert [] == inflight_keys(rdb)


# --- the examples in docs/clients.md ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_redis_cli_example_is_delivered(rdb, redis_server, http2_mock, make_config, schema):
    """The redis-cli one-liner, run by the real redis-cli, queues a job the daemon delivers."""
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed (it comes with redis-server: apt-get install redis-tools)")
    token = good_tokens(1, seed=61)[0]
    subprocess.run(
        ["bash", "-c", localised(doc_example("redis-cli"), redis_server.port, token)],
        check=True,
        capture_output=True,
        timeout=10,
    )
    assert abs(time.time() - queued_job(rdb, schema, token)["enqueued_at"]) < 5
    mock = http2_mock()
    assert_delivered_once(make_config(mock), mock, rdb, token)


@pytest.mark.timeout(60)
def test_python_example_is_delivered(rdb, redis_server, http2_mock, make_config, schema):
    """The apnsd.client example, run in a fresh interpreter, queues a job the daemon delivers."""
    token = good_tokens(1, seed=62)[0]
    subprocess.run(
        [sys.executable, "-c", localised(doc_example("python"), redis_server.port, token)],
        check=True,
        capture_output=True,
        timeout=30,
        cwd=ROOT,
    )
    queued_job(rdb, schema, token)
    mock = http2_mock()
    assert_delivered_once(make_config(mock), mock, rdb, token)


@pytest.mark.timeout(60)
def test_php_example_is_delivered(rdb, redis_server, binary_mock, make_config, schema, tmp_path):
    """The phpredis example, run by the real php, queues a job the daemon delivers (here over the binary protocol)."""
    if shutil.which("php") is None:
        pytest.skip("php is not installed (apt-get install php-cli php-redis to run this example)")
    if subprocess.run(
        ["php", "-r", "exit(class_exists('Redis') ? 0 : 1);"], capture_output=True, timeout=10
    ).returncode:
        pytest.skip("php's redis extension (phpredis) is missing (apt-get install php-redis)")
    token = good_tokens(1, seed=63)[0]
    script = tmp_path / "push.php"
    script.write_text("<?php\n" + localised(doc_example("php"), redis_server.port, token) + "\n")
    subprocess.run(["php", str(script)], check=True, capture_output=True, timeout=10)
    queued_job(rdb, schema, token)
    mock = binary_mock()
    assert_delivered_once(make_config(mock), mock, rdb, token)


@pytest.mark.timeout(60)
def test_ruby_example_is_delivered(rdb, redis_server, http2_mock, make_config, schema):
    """The redis-rb example, run by the real ruby, queues a job the daemon delivers."""
    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed (apt-get install ruby ruby-redis to run this example)")
    if subprocess.run(["ruby", "-e", "require 'redis'"], capture_output=True, timeout=10).returncode:
        pytest.skip("redis-rb is missing (apt-get install ruby-redis, or gem install redis)")
    token = good_tokens(1, seed=59)[0]
    subprocess.run(
        ["ruby", "-e", localised(doc_example("ruby"), redis_server.port, token)],
        check=True,
        capture_output=True,
        timeout=10,
    )
    queued_job(rdb, schema, token)
    mock = http2_mock()
    assert_delivered_once(make_config(mock), mock, rdb, token)


# --- apnsd.client -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"), [(b, r) for b, r, _ in BAD_JOBS], ids=[f"{r}-{i}" for i, (_, r, _) in enumerate(BAD_JOBS)]
)
def test_client_refuses_a_bad_job_before_redis_with_the_daemons_reason(rdb, jq, http2_mock, make_config, bad, reason):
    """A job the daemon would dead-letter raises JobError with the same reason, and nothing is queued."""
    client = Client.from_config(make_config(http2_mock()))
    with pytest.raises(JobError) as caught:
        client.enqueue_many([{"token": T, "payload": ALERT}, bad])
    assert (reason, True) == (caught.value.reason, caught.value.detail.startswith("job 1: "))
    assert (0, 0) == (jq.depth("apnsd:queue"), jq.scheduled_count("apnsd:queue"))


@pytest.mark.timeout(60)
def test_the_daemon_dead_letters_the_same_jobs_with_the_same_reasons(rdb, jq, http2_mock, make_config):
    """Pushed raw, every job the client refuses is dead-lettered by the daemon with the reason the client gave."""
    mock = http2_mock()
    jq.push("apnsd:queue", [msgspec.json.encode({**bad, "id": f"bad-{i}"}) for i, (bad, _, _) in enumerate(BAD_JOBS)])

    assert 0 == run_drained(make_config(mock))

    dead = {json.loads(e["job"])["id"]: e["reason"] for e in jq.dead_entries(100)}
    assert {f"bad-{i}": reason for i, (_, reason, _) in enumerate(BAD_JOBS)} == dead
    assert 0 == len(mock.record.received)


def test_enqueue_refuses_misspelt_fields_and_bad_tokens(jq, redis_server):
    """Keyword fields are checked by name, and a bad token fails with its reason code."""
    client = Client(redis_server.url)
    with pytest.raises(JobError) as typo:
        client.enqueue(T, ALERT, colapse_id="x")
    with pytest.raises(JobError) as token:
        client.enqueue("<" + "ab" * 31 + ">", ALERT)
    assert ("bad_field", "bad_token_length") == (typo.value.reason, token.value.reason)
    assert 0 == jq.depth("apnsd:queue")


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda c: c.schedule(T, ALERT, float("inf")), "bad_field"),  # JSON has no infinity: it would go as null
        (lambda c: c.schedule(T, ALERT, float("nan")), "bad_field"),
        (lambda c: c.enqueue(T, ALERT, send_at=float("inf")), "bad_field"),
        (lambda c: c.enqueue_many([{"token": T, "payload": ALERT, "send_at": float("-inf")}]), "bad_field"),
        (lambda c: c.broadcast("dGVzdA==", ALERT, send_at=float("nan")), "bad_field"),
        (lambda c: c.enqueue(None, ALERT), "bad_field"),
        (lambda c: c.enqueue(5, ALERT), "bad_field"),
        (lambda c: c.enqueue(T, {"aps": {"alert": "caf\udce9"}}), "bad_field"),  # a lone surrogate: not UTF-8
        (lambda c: c.enqueue_many([5]), "bad_field"),
    ],
)
def test_client_refuses_what_json_cannot_carry_with_a_job_error(jq, redis_server, call, reason):
    """A non-finite send_at, a token that is neither text nor a list, or text that is not Unicode: JobError, no push."""
    client = Client(redis_server.url)

    with pytest.raises(JobError) as info:
        call(client)

    assert (reason, 0, 0) == (info.value.reason, jq.depth("apnsd:queue"), jq.scheduled_count("apnsd:queue"))


@pytest.mark.parametrize(
    ("call", "detail"),
    [
        (lambda c: c.enqueue(T, {"aps": {"alert": "x"}, "v": float("nan")}), "payload.v is nan"),
        (lambda c: c.enqueue(T, {"aps": {"alert": "x", "badge": float("inf")}}), "payload.aps.badge is inf"),
        (lambda c: c.enqueue(T, {"aps": {"alert": "x"}, "l": [1, float("-inf")]}), "payload.l[1] is -inf"),
        (lambda c: c.enqueue(T, {"aps": {"alert": "x"}, "blob": b"\x00\x01"}), "payload.blob is a bytes"),
        (lambda c: c.enqueue(T, {"aps": {"alert": "x"}, "s": {1, 2}}), "payload.s is a set"),
        (lambda c: c.enqueue(T, {"aps": {"alert": "x"}, "m": {1: "a"}}), "payload.m has the key 1"),
        (lambda c: c.enqueue(T, ALERT, collapse_id=b"abc"), "collapse_id is a bytes"),
        (lambda c: c.enqueue_many([{"token": T, "payload": {"aps": {"alert": "x"}, "n": float("nan")}}]), "payload.n"),
        (lambda c: c.broadcast("dGVzdA==", {"aps": {"alert": "x"}, "b": bytearray(b"x")}), "payload.b is a bytearr"),
    ],
)
def test_client_refuses_a_job_json_cannot_carry_as_it_is_naming_the_field(jq, redis_server, call, detail):
    """NaN, infinities, bytes, sets or non-text keys inside a job are a JobError naming the field, never altered."""
    client = Client(redis_server.url)

    with pytest.raises(JobError) as info:
        call(client)

    assert ("bad_field", True, 0) == (info.value.reason, detail in info.value.detail, jq.depth("apnsd:queue"))


@pytest.mark.timeout(60)
def test_enqueue_adds_enqueued_at_and_fans_out(rdb, redis_server, http2_mock, make_config, schema):
    """enqueue stamps enqueued_at, keeps the given fields, fans a token list out, and the daemon delivers it all."""
    single, *fan = good_tokens(3, seed=64)
    client = Client(redis_server.url)
    before = time.time()
    client.enqueue(single, ALERT, id="one", priority=5, collapse_id="c1", push_type="alert")
    client.enqueue(fan, json.dumps(ALERT), id="fan", enqueued_at=1_700_000_000.5)
    jobs = queued(rdb)
    for j in jobs:
        schema.validate(j)
    assert before <= jobs[0].pop("enqueued_at") <= time.time()
    assert {
        "token": single,
        "payload": ALERT,
        "app": "default",
        "id": "one",
        "priority": 5,
        "collapse_id": "c1",
        "push_type": "alert",
    } == jobs[0]
    assert {
        "tokens": fan,
        "payload": json.dumps(ALERT),
        "app": "default",
        "id": "fan",
        "enqueued_at": 1_700_000_000.5,
    } == jobs[1]
    mock = http2_mock()

    assert 0 == run_drained(make_config(mock))

    assert dict.fromkeys((single, *fan), 1) == dict(mock.record.accepted_tokens())


def test_enqueue_many_uses_one_lpush_per_thousand_jobs_and_keeps_order(rdb, redis_server):
    """2,500 jobs take three LPUSH commands and are taken first-in, first-out."""
    tokens = good_tokens(2500, seed=65)
    rdb.config_resetstat()
    pushed = Client(redis_server.url).enqueue_many(
        {"token": t, "payload": ALERT, "id": f"j-{i}"} for i, t in enumerate(tokens)
    )
    calls = rdb.info("commandstats")["cmdstat_lpush"]["calls"]
    assert (2500, 3) == (pushed, calls)
    assert [f"j-{i}" for i in range(2500)] == [j["id"] for j in queued(rdb)]
    assert all(isinstance(j["enqueued_at"], float) for j in queued(rdb))


def test_enqueue_many_pushes_nothing_when_one_job_is_bad(jq, redis_server):
    """One bad job among 1,500 names its index and leaves the queue untouched."""
    jobs: list[dict[str, Any]] = [{"token": t, "payload": ALERT} for t in good_tokens(1500, seed=66)]
    jobs[1200]["token"] = "xyz"
    with pytest.raises(JobError) as caught:
        Client(redis_server.url).enqueue_many(jobs)
    assert ("bad_token", True) == (caught.value.reason, caught.value.detail.startswith("job 1200: "))
    assert 0 == jq.depth("apnsd:queue")


@pytest.mark.timeout(60)
def test_schedule_holds_a_job_until_it_is_due(rdb, jq, redis_server, http2_mock, make_config, schema):
    """A scheduled job waits in apnsd:scheduled with its send_at as score; a due one is delivered, a later one waits."""
    due, later = good_tokens(2, seed=67)
    client = Client(redis_server.url)
    at = time.time() + 3600
    client.schedule(later, ALERT, at, id="later")
    client.enqueue(due, ALERT, id="due", send_at=time.time() - 1)
    assert (0, 2) == (jq.depth("apnsd:queue"), jq.scheduled_count("apnsd:queue"))
    entries = {
        json.loads(raw)["id"]: (json.loads(raw), score)
        for raw, score in rdb.zrange("apnsd:scheduled", 0, -1, withscores=True)
    }
    assert (at, at) == (entries["later"][0]["send_at"], entries["later"][1])
    for j, _ in entries.values():
        schema.validate(j)
    mock = http2_mock()

    assert 0 == run_drained(make_config(mock))

    assert {due: 1} == dict(mock.record.accepted_tokens())
    assert ["later"] == [json.loads(raw)["id"] for raw in rdb.zrange("apnsd:scheduled", 0, -1)]


def test_from_config_uses_each_apps_queue_and_limits(jq, rdb, http2_mock, make_config, pki):
    """A client made from the config refuses unknown apps, applies binary limits and routes to an app's own queue."""
    config = make_config(
        http2_mock(),
        APP_LEGACY_PROTOCOL="binary",
        APP_LEGACY_HOST="127.0.0.1",  # binary apps name their gateway (Apple's are retired)
        APP_LEGACY_QUEUE="apnsd:legacy",
        APP_LEGACY_CERT=pki.client_pem,
    )
    client = Client.from_config(config)
    big = {"aps": {"alert": "x" * 3000}}
    reasons = []
    for app, payload, fields in (("legacy", big, {}), ("legacy", ALERT, {"priority": 1}), ("other", ALERT, {})):
        with pytest.raises(JobError) as caught:
            client.enqueue(T, payload, app=app, **fields)
        reasons.append(caught.value.reason)
    client.enqueue(T, big)
    client.enqueue(T, ALERT, app="legacy", priority=5)
    assert ["payload_too_large", "bad_priority", "unknown_app"] == reasons
    assert (["default"], ["legacy"]) == (
        [j["app"] for j in queued(rdb)],
        [j["app"] for j in queued(rdb, "apnsd:legacy")],
    )


def test_unregistered_and_gone_channel_entries_another_program_wrote_read_as_empty(rdb, redis_server):
    """A value in apnsd:unregistered or apnsd:channels:gone that is not apnsd's JSON object reads as {}: the token
    (or channel) is still listed for pruning, and reading the store never raises."""
    rdb.hset("apnsd:unregistered", mapping={T: b"garbage", "ab" * 32: b"[" * 5000, "cd" * 32: b'{"reason": "x"}'})
    rdb.hset("apnsd:channels:gone", mapping={"dGVzdA==": b"\xff"})
    client = Client(redis_server.url)

    assert {T: {}, "ab" * 32: {}, "cd" * 32: {"reason": "x"}} == client.unregistered()
    assert {T: {}, "CD" * 32: {"reason": "x"}} == client.unregistered([T, "CD" * 32])
    assert {"dGVzdA==": {}} == client.channels_gone()


@pytest.mark.timeout(60)
def test_unregistered_tokens_are_read_as_passed_and_forgotten(rdb, redis_server, http2_mock, make_config):
    """Tokens the gateway reported gone are found in any accepted spelling, and forgetting removes them."""
    gone = ["bad0" + t[4:] for t in good_tokens(2, seed=68)]
    kept = good_tokens(1, seed=69)[0]
    client = Client(redis_server.url)
    client.enqueue([*gone, kept], ALERT)
    mock = http2_mock(reject_prefixes=(("bad0", 410, "Unregistered"),))
    assert 0 == run_drained(make_config(mock))
    spelled = "<" + " ".join(re.findall("........", gone[0].upper())) + ">"

    found = client.unregistered([spelled, gone[1], kept])

    assert [spelled, gone[1]] == sorted(found, key=[spelled, gone[1]].index)
    assert {("default", "Unregistered", 410)} == {(v["app"], v["reason"], v["status"]) for v in found.values()}
    assert set(gone) == set(client.unregistered())
    assert 1 == client.forget_unregistered([spelled])
    assert {gone[1]} == set(client.unregistered())


# --- docs/job.schema.json ---------------------------------------------------------------------


def test_schema_enums_match_the_daemon():
    """The schema's priorities, push types and collapse_id limit are the daemon's."""
    doc = json.loads((ROOT / "docs" / "job.schema.json").read_text())
    props = doc["properties"]
    assert (sorted(PRIORITIES), sorted(PUSH_TYPE_SUFFIXES), MAX_COLLAPSE_ID) == (
        sorted(props["priority"]["enum"]),
        sorted(props["push_type"]["enum"]),
        props["collapse_id"]["maxLength"],
    )


def test_demo_jobs_validate_except_the_deliberately_bad_ones(schema):
    """The demo's sample jobs fit the schema; its description-form token does not, and its non-JSON one is not JSON."""
    *valid, not_json, description, unregistered = sample_jobs(50)
    for raw in [*valid, unregistered]:
        schema.validate(json.loads(raw))
    assert not schema.is_valid(json.loads(description))
    with pytest.raises(json.JSONDecodeError):
        json.loads(not_json)


def test_apnsd_push_jobs_validate(rdb, redis_server, schema, env_clean, monkeypatch, capsys):
    """Every job `apnsd push` writes (single, fan-out, every option, scheduled) fits the schema."""
    monkeypatch.setenv("APNSD_REDIS_URL", redis_server.url)
    a, b = good_tokens(2, seed=70)
    runs = [
        ["--token", a, "--alert", "hi"],
        [
            "--token",
            a,
            "--token",
            b.upper(),
            "--payload",
            '{"aps": {"content-available": 1}}',
            "--push-type",
            "background",
        ],
        [
            "--token",
            a,
            "--alert",
            "hi",
            "--badge",
            "3",
            "--sound",
            "default",
            "--topic",
            "com.example.app",
            "--priority",
            "5",
            "--expiration",
            "1900000000",
            "--collapse-id",
            "c",
            "--id",
            "x1",
        ],
        ["--token", a, "--alert", "later", "--at", "+3600"],
    ]
    for args in runs:
        assert 0 == cli.main(["push", *args])
    jobs = queued(rdb) + [json.loads(raw) for raw in rdb.zrange("apnsd:scheduled", 0, -1)]
    assert 4 == len(jobs)
    for j in jobs:
        schema.validate(j)


@pytest.mark.parametrize("token", ["<" + " ".join(re.findall("........", T.upper())) + ">", "ab" * 100, T])
def test_schema_accepts_every_token_spelling_the_daemon_accepts(schema, token):
    """Upper case, spaces, angle brackets and the 100-byte maximum are valid, as in the daemon."""
    assert schema.is_valid({"token": token, "payload": ALERT})
    assert schema.is_valid({"tokens": [token, T], "payload": json.dumps(ALERT), "app": "default"})


@pytest.mark.parametrize("bad", [b for b, _, catches in BAD_JOBS if catches], ids=[r for _, r, c in BAD_JOBS if c])
def test_schema_rejects_jobs_the_daemon_refuses(schema, bad):
    """Jobs the daemon dead-letters for a reason a schema can express do not validate."""
    assert not schema.is_valid(bad)
