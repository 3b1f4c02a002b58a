"""Hostile input end to end: jobs, Redis state and config values an attacker or a mistake could produce."""

from __future__ import annotations

import io
import json
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from apnsd import logs
from apnsd.cli.check import run_check
from apnsd.cli.main import main
from apnsd.config import load_config
from apnsd.errors import ConfigError
from apnsd.metrics import REGISTRY
from apnsd.testing.redis_server import free_port
from apnsd.worker.daemon import Daemon
from apnsd.worker.state import ensure_private_dir
from tests.support.faultkit import DaemonThread, LogTap
from tests.support.jobs import LOG, good_tokens, inflight_batches, inflight_keys, job, push_all, run_drained
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(60)  # a regression must fail, not hang: several cases start a daemon


@pytest.fixture
def session_logs() -> Iterator[None]:
    """`apnsd run` in-process configures logging to stdout: put the session's log buffer back afterwards."""
    yield
    logs.configure("json", "info", LOG)


@pytest.mark.parametrize(
    ("key", "spoil"),
    [("apnsd:dead", "string"), ("apnsd:stats", "string"), ("apnsd:stats", "text_count"), ("apnsd:stats", "max_count")],
)
def test_wrong_typed_shared_key_keeps_the_batch_in_flight_until_fixed_then_commits_once(
    key, spoil, jq, rdb, http2_mock, make_config
):
    """A shared key holding a string (or, for the stats hash, a count that is not a number, or one at 2^63 - 1)
    stops commits (logged once, naming the key) without losing an outcome, and the daemon keeps running."""
    mock = http2_mock()
    if spoil == "string":
        rdb.set(key, "not what apnsd writes here")
    else:  # the count the first commit (the two rejected jobs) increments, after writing their dead letters
        rdb.hset(key, "dead", "many" if spoil == "text_count" else str(2**63 - 1))  # max: HINCRBY would overflow
    tokens = good_tokens(20, seed=7)
    push_all(jq, [job(t) for t in tokens] + [job("nothex"), b"{not json"])
    tap = LogTap()
    d = DaemonThread(make_config(mock)).start()
    try:
        wait_for(lambda: tap.events("redis_key_wrong_type"), 20, "redis_key_wrong_type")
        assert 1 == inflight_batches(rdb)
        if spoil == "string":
            rdb.delete(key)
        else:
            rdb.hdel(key, "dead")
        wait_for(lambda: not inflight_keys(rdb), 20, "the batch to be committed")
    finally:
        d.stop()
        assert 0 == d.join(30)
    events = tap.events("redis_key_wrong_type")
    print(f"case=wrong_type_{key} events={len(events)} dead={rdb.llen('apnsd:dead')}")
    assert [key] == [e["key"] for e in events]
    logged = json.dumps(tap.events())
    assert [] == [t for t in tokens if t in logged], "a full device token in a log line"
    assert "redis_unavailable_for_outcomes" not in {e["event"] for e in tap.events()}
    assert 2 == rdb.llen("apnsd:dead")
    assert (set(tokens), 20) == (set(mock.record.accepted_tokens()), sum(mock.record.accepted_tokens().values()))
    if key == "apnsd:stats":
        assert {b"delivered": b"20", b"dead": b"2"} == rdb.hgetall("apnsd:stats")


# --- identity and local state -------------------------------------------------------------------


def test_second_process_with_a_live_worker_id_refuses_to_start(rdb, http2_mock, make_config, tmp_path):
    """A worker id whose heartbeat belongs to another live process is refused with a clear error, nothing taken."""
    # another live process: it waits on its stdin, so it also ends if this test process dies
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        heartbeat = {"worker": "x", "pid": other.pid, "host": socket.gethostname(), "time": time.time()}
        rdb.set("apnsd:worker:x", json.dumps(heartbeat), px=30_000)
        rdb.lpush("apnsd:queue", job(good_tokens(1)[0]))

        with pytest.raises(ConfigError) as info:
            Daemon(make_config(http2_mock(), WORKER_ID="x")).run()
    finally:
        other.kill()
        other.wait()
    print(f"case=duplicate_worker_id error={info.value}")
    assert "worker.id" == info.value.key
    assert f"pid {other.pid}" in str(info.value)
    assert (1, []) == (rdb.llen("apnsd:queue"), inflight_keys(rdb))


def test_a_dead_predecessors_heartbeat_does_not_block_a_restart(rdb, http2_mock, make_config):
    """A heartbeat left by a process that no longer runs (kill -9, then restart) is taken over."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    heartbeat = {"worker": "x", "pid": gone.pid, "host": socket.gethostname(), "time": time.time()}
    rdb.set("apnsd:worker:x", json.dumps(heartbeat), px=30_000)
    rdb.lpush("apnsd:queue", job(good_tokens(1)[0]))

    code = run_drained(make_config(http2_mock(), WORKER_ID="x"), timeout=30)

    assert (0, 0) == (code, rdb.llen("apnsd:queue"))


def test_state_dir_is_private_and_a_planted_symlink_is_not_followed(rdb, http2_mock, make_config, tmp_path):
    """The state dir is made 0700, and the health file replaces a symlink instead of writing through it."""
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for planted in ("worker-x.json", "worker-x.tmp"):  # the file, and the temporary name older versions used
        (state / planted).symlink_to(victim)
    rdb.lpush("apnsd:queue", job(good_tokens(1)[0]))

    code = run_drained(make_config(http2_mock(), WORKER_ID="x", WORKER_STATE_DIR=str(state)), timeout=30)

    assert (0, "precious") == (code, victim.read_text())
    assert 0o700 == stat.S_IMODE(state.stat().st_mode)


def test_state_dir_owned_by_someone_else_or_a_symlink_is_refused(tmp_path):
    """A symlink in place of the state dir is refused, naming the key."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "state").symlink_to(target)

    with pytest.raises(ConfigError) as info:
        ensure_private_dir(tmp_path / "state")

    assert "worker.state_dir" == info.value.key


# --- config and check -----------------------------------------------------------------------------


def test_run_without_credentials_exits_2_naming_the_app(
    session_logs, env_clean, monkeypatch, redis_server, tmp_path, capsys
):
    """`apnsd run` with an app that has no credentials exits 2 before it takes anything, naming the app."""
    monkeypatch.setenv("APNSD_REDIS_URL", redis_server.url)
    monkeypatch.setenv("APNSD_WORKER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("APNSD_METRICS_LISTEN", "")

    code = main(["run"])

    err = capsys.readouterr().err
    print(f"case=no_credentials exit={code}")
    assert (2, True) == (code, "config key 'apps.default': has no credentials" in err)


def test_run_with_a_nan_setting_exits_2_naming_the_key(
    session_logs, env_clean, monkeypatch, redis_server, tmp_path, capsys
):
    """`apnsd run` with recover_interval = nan exits 2 with the key's name, no traceback."""
    path = tmp_path / "apnsd.toml"
    path.write_text(f'[redis]\nurl = "{redis_server.url}"\n[worker]\nrecover_interval = nan\n')

    code = main(["run", "--config", str(path)])

    err = capsys.readouterr().err
    assert (2, True, False) == (code, "'worker.recover_interval'" in err, "Traceback" in err)


def test_check_reports_wrong_typed_keys_and_an_unreachable_redis(pki, redis_server, rdb):
    """`apnsd check` talks to Redis: a wrong-typed shared key is an error, and so is a closed port."""
    rdb.set("apnsd:unregistered", "oops")
    env = {"APNSD_REDIS_URL": redis_server.url, "APNSD_APP_DEFAULT_CERT": pki.client_pem}
    out = io.StringIO()

    code = run_check(load_config(None, env), False, out, redis=True)

    assert (1, True) == (
        code,
        "ERROR  Redis key apnsd:unregistered holds a string; apnsd needs a hash" in out.getvalue(),
    )
    out = io.StringIO()
    closed = {**env, "APNSD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0?password=hunter2"}
    assert 1 == run_check(load_config(None, closed), False, out, redis=True)
    assert ("hunter2" in out.getvalue(), "password=***" in out.getvalue()) == (False, True)


# --- the hostile run ------------------------------------------------------------------------------

T = good_tokens(1, seed=99)[0]


def hostile_cases() -> dict[str, tuple[list[bytes], str]]:
    """Case name → (the jobs, the dead-letter reason each must end with); one dead entry per job."""
    deep = b"[" * 1000 + b"]" * 1000
    return {
        "deep_nesting_payload": ([b'{"token":"%s","payload":{"a":%s}}' % (T.encode(), deep)], "not_json"),
        "deep_nesting_whole": ([b"[" * 100_000], "not_json"),
        "uuid_with_newline": ([job(T, id="0a0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a\n")], "bad_id"),
        "id_with_nul": ([job(T, id="order\x00-1")], "bad_id"),
        "topic_trailing_space": ([job(T, topic="com.example.app ")], "bad_topic"),
        "topic_with_crlf_header": ([job(T, topic="com.example.app\r\nx-evil: 1")], "bad_topic"),
        "collapse_id_with_tab": ([job(T, collapse_id="a\tb")], "bad_collapse_id"),
        "push_type_with_lf": ([job(T, push_type="alert\n")], "bad_push_type"),
        "attempts_negative": ([job(T, attempts=-1_000_000)], "bad_attempts"),
        "fanout_3000_bad_tokens": (
            [msgspec.json.encode({"tokens": [f"zz{i:062d}" for i in range(3000)], "payload": {"x": "y" * 3000}})],
            "bad_token",
        ),
        "unknown_apps_500": ([job(T, app=f"app-{i}") for i in range(500)], "unknown_app"),
        "not_json": ([b"{not json", b"\xff\xfe\x00", b""], "not_json"),
        "not_object": ([b"[1,2]", b'"text"', b"42", b"null"], "not_object"),
        "wrong_types": ([job(T, priority="high"), job(T, expiration=[1]), job(T, tokens={"a": 1})], "bad_field"),
        "payload_too_large": ([job(T, payload={"x": "y" * 5000})], "payload_too_large"),
        "payload_string_deep": ([b'{"token":"%s","payload":"%s"}' % (T.encode(), b"[" * 5000)], "bad_payload"),
    }


def rss_kib() -> int:
    """This process's resident set size (the in-process daemon's memory), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("results_stream", ["false", "true"])
def test_hostile_jobs_between_good_ones_each_get_one_outcome_and_good_ones_are_delivered_once(
    jq, rdb, http2_mock, make_config, results_stream
):
    """Every hostile case pushed between good jobs into one running daemon (receipts off and on): each hostile job
    one dead entry with its reason, each good job delivered once, the daemon never stops, Redis memory, RSS and
    /metrics stay bounded."""
    mock = http2_mock()
    cases = hostile_cases()
    good = good_tokens(2000, seed=5)
    chunks = [good[i :: len(cases) + 1] for i in range(len(cases) + 1)]
    jobs: list[bytes] = [job(t) for t in chunks[0]]
    for (hostile, _), chunk in zip(cases.values(), chunks[1:], strict=True):
        jobs += hostile + [job(t) for t in chunk]
    hostile_jobs = sum(len(h) for h, _ in cases.values())
    rss_before, redis_before = rss_kib(), rdb.info("memory")["used_memory"]
    apps_before = {s.labels["app"] for s in metric_samples("apnsd_notifications_failed")}  # earlier tests' apps
    push_all(jq, jobs)
    d = DaemonThread(make_config(mock, REDIS_RESULTS_STREAM=results_stream)).start()
    try:
        wait_for(
            lambda: rdb.llen("apnsd:dead") >= hostile_jobs and sum(mock.record.accepted_tokens().values()) >= len(good),
            45,
            "every job's outcome",
        )
        wait_for(lambda: not inflight_keys(rdb), 10, "the last commit")
        alive = d.thread.is_alive() and all(t.is_alive() for t in d.daemon._threads)
    finally:
        d.stop()
        code = d.join(30)
    dead = [json.loads(e) for e in rdb.lrange("apnsd:dead", 0, -1)]
    entries = Counter((e["job"], e["reason"]) for e in dead)
    per_case = {}
    for name, (hostile, reason) in cases.items():
        texts = {raw.decode("utf-8", "replace") for raw in hostile}
        per_case[name] = (sum(entries[(t, reason)] for t in texts), len(hostile))
        print(f"case={name} jobs={len(hostile)} reason={reason} outcomes={per_case[name][0]}")
    rss_growth_mib = (rss_kib() - rss_before) / 1024
    redis_mib = (rdb.info("memory")["used_memory"] - redis_before) / 2**20
    failed_apps = {s.labels["app"] for s in metric_samples("apnsd_notifications_failed")} - apps_before
    totals = f"hostile={hostile_jobs} dead={len(dead)} good={len(good)} rss_growth_mib={rss_growth_mib:.1f}"
    print(f"case=totals {totals} redis_mib={redis_mib:.1f} failed_apps={sorted(failed_apps)}")

    assert (True, 0) == (alive, code)
    assert dict.fromkeys(good, 1) == dict(mock.record.accepted_tokens())
    assert {name: (n, n) for name, (_, n) in per_case.items()} == per_case
    assert hostile_jobs == len(dead)
    assert set() == failed_apps - {"default", "unknown"}
    assert redis_mib < 20, "dead letters must stay proportional to the input"
    assert rss_growth_mib < 200
    fanout = next(e for e in dead if e.get("tokens"))
    assert (3000, 1) == (len(fanout["tokens"]), sum(1 for e in dead if e.get("tokens")))


def metric_samples(name: str) -> list[Any]:
    """Every sample of one metric family in the process registry."""
    return [s for m in REGISTRY.collect() if m.name == name for s in m.samples]


def test_a_job_that_makes_the_gateway_end_the_connection_is_found_and_dead_lettered(jq, rdb, http2_mock, make_config):
    """A job the gateway answers with GOAWAY PROTOCOL_ERROR is isolated and dead-lettered after two connections;
    the jobs around it are delivered once each."""
    mock = http2_mock(kill_prefixes=("dead",))
    good = good_tokens(300, seed=11)
    killer = "dead" + good_tokens(1, seed=12)[0][4:]
    push_all(jq, [job(t) for t in good[:150]] + [job(killer)] + [job(t) for t in good[150:]])
    tap = LogTap()

    code = run_drained(make_config(mock), timeout=40)

    dead = [json.loads(e) for e in rdb.lrange("apnsd:dead", 0, -1)]
    connects = len(tap.events("connected"))
    print(f"case=connection_killer jobs=301 dead={len(dead)} connections={connects}")
    assert 0 == code
    assert dict.fromkeys(good, 1) == dict(mock.record.accepted_tokens())
    assert [(killer, "gateway_protocol_error")] == [(e["token"], e["reason"]) for e in dead]
    assert connects <= 3


@pytest.mark.parametrize(
    "section, bad, key",
    [
        ("[worker]\n", "recover_interval = nan\n", "worker.recover_interval"),
        ("", 'topic = "com.example.app "\n', "apps.default.topic"),  # appended: lands in [apps.default]
        ("", '[apps.extra]\nhost = "127.0.0.1"\n', "apps.extra"),
    ],
    ids=["nan", "topic_trailing_space", "app_without_credentials"],
)
def test_a_bad_value_on_sighup_is_rejected_and_delivery_goes_on(
    section, bad, key, env_clean, jq, rdb, redis_server, http2_mock, pki, tmp_path
):
    """A reload whose config has a NaN, a header-breaking topic or an app without credentials is rejected
    naming the key; the daemon keeps the old config and keeps delivering."""
    mock = http2_mock()
    state = tmp_path / "state"
    base = (
        f'[redis]\nurl = "{redis_server.url}"\n[metrics]\nlisten = ""\n'
        f'[worker]\nstate_dir = "{state}"\nblock_timeout = 0.2\n'
        f'[apps.default]\nhost = "{mock.host}"\nport = {mock.port}\n'
        f'ca_file = "{pki.ca_cert}"\ncert = "{pki.client_pem}"\n'
    )
    path = tmp_path / "apnsd.toml"
    path.write_text(base)
    tokens = good_tokens(20, seed=21)
    tap = LogTap()
    d = DaemonThread(load_config(str(path), {})).start()
    try:
        push_all(jq, [job(t) for t in tokens[:10]])
        wait_for(lambda: len(mock.record.accepted_tokens()) == 10, 20, "the first jobs")
        path.write_text(base.replace(section, section + bad) if section else base + bad)
        d.daemon.request_reload()
        rejected = wait_for(lambda: tap.events("reload_rejected"), 10, "reload_rejected")
        push_all(jq, [job(t) for t in tokens[10:]])
        wait_for(lambda: len(mock.record.accepted_tokens()) == 20, 20, "the jobs after the reload")
    finally:
        d.stop()
        code = d.join(30)
    print(f"case=sighup_{key} error={rejected[0]['error']!r}")
    assert (0, True) == (code, f"config key '{key}'" in rejected[0]["error"])
    assert [] == tap.events("reloaded")


def test_client_and_push_refuse_what_the_daemon_refuses(
    session_logs, env_clean, monkeypatch, redis_server, rdb, capsys
):
    """apnsd.client and `apnsd push` apply the same full-string header rules: a UUID with a trailing newline
    or a topic with a trailing space never reaches Redis."""
    from apnsd.client import Client
    from apnsd.errors import JobError

    monkeypatch.setenv("APNSD_REDIS_URL", redis_server.url)
    client = Client(redis_server.url)
    reasons = []
    for fields in ({"id": "0a0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a\n"}, {"topic": "com.example.app "}):
        with pytest.raises(JobError) as info:
            client.enqueue(T, {"aps": {}}, **fields)
        reasons.append(info.value.reason)
    code = main(["push", "--token", T, "--alert", "x", "--id", "0a0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a\n"])

    assert (["bad_id", "bad_topic"], 2, 0) == (reasons, code, rdb.llen("apnsd:queue"))
    assert "bad_id" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["apnsd:queue", "apnsd:scheduled"])
def test_a_wrong_typed_queue_or_scheduled_set_is_named_once_then_work_resumes_when_fixed(
    key, jq, rdb, http2_mock, make_config
):
    """A queue or scheduled set holding a string is logged once as redis_key_wrong_type naming it (not as an
    outage); once it is deleted, jobs pushed afterwards are delivered."""
    mock = http2_mock()
    rdb.set(key, "oops")
    tap = LogTap()
    d = DaemonThread(make_config(mock)).start()
    try:
        events = wait_for(lambda: tap.events("redis_key_wrong_type"), 20, "redis_key_wrong_type")
        rdb.delete(key)
        tokens = good_tokens(10, seed=31)
        push_all(jq, [job(t) for t in tokens])
        wait_for(lambda: len(mock.record.accepted_tokens()) == 10, 20, "delivery after the fix")
    finally:
        d.stop()
        code = d.join(30)
    print(f"case=wrong_type_{key} logged={[e['key'] for e in tap.events('redis_key_wrong_type')]}")
    assert (0, True) == (code, key in events[0]["key"])
    assert [] == tap.events("redis_unavailable")


def test_fan_out_tokens_the_gateway_refuses_are_dead_lettered_with_their_own_token_only(
    jq, rdb, http2_mock, make_config
):
    """Each refused token of a fan-out gets a dead entry holding the job for that token alone, not the whole list."""
    mock = http2_mock(reject_prefixes=(("bad1", 400, "BadTopic"),))
    tokens = ["bad1" + t[4:] for t in good_tokens(200, seed=41)]
    raw = msgspec.json.encode({"tokens": tokens, "payload": {"aps": {"alert": "x"}}})
    push_all(jq, [raw])

    assert 0 == run_drained(make_config(mock), timeout=30)

    dead = [json.loads(e) for e in rdb.lrange("apnsd:dead", 0, -1)]
    jobs = [json.loads(e["job"]) for e in dead]
    largest = max(len(e) for e in rdb.lrange("apnsd:dead", 0, -1))
    print(f"case=fanout_refused tokens=200 dead={len(dead)} largest_entry={largest} job_bytes={len(raw)}")
    assert sorted(tokens) == sorted(e["token"] for e in dead)
    assert [e["token"] for e in dead] == [j["token"] for j in jobs]
    assert [] == [j for j in jobs if "tokens" in j]


def test_registry_and_hash_members_that_are_not_utf8_neither_stop_the_daemon_nor_the_cli(
    session_logs, env_clean, monkeypatch, jq, rdb, redis_server, http2_mock, make_config, capsys
):
    """A worker id, token or stats field another program wrote in bytes that are not UTF-8: the daemon starts,
    delivers and drops the foreign worker from the registry; stats, health and the client still answer."""
    from apnsd.client import Client

    rdb.sadd("apnsd:workers", b"\xff\xfe-foreign")
    rdb.hset("apnsd:unregistered", b"\xff" * 32, b"{}")
    rdb.hset("apnsd:stats", b"\xffdead", b"3")
    monkeypatch.setenv("APNSD_REDIS_URL", redis_server.url)
    mock = http2_mock()
    tokens = good_tokens(5, seed=31)
    push_all(jq, [job(t) for t in tokens])

    code = run_drained(make_config(mock))
    stats = main(["stats", "--json"])
    health = main(["health"])
    _, err = capsys.readouterr()

    assert (0, 0, "") == (code, stats, err)
    assert 1 == health  # no live worker: the drained one retired, the foreign one is gone
    assert (set(tokens), set()) == (set(mock.record.accepted_tokens()), rdb.smembers("apnsd:workers"))
    assert ["\ufffd" * 32] == list(Client(redis_server.url).unregistered())


def test_a_dead_workers_in_flight_key_of_another_type_does_not_hold_back_other_recoveries(
    jq, rdb, http2_mock, make_config
):
    """A dead worker whose in-flight key holds a string (another program) is named once as redis_key_wrong_type,
    while the jobs of a dead worker registered after it come back and are delivered."""
    from apnsd.store.queue import JobQueue, connect

    mock = http2_mock()
    tokens = good_tokens(6, seed=61)
    push_all(jq, [job(t) for t in tokens])
    rdb.sadd("apnsd:workers", "dead-a")
    rdb.set("apnsd:queue:inflight:dead-a", "another program's string")
    JobQueue(connect(make_config(mock).redis.url), "apnsd", "dead-b").take("apnsd:queue", 6)
    rdb.sadd("apnsd:workers", "dead-b")  # after dead-a: recovery meets the wrong key first
    tap = LogTap()
    d = DaemonThread(make_config(mock)).start()
    try:
        wait_for(lambda: len(mock.record.accepted_tokens()) == 6, 20, "dead-b's jobs delivered")
        events = wait_for(lambda: tap.events("redis_key_wrong_type"), 20, "redis_key_wrong_type")
    finally:
        d.stop()
        code = d.join(30)

    assert (0, ["apnsd:queue:inflight:dead-a, apnsd:queue:inflight-batches:dead-a or apnsd:queue"]) == (
        code,
        [e["key"] for e in events],
    )
    assert set(tokens) == set(mock.record.accepted_tokens())
