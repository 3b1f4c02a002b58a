"""Process control of a real `apnsd run`: signals that arrive while it is still starting up, a second stop
signal, the signals whose default action would kill it, a log output that goes away."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.faultkit import REPO, DaemonProcess, RedisCutter, daemon_env, tally
from tests.support.jobs import good_tokens, job, push_all
from tests.support.wait import wait_for


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=["hup", "term", "int"])
def test_a_signal_during_start_up_is_honoured_not_fatal(sig, redis_server, http2_mock, pki, tmp_path: Path) -> None:
    """A signal that comes while the daemon waits for Redis at start-up: SIGHUP reloads once it runs and it runs
    on; SIGTERM stops it gracefully once started, exit 0 (not death by signal); SIGINT (Ctrl-C) interrupts
    the start-up at once, exit 130, nothing taken."""
    mock: Any = http2_mock()
    cutter = RedisCutter(redis_server.port, b"no marker", set())
    cutter.gate.clear()  # the daemon's first Redis connection waits: it is inside its start-up
    env = daemon_env(cutter.url, mock.host, mock.port, "http2", pki, tmp_path / "state")
    proc = DaemonProcess(env, tmp_path / "daemon.log")
    try:
        wait_for(cutter.accepted.is_set, 30, "the daemon's first Redis connection")
        proc.signal(sig)
        cutter.gate.set()
        if sig is signal.SIGHUP:
            wait_for(lambda: proc.events("reloaded") or proc.proc.poll() is not None, 30, "the reload")
            assert (None, 1) == (proc.proc.poll(), len(proc.events("started"))), proc.tail()
            proc.signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        proc.kill()
        cutter.close()

    expected = (130, []) if sig is signal.SIGINT else (0, [True])
    assert expected == (code, [e["clean"] for e in proc.events("stopped")]), proc.tail()


@pytest.mark.timeout(90)
def test_a_log_output_that_goes_away_costs_log_lines_not_deliveries(
    jq, redis_server, http2_mock, pki, tmp_path
) -> None:
    """stdout is a pipe whose reader has gone (a log shipper died): the daemon says so once on stderr, delivers
    every job and stops gracefully with exit 0, instead of dying on its first log line."""
    mock: Any = http2_mock()
    env = daemon_env(redis_server.url, mock.host, mock.port, "http2", pki, tmp_path / "state")
    err = tmp_path / "stderr.txt"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "apnsd.cli", "run"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr
        )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader goes away before the first line
    tokens = good_tokens(20, seed=51)
    push_all(jq, [job(t) for t in tokens])
    try:
        wait_for(lambda: len(mock.record.accepted_tokens()) == 20 or proc.poll() is not None, 30, "the deliveries")
        running = proc.poll()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    text = err.read_text()
    assert (None, 0, set(tokens)) == (running, code, set(mock.record.accepted_tokens())), text[-2000:]
    assert 1 == text.count("the log output is gone"), text[-2000:]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])
def test_a_second_stop_signal_returns_unanswered_jobs_at_once(
    second, jq, rdb, redis_server, http2_mock, pki, tmp_path: Path
) -> None:
    """A gateway that stopped answering and a grace period of 300 s: the first SIGTERM starts the graceful
    stop, a second SIGTERM or SIGINT (Ctrl-C twice, a repeated `supervisorctl stop`) ends it at once with a
    `stop_hurried` line, exit 0, every unanswered job back in the queue, none lost, none left in flight."""
    mock: Any = http2_mock(stall_after=5)
    tokens = good_tokens(40, seed=52)
    push_all(jq, [job(t) for t in tokens])
    env = daemon_env(
        redis_server.url, mock.host, mock.port, "http2", pki, tmp_path / "state", WORKER_GRACE_PERIOD="300"
    )
    proc = DaemonProcess(env, tmp_path / "daemon.log")
    try:
        wait_for(lambda: len(mock.record.received) >= 5 and jq.depth("apnsd:queue") == 0, 30, "the stalled sends")
        proc.signal(signal.SIGTERM)
        wait_for(lambda: proc.events("stopping") or proc.proc.poll() is not None, 30, "the graceful stop")
        graceful = proc.proc.poll()  # still waiting for answers that will not come
        proc.signal(second)
        code = proc.wait(20)
    finally:
        proc.kill()

    t = tally(tokens, mock, jq, rdb, queued_ok=True)
    assert (None, 0, 1) == (graceful, code, len(proc.events("stop_hurried"))), proc.tail()
    assert ([], [], 0) == (t.lost, t.conflicts, t.inflight)
    assert (5, 35) == (t.delivered, t.queued)


@pytest.mark.timeout(90)
def test_usr1_usr2_and_quit_never_kill_a_worker_with_jobs_in_flight(
    jq, redis_server, http2_mock, pki, tmp_path: Path
) -> None:
    """SIGUSR1 logs a `status` line, SIGUSR2 writes every thread's stack to stderr, and the worker runs on;
    SIGQUIT (Ctrl-backslash) is a graceful stop like SIGTERM: exit 0, clean."""
    mock: Any = http2_mock()
    env = daemon_env(redis_server.url, mock.host, mock.port, "http2", pki, tmp_path / "state")
    proc = DaemonProcess(env, tmp_path / "daemon.log")
    tokens = good_tokens(10, seed=53)
    try:
        wait_for(lambda: proc.events("started") or proc.proc.poll() is not None, 30, "the start")
        proc.signal(signal.SIGUSR1)
        wait_for(lambda: proc.events("status") or proc.proc.poll() is not None, 30, "the status line")
        proc.signal(signal.SIGUSR2)
        wait_for(lambda: "Current thread" in proc.tail(200) or proc.proc.poll() is not None, 30, "the stack dump")
        push_all(jq, [job(t) for t in tokens])
        wait_for(lambda: len(mock.record.accepted_tokens()) == 10 or proc.proc.poll() is not None, 30, "deliveries")
        running = proc.proc.poll()
        proc.signal(signal.SIGQUIT)
        code = proc.wait(30)
    finally:
        proc.kill()

    status = proc.events("status")[0]
    assert (None, 0, [True]) == (running, code, [e["clean"] for e in proc.events("stopped")]), proc.tail()
    assert (["apnsd:queue"], set(tokens)) == (list(status["queues"]), set(mock.record.accepted_tokens()))
