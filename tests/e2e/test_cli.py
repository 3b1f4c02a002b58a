"""The `apnsd` command line, run in-process against a real redis-server (and once as a real process)."""

from __future__ import annotations

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

from apnsd.cli.main import main
from apnsd.testing.redis_server import free_port
from apnsd.worker.daemon import Daemon
from apnsd.worker.outcome_log import dead_entry

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
        (["--token", TOKEN, "--payload", "[1]"], "bad_payload"),
        (["--token", TOKEN, "--payload", "{oops"], "--payload is not valid JSON"),
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


@pytest.mark.parametrize("at", ["soon", "+", "+abc", "inf", "nan"])
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
    """`apnsd dead requeue --reason X` moves only the dead letters with that reason back onto the queue."""
    job = add_dead(rdb, TOKEN, "bad_payload")
    add_dead(rdb, OTHER, "InvalidToken")

    code, out, _ = run(capsys, "dead", "requeue", "--reason", "bad_payload")

    assert (0, "requeued 1 job(s)\n") == (code, out)
    assert [job] == rdb.lrange("apnsd:queue", 0, -1)
    assert ["InvalidToken"] == [json.loads(e)["reason"] for e in rdb.lrange("apnsd:dead", 0, -1)]


# --- health ----------------------------------------------------------------------------------------


def test_health_without_a_worker_exits_1_with_a_reason(cli_env, capsys):
    """`apnsd health` fails with a one-line reason when no worker has reported."""
    code, out, _ = run(capsys, "health")

    assert 1 == code
    assert out.startswith("unhealthy: no worker has written a fresh status to ")


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


def test_missing_config_file_exits_2(cli_env, capsys, tmp_path):
    """--config naming a file that does not exist exits 2 saying so."""
    code, _, err = run(capsys, "stats", "--config", str(tmp_path / "nope.toml"))

    assert 2 == code
    assert "does not exist" in err


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
    assert [] == [c for c in ("run", "push", "check", "mock", "stats", "dead", "health") if c not in out]


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


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_stats_watch_rejects_a_bad_interval(cli_env, capsys, value):
    """`apnsd stats --watch` needs a number of seconds of at least 0.1; anything else is a usage error."""
    with pytest.raises(SystemExit) as exc:
        main(["stats", "--watch", value])
    assert 2 == exc.value.code
    assert f"argument --watch: {value!r} is not a number of seconds of at least 0.1" in capsys.readouterr().err
