"""The `apnsd` command line, run in-process against a real redis-server (and once as a real process)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from apnsd import logs
from apnsd.cli.main import main
from apnsd.errors import QueueError
from apnsd.testing.redis_server import free_port
from apnsd.worker.daemon import Daemon
from apnsd.worker.recorder import dead_entry
from tests.support.jobs import LOG

REPO = Path(__file__).resolve().parents[2]
TOKEN = "c9d4c07cfbbc26d6ef87a44d53e169831096a5d5fd82547556659dddf715defc"
OTHER = "ab" * 32


@pytest.fixture
def cli_env(env_clean: None, monkeypatch: pytest.MonkeyPatch, redis_server: Any, rdb: Any, tmp_path: Path) -> Path:
    """APNSD_* variables pointing the CLI at the test Redis and a private state folder; returns that folder."""
    state = tmp_path / "state"
    monkeypatch.setenv("APNSD_REDIS_URL", redis_server.url)
    monkeypatch.setenv("APNSD_WORKER_STATE_DIR", str(state))
    monkeypatch.setenv("APNSD_METRICS_LISTEN", "")
    return state


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `apnsd argv…` in-process; returns exit code, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def queued(rdb: Any, queue: str = "apnsd:queue") -> list[dict[str, Any]]:
    """The jobs waiting in a queue, decoded, oldest first."""
    return [msgspec.json.decode(raw) for raw in reversed(rdb.lrange(queue, 0, -1))]


def add_dead(rdb: Any, token: str, reason: str, app: str = "default") -> bytes:
    """Put one dead letter for a job with ``token`` into apnsd:dead; returns the job."""
    raw = msgspec.json.encode({"token": token, "payload": {"aps": {"alert": "x"}}})
    rdb.lpush("apnsd:dead", dead_entry(raw, app, reason, None, "why", 0, token, time.time()))
    return raw


# --- push ------------------------------------------------------------------------------------------


def test_push_enqueues_a_valid_job(cli_env, rdb, capsys):
    """`apnsd push` LPUSHes one job with the token, the built payload and the app."""
    code, out, err = run(
        capsys, "push", "--token", TOKEN, "--alert", "Server down", "--badge", "1", "--sound", "default"
    )

    assert (0, "") == (code, err)
    [job] = queued(rdb)
    assert (TOKEN, {"aps": {"alert": "Server down", "badge": 1, "sound": "default"}}, "default") == (
        job["token"],
        job["payload"],
        job["app"],
    )
    assert "queued 1 job (1 notification(s)) on apnsd:queue; depth now 1\n" == out


def test_push_with_several_tokens_fans_out(cli_env, rdb, capsys):
    """Repeating --token makes one fan-out job with a tokens list."""
    code, _, _ = run(
        capsys,
        "push",
        "--token",
        TOKEN,
        "--token",
        OTHER,
        "--payload",
        '{"aps":{"alert":"hi"}}',
        "--priority",
        "5",
        "--collapse-id",
        "c1",
    )

    assert 0 == code
    [job] = queued(rdb)
    assert ([TOKEN, OTHER], {"aps": {"alert": "hi"}}, 5, "c1") == (
        job["tokens"],
        job["payload"],
        job["priority"],
        job["collapse_id"],
    )


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--token", "zz" * 32, "--alert", "x"], "bad_token"),
        (["--token", "{length = 32, bytes = 0x965b251e ... 376eab7c }", "--alert", "x"], "token_is_description"),
        (["--token", TOKEN, "--priority", "7"], "bad_priority"),
        (["--token", TOKEN, "--payload", '{"aps":{"content-available":1}}', "--priority", "10"], "bad_priority"),
        (["--token", TOKEN, "--alert", "x", "--push-type", "voip", "--topic", "com.example.app"], "bad_topic"),
        (["--token", TOKEN, "--payload", "[1]"], "bad_payload"),
        (["--token", TOKEN, "--payload", "{oops"], "--payload is not valid JSON"),
        (["--token", TOKEN, "--payload", '{"a":' + "[" * 5000 + "]" * 5000 + "}"], "--payload is not valid JSON"),
        (["--token", TOKEN, "--app", "nosuchapp"], "app 'nosuchapp' is not configured"),
    ],
)
def test_push_rejects_invalid_jobs_with_exit_2_and_the_reason(cli_env, rdb, capsys, argv, reason):
    """An invalid job is refused before it reaches Redis: exit 2 and the reason on stderr."""
    code, out, err = run(capsys, "push", *argv)

    assert (2, "") == (code, out)
    assert err.startswith("apnsd push: ") and reason in err
    assert 0 == rdb.llen("apnsd:queue")


def test_push_at_relative_time_schedules_the_job(cli_env, rdb, capsys):
    """--at +60 puts the job into apnsd:scheduled due 60 seconds from now, not on the queue."""
    before = time.time()
    code, out, _ = run(capsys, "push", "--token", TOKEN, "--alert", "later", "--at", "+60")
    after = time.time()

    assert 0 == code
    assert 0 == rdb.llen("apnsd:queue")
    [(raw, score)] = rdb.zrange("apnsd:scheduled", 0, -1, withscores=True)
    assert before + 60 <= score <= after + 60
    assert (TOKEN, score) == (msgspec.json.decode(raw)["token"], msgspec.json.decode(raw)["send_at"])
    assert out.startswith("scheduled 1 job on apnsd:scheduled for ")


def test_push_at_absolute_time_schedules_at_that_time(cli_env, rdb, capsys):
    """--at with unix seconds schedules the job for exactly that time."""
    assert 0 == run(capsys, "push", "--token", TOKEN, "--alert", "x", "--at", "1900000000")[0]

    assert [1_900_000_000.0] == [score for _, score in rdb.zrange("apnsd:scheduled", 0, -1, withscores=True)]


@pytest.mark.parametrize("at", ["soon", "+", "+abc", "inf", "nan", "1e300", "+1e300", "253402300800"])
def test_push_at_with_a_bad_time_exits_2_with_a_message(cli_env, rdb, capsys, at):
    """An --at that is neither unix seconds nor +SECONDS is a usage error, not a traceback."""
    with pytest.raises(SystemExit) as info:
        main(["push", "--token", TOKEN, "--alert", "x", "--at", at])

    assert 2 == info.value.code
    assert "argument --at" in capsys.readouterr().err
    assert 0 == rdb.zcard("apnsd:scheduled")


# --- stats and dead letters ------------------------------------------------------------------------


def test_stats_json_shows_depth_dead_and_unregistered(cli_env, rdb, capsys):
    """`apnsd stats --json` reports queue depth, scheduled jobs, dead letters and unregistered tokens."""
    rdb.lpush("apnsd:queue", b"{}", b"{}")
    rdb.zadd("apnsd:scheduled", {b"{}": 1.0})
    add_dead(rdb, TOKEN, "bad_payload")
    rdb.hset("apnsd:unregistered", OTHER, b'{"reason":"Unregistered"}')

    code, out, _ = run(capsys, "stats", "--json")

    data = json.loads(out)
    assert 0 == code
    assert {"apnsd:queue": {"depth": 2, "scheduled": 1, "apps": ["default"]}} == data["queues"]
    assert (1, 1, []) == (data["dead"], data["unregistered"], data["workers"])


def test_stats_text_is_readable(cli_env, rdb, capsys):
    """Plain `apnsd stats` prints one line per queue and the dead-letter and unregistered counts."""
    rdb.lpush("apnsd:queue", b"{}")

    code, out, _ = run(capsys, "stats")

    assert 0 == code
    assert "queue apnsd:queue: 1 waiting, 0 scheduled (apps: default)" in out.splitlines()
    assert "dead letters: 0    unregistered tokens: 0" in out.splitlines()


@pytest.mark.parametrize("beat", [b"garbage", b"[1]", b"\xff", b"[" * 100_000])
def test_stats_counts_a_worker_whose_heartbeat_it_cannot_read_as_alive(cli_env, rdb, capsys, beat):
    """A heartbeat key holding something other than apnsd's JSON still means a live worker: stats goes on."""
    rdb.sadd("apnsd:workers", "other")
    rdb.set("apnsd:worker:other", beat, ex=60)

    code, out, err = run(capsys, "stats", "--json")

    expected = [{"id": "other", "alive": True, "in_flight": 0, "last_heartbeat": None}]
    assert (0, "", expected) == (code, err, json.loads(out)["workers"])


def test_stats_leaves_out_a_lifetime_count_another_program_set_to_text(cli_env, rdb, capsys):
    """A field of apnsd:stats that is not a number is left out of the totals: stats still answers (exit 0)."""
    rdb.hset("apnsd:stats", mapping={"delivered": "many", "dead": "3"})

    code, out, err = run(capsys, "stats", "--json")

    data = json.loads(out)
    assert (0, "", 3, False) == (code, err, data["total_dead"], "total_delivered" in data)


def test_dead_list_shows_newest_entries(cli_env, rdb, capsys):
    """`apnsd dead list --json` prints one JSON entry per dead letter, newest first, filtered by reason."""
    add_dead(rdb, TOKEN, "bad_payload")
    add_dead(rdb, OTHER, "InvalidToken")

    code, out, _ = run(capsys, "dead", "list", "--json")
    assert 0 == code
    assert ["InvalidToken", "bad_payload"] == [json.loads(line)["reason"] for line in out.splitlines()]

    code, out, _ = run(capsys, "dead", "list", "--reason", "bad_")
    lines = out.splitlines()
    assert 0 == code
    assert 2 == len(lines) and "bad_payload" in lines[0] and "token c9d4c07c…" in lines[0]
    assert "(1 shown, 2 in apnsd:dead)" == lines[1]


def test_dead_requeue_by_reason_puts_jobs_back_on_the_queue(cli_env, rdb, capsys):
    """`apnsd dead requeue --reason X --all` moves only the dead letters with that reason back onto the queue."""
    job = add_dead(rdb, TOKEN, "bad_payload")
    add_dead(rdb, OTHER, "InvalidToken")

    code, out, _ = run(capsys, "dead", "requeue", "--reason", "bad_payload", "--all")

    assert (0, "requeued 1 job(s), by reason:\n         1  bad_payload\n") == (code, out)
    assert [job] == rdb.lrange("apnsd:queue", 0, -1)
    assert ["InvalidToken"] == [json.loads(e)["reason"] for e in rdb.lrange("apnsd:dead", 0, -1)]


@pytest.mark.parametrize("action", ["requeue", "purge"])
@pytest.mark.parametrize("selectors", [[], ["--all", "--limit", "3"], ["--limit", "0"]])
def test_dead_requeue_and_purge_need_exactly_one_selector(cli_env, rdb, capsys, action, selectors):
    """Without --all or --limit N (or with both, or a limit below 1) nothing moves and the exit status is 2."""
    add_dead(rdb, TOKEN, "app_disabled")

    code, out, err = run(capsys, "dead", action, *selectors)

    assert (2, "") == (code, out)
    assert err.startswith("apnsd dead: ")
    assert (1, 0) == (rdb.llen("apnsd:dead"), rdb.llen("apnsd:queue"))


def test_dead_requeue_all_moves_every_entry_not_just_twenty(cli_env, rdb, capsys):
    """`--all` requeues every matching dead letter (the certificate-renewal recipe), with counts by reason."""
    for i in range(25):
        add_dead(rdb, f"{i:064x}", "app_disabled: certificate expired")
    add_dead(rdb, TOKEN, "BadDeviceToken")

    code, out, _ = run(capsys, "dead", "requeue", "--reason", "app_disabled", "--all")

    assert (0, "requeued 25 job(s), by reason:\n        25  app_disabled: certificate expired\n") == (code, out)
    assert (1, 25) == (rdb.llen("apnsd:dead"), rdb.llen("apnsd:queue"))


def test_dead_dry_run_counts_by_reason_and_changes_nothing(cli_env, rdb, capsys):
    """`--dry-run` prints what requeue and purge would do, by reason, and leaves Redis alone."""
    add_dead(rdb, TOKEN, "BadDeviceToken")
    add_dead(rdb, OTHER, "BadDeviceToken")
    add_dead(rdb, "cd" * 32, "TopicDisallowed")

    requeue = run(capsys, "dead", "requeue", "--all", "--dry-run")
    purge = run(capsys, "dead", "purge", "--limit", "2", "--dry-run")

    assert (0, "would requeue 3 job(s), by reason:\n         2  BadDeviceToken\n         1  TopicDisallowed\n") == (
        requeue[:2]
    )
    assert (0, "would delete 2 job(s), by reason:\n         1  TopicDisallowed\n         1  BadDeviceToken\n") == (
        purge[:2]
    )
    assert (3, 0) == (rdb.llen("apnsd:dead"), rdb.llen("apnsd:queue"))


def test_dead_purge_deletes_the_selected_entries(cli_env, rdb, capsys):
    """`apnsd dead purge --reason X --all` deletes only those dead letters and requeues nothing."""
    add_dead(rdb, TOKEN, "bad_payload")
    add_dead(rdb, OTHER, "InvalidToken")

    code, out, _ = run(capsys, "dead", "purge", "--reason", "bad_", "--all")

    assert (0, "deleted 1 job(s), by reason:\n         1  bad_payload\n") == (code, out)
    assert ["InvalidToken"] == [json.loads(e)["reason"] for e in rdb.lrange("apnsd:dead", 0, -1)]
    assert 0 == rdb.llen("apnsd:queue")


# Entries another program (or a hand-edit) may have left in apnsd:dead, oldest first.
FOREIGN_DEAD = [
    b"garbage",
    b"\xff\xfe",
    b"[1, 2]",
    b"[" * 100_000,
    b'{"reason": "odd", "job": "{}", "app": ["x"], "token": 7, "time": "soon", "status": {}}',
    b'{"reason": "far", "job": "{}", "time": 1e999}',
    b'{"reason": "old", "job": "{}", "time": -1e300, "detail": 5}',
]


def test_dead_list_shows_entries_it_cannot_read_instead_of_failing(cli_env, rdb, capsys):
    """Entries that are not apnsd's JSON, or hold fields of the wrong type, are listed as such: exit 0, no error."""
    rdb.lpush("apnsd:dead", *FOREIGN_DEAD)
    add_dead(rdb, TOKEN, "bad_payload")

    code, out, err = run(capsys, "dead", "list")
    as_json = run(capsys, "dead", "list", "--json")

    lines = out.splitlines()
    assert (0, "", 9) == (code, err, len(lines))
    assert "bad_payload" in lines[0] and "token c9d4c07c…" in lines[0]
    assert 4 == sum("(unreadable dead letter)" in line for line in lines)
    assert "(8 shown, 8 in apnsd:dead)" == lines[-1]
    assert (0, "") == (as_json[0], as_json[2])
    assert ["bad_payload", "old", "far", "odd"] + ["(unreadable dead letter)"] * 4 == [
        json.loads(line)["reason"] for line in as_json[1].splitlines()
    ]


def strict_json(text: str) -> Any:
    """Decode ``text`` as RFC 8259 JSON: NaN, Infinity and -Infinity are refused."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_dead_list_json_is_strict_json_whatever_an_entry_holds(cli_env, rdb, capsys):
    """Numbers Python reads as non-finite (1e999, NaN) are printed as strings, so every line is valid JSON."""
    rdb.lpush("apnsd:dead", b'{"reason": "far", "time": 1e999, "status": -1e999, "detail": NaN, "n": [Infinity]}')

    code, out, err = run(capsys, "dead", "list", "--json")

    expected = {"reason": "far", "time": "Infinity", "status": "-Infinity", "detail": "NaN", "n": ["Infinity"]}
    assert (0, "", expected) == (code, err, strict_json(out))


def test_stats_json_is_strict_json_whatever_a_heartbeat_holds(cli_env, rdb, capsys):
    """A heartbeat time another program set to 1e999 is printed as a string, so the output is valid JSON."""
    rdb.sadd("apnsd:workers", "other")
    rdb.set("apnsd:worker:other", b'{"time": 1e999}', ex=60)

    code, out, err = run(capsys, "stats", "--json")

    expected = [{"id": "other", "alive": True, "in_flight": 0, "last_heartbeat": "Infinity"}]
    assert (0, "", expected) == (code, err, strict_json(out)["workers"])


def test_dead_requeue_and_purge_pass_over_entries_they_cannot_read(cli_env, rdb, capsys):
    """Requeue moves the entries that hold a job (an app of the wrong type means the default queue); purge the rest."""
    rdb.lpush("apnsd:dead", *FOREIGN_DEAD)

    requeue = run(capsys, "dead", "requeue", "--all")
    purge = run(capsys, "dead", "purge", "--all")

    assert (0, "requeued 3 job(s), by reason:\n         1  old\n         1  far\n         1  odd\n", "") == requeue
    assert (0, "deleted 4 job(s), by reason:\n         4  (unreadable dead letter)\n", "") == purge
    assert (0, [b"{}"] * 3) == (rdb.llen("apnsd:dead"), rdb.lrange("apnsd:queue", 0, -1))


# --- health ----------------------------------------------------------------------------------------


def test_health_without_a_worker_exits_1_with_a_reason(cli_env, capsys):
    """`apnsd health` fails with a one-line reason when no worker has reported."""
    code, out, _ = run(capsys, "health")

    assert 1 == code
    assert out.startswith("unhealthy: no worker has written a fresh status to ")


@pytest.mark.parametrize(
    "content",
    [
        "[1]",
        '{"time": null, "worker": "w"}',
        '{"time": "now", "worker": "w"}',
        '{"time": 1e999, "worker": "w"}',
        "[" * 100_000,
    ],
)
def test_health_reads_a_status_file_apnsd_did_not_write_as_no_status(cli_env, capsys, content):
    """A worker status file holding something else (another program, another version) counts as no fresh
    status: exit 1 with the usual reason, never a traceback."""
    cli_env.mkdir(parents=True, exist_ok=True)
    (cli_env / "worker-other.json").write_text(content)

    code, out, err = run(capsys, "health", "--liveness")

    assert (1, "") == (code, err)
    assert out.startswith("unhealthy: no worker has written a fresh status to ")


@pytest.mark.parametrize(
    "queues",
    [[1], {"q": "x"}, {"q": {"apps": [1]}}, {"q": {"apps": {"default": 3}}}],
    ids=["list", "str", "apps", "app"],
)
def test_health_reads_a_fresh_status_of_another_shape_as_no_status(cli_env, capsys, queues):
    """A fresh worker status file whose queues or apps are not what apnsd writes (another version, another
    program) counts as no status: exit 1 with the usual reason, never a traceback."""
    cli_env.mkdir(parents=True, exist_ok=True)
    status = {"time": time.time(), "worker": "w", "redis": True, "queues": queues}
    (cli_env / "worker-other.json").write_text(json.dumps(status))

    code, out, err = run(capsys, "health")

    assert (1, "") == (code, err)
    assert out.startswith("unhealthy: no worker has written a fresh status to ")


def test_health_reason_is_one_line_whatever_the_status_file_holds(cli_env, capsys):
    """A connect error holding a newline and a terminal escape sequence is shown on one line, without them."""
    cli_env.mkdir(parents=True, exist_ok=True)
    apps = {"default": {"last_connect_error": "x\x1b[2Jy\nz"}}
    status = {"time": time.time(), "worker": "w", "redis": True, "queues": {"apnsd:queue": {"apps": apps}}}
    (cli_env / "worker-other.json").write_text(json.dumps(status))

    code, out, _ = run(capsys, "health")

    assert (1, "unhealthy: app default: last connection attempt failed: x?[2Jy?z\n") == (code, out)


def test_health_is_ok_while_a_daemon_runs_and_fails_after_it_stops(cli_env, capsys, binary_mock, make_config):
    """`apnsd health` exits 0 while a worker heartbeats and 1 once it has stopped."""
    daemon = Daemon(make_config(binary_mock(), WORKER_STATE_DIR=str(cli_env)))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not daemon.health_path.exists():
            assert time.monotonic() < deadline, "daemon wrote no health file"
            time.sleep(0.02)

        assert (0, "healthy: 1 worker(s) alive\n", "") == run(capsys, "health")
    finally:
        daemon.request_stop()
        thread.join(30)

    assert [0] == result
    assert 1 == run(capsys, "health")[0]


# --- errors and help -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"APNSD_WORKER_BATCH_SIZE": "0"}, "worker.batch_size"),
        ({"APNSD_APP_DEFAULT_RECONNECT_INTERVAL": "5"}, "apps.default.reconnect_interval"),
        ({"APNSD_APP_DEFAULT_PORT": "https"}, "apps.default.port"),
        ({"APNSD_WORKER_BATCHSIZE": "5"}, "worker.batchsize"),
        ({"APNSD_REDIS_URL": "redis://127.0.0.1:99999/0"}, "redis.url"),
        ({"APNSD_REDIS_URL": "redis://127.0.0.1:six/0"}, "redis.url"),
        ({"APNSD_REDIS_URL": "redis://[::1/0"}, "redis.url"),
    ],
)
def test_bad_config_exits_2_naming_the_key_without_a_traceback(cli_env, monkeypatch, capsys, env, key):
    """A bad setting makes every command exit 2 with the key's name on stderr and no traceback."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    for argv in (["stats"], ["health"], ["push", "--token", TOKEN, "--alert", "x"]):
        code, out, err = run(capsys, *argv)
        assert (2, "") == (code, out)
        assert f"config key {key!r}" in err
        assert "Traceback" not in err


def test_a_redis_url_query_value_redis_cannot_read_exits_2_naming_the_key(cli_env, monkeypatch, capsys):
    """A URL option redis-py cannot read (socket_timeout=soon) is a config error naming redis.url, not a ValueError."""
    monkeypatch.setenv("APNSD_REDIS_URL", "redis://127.0.0.1/0?socket_timeout=soon")

    for argv in (["stats"], ["push", "--token", TOKEN, "--alert", "x"]):
        code, out, err = run(capsys, *argv)
        assert (2, "", True) == (code, out, "config key 'redis.url': is not a valid Redis URL" in err)


def test_missing_config_file_exits_2(cli_env, capsys, tmp_path):
    """--config naming a file that does not exist exits 2 saying so."""
    code, _, err = run(capsys, "stats", "--config", str(tmp_path / "nope.toml"))

    assert 2 == code
    assert "does not exist" in err


def test_missing_config_file_named_by_the_variable_names_the_variable(cli_env, monkeypatch, capsys, tmp_path):
    """$APNSD_CONFIG naming a file that does not exist exits 2 with an error about APNSD_CONFIG, not --config."""
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("APNSD_CONFIG", str(missing))

    code, out, err = run(capsys, "stats")

    expected = f"config key 'APNSD_CONFIG': file {missing} does not exist"
    assert (2, "", True, False) == (code, out, expected in err, "--config" in err)


def test_unreachable_redis_exits_2_with_the_cause(cli_env, monkeypatch, capsys):
    """When Redis cannot be reached the command exits 2 with a one-line explanation."""
    monkeypatch.setenv("APNSD_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")

    code, _, err = run(capsys, "stats")

    assert 2 == code
    assert err.startswith("apnsd stats: Redis unavailable")
    assert 1 == len(err.strip().splitlines())


def test_help_exits_0_and_lists_the_commands(capsys):
    """`apnsd --help` prints usage with every command and exits 0."""
    with pytest.raises(SystemExit) as info:
        main(["--help"])

    out = capsys.readouterr().out
    assert 0 == info.value.code
    commands = ("run", "demo", "push", "send", "check", "mock", "stats", "dead", "health")
    assert [] == [c for c in commands if c not in out]


def test_no_command_prints_help_and_exits_2(capsys):
    """`apnsd` without a command prints usage and exits 2."""
    assert 2 == main([])
    assert "usage: apnsd" in capsys.readouterr().out


def test_push_with_a_bad_token_as_a_process_prints_one_line_and_no_traceback(redis_server):
    """As a real process, a bad token gives exit 2 and a one-line error on stderr, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APNSD_")}
    env.update(APNSD_REDIS_URL=redis_server.url, PYTHONPATH=str(REPO))

    proc = subprocess.run(
        [sys.executable, "-m", "apnsd.cli", "push", "--token", "zz" * 32, "--alert", "x"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert (2, "") == (proc.returncode, proc.stdout)
    assert 1 == len(proc.stderr.strip().splitlines())
    assert proc.stderr.startswith("apnsd push: bad_token: ")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        [b"push", b"--token", TOKEN.encode(), b"--alert", b"caf\xe9"],
        [b"send", b"--token", TOKEN.encode(), b"--title", b"\xff"],
        [b"dead", b"list", b"--reason", b"Bad\xff"],
    ],
    ids=["push", "send", "dead"],
)
def test_an_argument_that_is_not_utf8_as_a_process_is_one_line_not_a_traceback(redis_server, argv):
    """A Latin-1 shell's bytes in a text option give exit 2 and one line naming the option, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APNSD_")}
    env.update(APNSD_REDIS_URL=redis_server.url, PYTHONPATH=str(REPO))
    option = next(a for a in reversed(argv) if a.startswith(b"--")).decode()

    proc = subprocess.run(
        [sys.executable.encode(), b"-m", b"apnsd.cli", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
    )

    expected = f"apnsd {argv[0].decode()}: {option} is not UTF-8 text\n".encode()
    assert (2, b"", expected) == (proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--feedback", "/nonexistent/tokens.txt"], "--feedback /nonexistent/tokens.txt: "),
        (["--protocol", "binary", "--feedback", "{tokens}"], "--feedback {tokens}: "),
        (["--host", "256.1.1.1"], "cannot listen on 256.1.1.1:0: "),
    ],
)
def test_a_mock_that_cannot_start_says_why_in_one_line(argv, problem, tmp_path, capsys):
    """A missing or malformed feedback file or an address it cannot bind: exit 2, one line naming it, no traceback."""
    (tmp_path / "tokens.txt").write_text("not-hex\n")
    names = {"tokens": str(tmp_path / "tokens.txt")}
    argv = [a.format(**names) for a in argv]

    try:
        code = main(["mock", "--port", "0", "--pki-dir", str(tmp_path / "pki"), *argv])
    finally:
        logs.configure("json", "info", LOG)  # `apnsd mock` logs to this test's captured stderr: put the buffer back

    err = capsys.readouterr().err
    assert (2, 1) == (code, len(err.splitlines()))
    assert err.startswith("apnsd mock: " + problem.format(**names))


# --- run and demo ----------------------------------------------------------------------------------


def test_run_without_any_configuration_exits_2_and_points_to_the_demo(env_clean, capsys, tmp_path, monkeypatch):
    """`apnsd run` with no config file and no APNSD_* variables refuses to start instead of running a demo."""
    monkeypatch.chdir(tmp_path)
    if Path("/etc/apnsd/apnsd.toml").is_file():
        pytest.fail("/etc/apnsd/apnsd.toml exists on this machine: the no-configuration case cannot be tested")

    code, out, err = run(capsys, "run", "--drain")

    assert (2, "") == (code, out)
    assert err.startswith("apnsd run: no configuration found")
    assert "apnsd demo --drain" in err


def test_demo_drain_as_a_process_delivers_the_samples_and_prints_a_summary(env_clean):
    """`apnsd demo --drain` (the quick start) runs its own Redis and mock, delivers, summarises and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APNSD_")}
    env["PYTHONPATH"] = str(REPO)

    proc = subprocess.run(
        [sys.executable, "-m", "apnsd.cli", "demo", "--drain", "--jobs", "20"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert 0 == proc.returncode, proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert "gateway accepted 20 notifications" in summary
    assert "delivered 20, dead-lettered 2, unregistered 1." in summary


@pytest.mark.parametrize("level", ["DEBUG", "Warning", "error"])
def test_log_level_names_are_case_insensitive(env_clean, monkeypatch, level):
    """APNSD_LOG_LEVEL=DEBUG (any case) is accepted and stored in lower case."""
    from apnsd.config import load_config

    assert level.lower() == load_config(None, {"APNSD_LOG_LEVEL": level}).log.level


def test_run_log_level_option_overrides_the_config(cli_env, rdb, capsys, binary_mock, pki, monkeypatch):
    """`apnsd run --log-level DEBUG` configures logging at debug although the config says info."""
    from apnsd import logs

    mock = binary_mock()
    for key, value in {
        "HOST": mock.host,
        "PORT": str(mock.port),
        "PROTOCOL": "binary",
        "CERT": pki.client_pem,
        "CA_FILE": pki.ca_cert,
        "CONFIRM_DELAY": "0.2",
    }.items():
        monkeypatch.setenv(f"APNSD_APP_DEFAULT_{key}", value)
    levels: list[str] = []
    monkeypatch.setattr(logs, "configure", lambda fmt, level, stream=None: levels.append(level))
    rdb.lpush("apnsd:queue", msgspec.json.encode({"token": TOKEN, "payload": {"aps": {"alert": "x"}}}))

    code, _, _ = run(capsys, "run", "--drain", "--log-level", "DEBUG")

    assert (0, ["debug"]) == (code, levels)
    assert [TOKEN] == list(mock.record.accepted_tokens())


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_stats_watch_rejects_a_bad_interval(cli_env, capsys, value):
    """`apnsd stats --watch` needs a number of seconds of at least 0.1; anything else is a usage error."""
    with pytest.raises(SystemExit) as exc:
        main(["stats", "--watch", value])
    assert 2 == exc.value.code
    assert f"argument --watch: {value!r} is not a number of seconds of at least 0.1" in capsys.readouterr().err


def test_stats_counts_a_value_another_program_left_in_flight_as_one_job(cli_env, rdb, capsys):
    """A dead worker's in-flight hash holding values apnsd did not write (not msgpack, not a list of jobs)
    counts each as one job, as recovery returns it to the queue: exit 0, no traceback."""
    from apnsd.store.layout import pack_jobs

    rdb.sadd("apnsd:workers", "gone")
    rdb.hset(
        "apnsd:queue:inflight:gone",
        mapping={"1": pack_jobs([b"a", b"\xff"]), "2": b"junk", "3": b"\x92\x01\x02", "4": b"\xdd\xff"},
    )

    code, out, err = run(capsys, "stats", "--json")

    assert (0, "", 5) == (code, err, json.loads(out)["workers"][0]["in_flight"])


@pytest.mark.parametrize(
    "key, argv",
    [
        ("apnsd:queue", ["stats"]),
        ("apnsd:dead", ["dead", "list"]),
        ("apnsd:dead", ["dead", "purge", "--all"]),
        ("apnsd:queue", ["push", "--token", TOKEN, "--alert", "x"]),
        ("apnsd:unregistered", ["stats", "--json"]),
    ],
)
def test_a_wrong_typed_key_is_named_in_one_line_with_exit_2(cli_env, rdb, capsys, key, argv):
    """An operator tool meeting a key of another type names the key (or the keys it may be) and points to
    `apnsd check`, in one line on stderr, exit 2."""
    rdb.set(key, "another program's string")

    code, out, err = run(capsys, *argv)

    assert (2, "", 1, True) == (code, out, len(err.splitlines()), key in err), err
    assert "holds another type than apnsd uses there (`apnsd check` names such keys" in err


def test_stats_watch_rides_out_a_redis_outage():
    """`stats --watch --json` whose Redis goes away after the first refresh writes an `error` line instead of
    exiting, and carries on once Redis is back; a Redis it cannot reach at the first refresh is exit 2."""
    from apnsd.cli.watch import watch
    from apnsd.config import load_config
    from apnsd.store.queue import JobQueue, client_for
    from apnsd.testing.redis_server import RedisServer

    server = RedisServer().start()
    config = load_config(None, {"APNSD_REDIS_URL": server.url, "APNSD_REDIS_SOCKET_TIMEOUT": "2"})
    q = JobQueue(client_for(config.redis), "apnsd", "watcher")

    def outage(_seconds: float) -> None:
        if server.proc is not None:  # down after the first refresh, back after the second
            server.stop()
        else:
            server.start()

    out = io.StringIO()
    try:
        code = watch(config, q, 1.0, True, out, refreshes=3, sleep=outage)
    finally:
        server.stop()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]

    assert (0, [False, True, False]) == (code, ["error" in line for line in lines]), out.getvalue()
    assert "Redis unavailable" in lines[1]["error"]
    with pytest.raises(QueueError):
        watch(config, q, 1.0, True, io.StringIO(), refreshes=1)


def test_dead_list_shows_each_entry_on_one_safe_line_however_long_or_garbled(cli_env, rdb, capsys):
    """A dead letter another program wrote with a newline, a terminal escape sequence and 100,000 characters in
    its reason is one line without control characters, cut after 300 characters; `--json` keeps it whole."""
    reason = "evil\n\x1b[2J" + "A" * 100_000
    rdb.lpush("apnsd:dead", json.dumps({"reason": reason, "app": "x\ry", "detail": "d\x07", "time": 0}))

    code, out, _ = run(capsys, "dead", "list")
    json_code, json_out, _ = run(capsys, "dead", "list", "--json")

    first = out.splitlines()[0]
    assert (0, 2, False) == (code, len(out.splitlines()), any(c in first for c in "\x1b\r\x07"))
    assert first.endswith("x?y        evil??[2J" + "A" * 291 + "…(+99709 characters): d?")
    assert (0, reason) == (json_code, json.loads(json_out)["reason"])


def test_dead_list_piped_into_a_reader_that_stops_early_ends_quietly(redis_server, rdb):
    """`apnsd dead list | head -1` as real processes: once the reader has gone, apnsd stops with exit 141 (what
    a shell shows for SIGPIPE), and no traceback on stderr."""
    for _ in range(5):
        add_dead(rdb, TOKEN, "BadDeviceToken")
    rdb.lpush("apnsd:dead", *[rdb.lindex("apnsd:dead", 0)] * 20_000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APNSD_")}
    env.update(APNSD_REDIS_URL=redis_server.url, PYTHONPATH=str(REPO))

    proc = subprocess.Popen(
        [sys.executable, "-m", "apnsd.cli", "dead", "list", "--limit", "20000"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait(60)

    assert (141, "") == (code, err)
    assert b"BadDeviceToken" in first


def test_dead_requeue_onto_a_queue_of_another_type_keeps_every_dead_letter(cli_env, rdb, capsys):
    """The queue holds a string (another program): requeue fails with exit 2 naming the keys, and every dead
    letter is still there to requeue once the key is fixed: none removed without being pushed."""
    jobs = [add_dead(rdb, t, "BadDeviceToken") for t in (TOKEN, OTHER)]
    rdb.set("apnsd:queue", "another program's string")

    code, _, err = run(capsys, "dead", "requeue", "--all")
    kept = rdb.llen("apnsd:dead")
    rdb.delete("apnsd:queue")
    again, _, _ = run(capsys, "dead", "requeue", "--all")

    assert (2, 2, 0) == (code, kept, again), err
    assert sorted(jobs) == sorted(rdb.lrange("apnsd:queue", 0, -1))


def test_dead_list_by_reason_finds_a_match_behind_ten_thousand_newer_entries(cli_env, rdb, capsys):
    """`dead list --reason R` looks through the whole dead list, not just its newest 10,000 entries."""
    add_dead(rdb, OTHER, "TopicDisallowed")
    rdb.lpush("apnsd:dead", *[rdb.lindex("apnsd:dead", 0).replace(b"TopicDisallowed", b"BadDeviceToken")] * 10_050)

    code, out, _ = run(capsys, "dead", "list", "--reason", "Topic")

    assert (0, 2) == (code, len(out.splitlines()))
    assert " TopicDisallowed token abababab…" in out.splitlines()[0]
