"""apnsd under a real supervisord with deploy/supervisord.conf: run, deliver, stop, start, reload, SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from apnsd.store.queue import JobQueue
from apnsd.testing.mock import MockGateway
from apnsd.testing.redis_server import free_port
from tests.support.jobs import inflight_keys, job, push_all
from tests.support.supervised import (
    SUPERVISORD_CONF,
    VENV_BIN,
    OutputReader,
    clean_env,
    program_state,
    stop_by_pid,
    supervisorctl,
)
from tests.support.wait import wait_for


@dataclass
class Supervised:
    """A running supervisord, its config, and everything it printed."""

    conf: Path
    proc: subprocess.Popen[bytes]
    out: OutputReader

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """supervisorctl against this supervisord."""
        return supervisorctl(self.conf, *args)

    def state(self) -> str:
        """apnsd's state as supervisorctl reports it."""
        return program_state(self.conf)

    def pid(self) -> int:
        """apnsd's PID as supervisorctl reports it."""
        return int(self.ctl("pid", "apnsd").stdout.strip())


POOL_LINES = (";numprocs=", ";numprocs_start=", ";process_name=", ";environment=")


def write_conf(directory: Path, pool: bool = False) -> Path:
    """deploy/supervisord.conf with only the pid file and control socket moved into ``directory``;
    ``pool`` uncomments its documented several-processes lines, with the metrics listener off."""
    text = SUPERVISORD_CONF.read_text(encoding="utf-8")
    if pool:
        lines = text.splitlines()
        assert len(POOL_LINES) == sum(1 for line in lines if line.startswith(POOL_LINES))
        text = "\n".join(line[1:] if line.startswith(POOL_LINES) else line for line in lines) + "\n"
        text = text.replace('"127.0.0.1:946%(process_num)d"', '""')
    text = text.replace("/tmp/apnsd-supervisord.pid", str(directory / "supervisord.pid")).replace(
        "/tmp/apnsd-supervisor.sock", str(directory / "supervisor.sock")
    )
    assert "/tmp/apnsd-supervisor" not in text
    conf = directory / "supervisord.conf"
    conf.write_text(text, encoding="utf-8")
    return conf


@pytest.fixture
def supervise(
    rdb: Any, redis_server: Any, pki: Any, tmp_path: Path, binary_mock: Any
) -> Iterator[Callable[..., Supervised]]:
    """Factory: start supervisord (APNSD_* config in its environment) for a mock; stopped by PID at teardown.

    Depends on ``binary_mock`` so that the mocks outlive supervisord at teardown.
    """
    started: list[Supervised] = []
    short = Path(tempfile.mkdtemp(prefix="sv-"))  # Unix socket paths must stay under 108 bytes

    def start(mock: MockGateway, pool: bool = False, **overrides: str) -> Supervised:
        env = clean_env(
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            PYTHONUNBUFFERED="1",
            APNSD_REDIS_URL=redis_server.url,
            APNSD_APP_DEFAULT_HOST=mock.host,
            APNSD_APP_DEFAULT_PORT=str(mock.port),
            APNSD_APP_DEFAULT_CA_FILE=pki.ca_cert,
            APNSD_APP_DEFAULT_CERT=pki.client_pem,
            APNSD_APP_DEFAULT_PROTOCOL=mock.protocol,
            APNSD_APP_DEFAULT_MAX_CONNECTS_PER_MINUTE="60",
            APNSD_APP_DEFAULT_BACKOFF_INITIAL="0.05",
            APNSD_APP_DEFAULT_CONFIRM_DELAY="0.2",
            APNSD_WORKER_STATE_DIR=str(tmp_path / "state"),
            APNSD_WORKER_GRACE_PERIOD="5",
            APNSD_WORKER_BLOCK_TIMEOUT="0.2",
            APNSD_WORKER_HEARTBEAT_INTERVAL="0.5",
            APNSD_WORKER_HEARTBEAT_TTL="2",
            APNSD_WORKER_RECOVER_INTERVAL="0.5",
            APNSD_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
        )
        env.update({f"APNSD_{k}": v for k, v in overrides.items()})
        conf = write_conf(short, pool)
        proc = subprocess.Popen(
            [str(VENV_BIN / "supervisord"), "-c", str(conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=short,
        )
        s = Supervised(conf, proc, OutputReader(proc.stdout))  # type: ignore[arg-type]
        started.append(s)
        names = POOL if pool else ["apnsd"]

        def states() -> list[str]:
            return [program_state(conf, name) for name in names]

        wait_for(lambda: set(states()) == {"RUNNING"} or proc.poll() is not None, 20, "apnsd RUNNING")
        assert ["RUNNING"] * len(names) == states(), s.out.text()
        return s

    yield start
    for s in started:
        stop_by_pid(s.proc)
        s.out.join(5)
    shutil.rmtree(short, ignore_errors=True)


POOL = ["apnsd:apnsd_04", "apnsd:apnsd_05"]


def tokens(n: int) -> list[str]:
    """``n`` random device tokens."""
    return [os.urandom(32).hex() for _ in range(n)]


def queued_tokens(rdb: Any, queue: str = "apnsd:queue") -> set[str]:
    """The tokens of the jobs waiting in a queue."""
    return {json.loads(raw)["token"] for raw in rdb.lrange(queue, 0, -1)}


def test_supervisord_runs_apnsd_and_its_jobs_are_delivered(supervise, binary_mock, jq: JobQueue) -> None:
    """supervisorctl shows apnsd RUNNING and jobs pushed onto the queue reach the gateway, logged as JSON lines."""
    mock = binary_mock()
    sv = supervise(mock)
    sent = tokens(200)
    push_all(jq, [job(t) for t in sent])

    wait_for(lambda: set(sent) <= set(mock.record.accepted_tokens()), 20, "every job delivered")

    assert "RUNNING" == sv.state()
    wait_for(lambda: sv.out.events("started"), 10, "the started line read from the pipe")  # the reader thread may lag
    assert [f"{socket.gethostname()}:{sv.pid()}"] == [e["worker"] for e in sv.out.events("started")]
    assert 1 == len(sv.out.events("connected"))


def test_documented_numprocs_lines_run_two_workers_that_share_one_queue_and_deliver_each_job_once(
    supervise, binary_mock, jq: JobQueue, rdb
) -> None:
    """With deploy/supervisord.conf's several-processes lines on, two workers with stable ids drain one queue
    and every job reaches the gateway exactly once."""
    mock = binary_mock()
    sv = supervise(mock, pool=True, WORKER_BATCH_SIZE="20")
    sent = tokens(2000)
    push_all(jq, [job(t) for t in sent])

    wait_for(lambda: set(sent) <= set(mock.record.accepted_tokens()), 30, "every job delivered")
    wait_for(lambda: not inflight_keys(rdb), 10, "in-flight storage empty")

    host = socket.gethostname()
    assert {f"{host}-04", f"{host}-05"} == {e["worker"] for e in sv.out.events("started")}
    wait_for(lambda: len(sv.out.events("connected")) >= 2, 10, "both workers' connected lines")  # reader may lag
    assert 2 == len(sv.out.events("connected")), "both workers took jobs, so both connected"
    assert {1} == set(mock.record.accepted_tokens().values())
    assert len(sent) == sum(mock.record.accepted_tokens().values())
    assert 0 == jq.depth("apnsd:queue")


def test_stop_is_graceful_and_start_resumes_delivery(supervise, binary_mock, jq: JobQueue, rdb) -> None:
    """`supervisorctl stop` exits 0 with nothing left in flight; `start` delivers the rest."""
    mock = binary_mock()
    sv = supervise(mock, WORKER_BATCH_SIZE="50", WORKER_MAX_IN_FLIGHT="100")
    sent = tokens(1000)
    push_all(jq, [job(t) for t in sent])
    wait_for(lambda: len(mock.record.accepted_tokens()) >= 100, 20, "delivery under way")

    stop = sv.ctl("stop", "apnsd")

    assert "apnsd: stopped" == stop.stdout.strip()
    assert "STOPPED" == sv.state()
    assert [True] == [e["clean"] for e in sv.out.events("stopped")]
    wait_for(lambda: "stopped: apnsd (exit status 0)" in sv.out.text(), 5, "supervisord's exit line")
    assert [] == inflight_keys(rdb)
    delivered, waiting = set(mock.record.accepted_tokens()), queued_tokens(rdb)
    assert waiting, "stopped before the queue ran dry, so some jobs must be waiting"
    assert set(sent) == delivered | waiting

    assert "apnsd: started" == sv.ctl("start", "apnsd").stdout.strip()
    wait_for(lambda: set(sent) <= set(mock.record.accepted_tokens()), 30, "the rest delivered after start")
    assert 0 == jq.depth("apnsd:queue")
    assert "RUNNING" == sv.state()


def test_sighup_through_supervisorctl_reloads_and_delivery_continues(supervise, binary_mock, jq: JobQueue) -> None:
    """`supervisorctl signal HUP apnsd` makes apnsd log `reloaded` and keep delivering."""
    mock = binary_mock()
    sv = supervise(mock)
    pid = sv.pid()

    assert "apnsd: signalled" == sv.ctl("signal", "HUP", "apnsd").stdout.strip()

    wait_for(lambda: sv.out.events("reloaded"), 10, "the reloaded event")
    sent = tokens(50)
    push_all(jq, [job(t) for t in sent])
    wait_for(lambda: set(sent) <= set(mock.record.accepted_tokens()), 20, "delivery after the reload")
    assert pid == sv.pid()
    assert "RUNNING" == sv.state()


Q_BATCH = "apnsd:queue:inflight-batch:"  # a worker's in-flight batch lists: this, its id, ":", the batch id


def test_sigkill_restarts_the_worker_and_its_in_flight_jobs_are_recovered(
    supervise, binary_mock, jq: JobQueue, rdb
) -> None:
    """After kill -9 supervisord starts a new worker, which recovers the dead one's in-flight jobs: nothing is lost."""
    mock = binary_mock()
    sv = supervise(mock, WORKER_BATCH_SIZE="50", WORKER_MAX_IN_FLIGHT="100")
    first = tokens(800)
    push_all(jq, [job(t) for t in first])
    wait_for(lambda: len(mock.record.accepted_tokens()) >= 100, 20, "delivery under way")
    old_pid = sv.pid()

    os.kill(old_pid, signal.SIGKILL)
    dead_keys = wait_for(lambda: inflight_keys(rdb), 5, "the dead worker's in-flight storage")
    later = tokens(200)
    push_all(jq, [job(t) for t in later])

    wait_for(lambda: sv.state() == "RUNNING" and sv.pid() != old_pid, 20, "a new worker RUNNING")
    wait_for(lambda: set(first + later) <= set(mock.record.accepted_tokens()), 40, "every job delivered at least once")
    wait_for(lambda: not inflight_keys(rdb), 10, "in-flight storage empty")
    dead_worker = f"{socket.gethostname()}:{old_pid}"
    held = (f"apnsd:queue:inflight:{dead_worker}", f"apnsd:queue:inflight-batches:{dead_worker}")
    others = [k for k in dead_keys if k.decode() not in held and not k.decode().startswith(f"{Q_BATCH}{dead_worker}:")]
    assert (True, []) == (len(dead_keys) > 0, others)  # every key left was the dead worker's
    wait_for(lambda: sv.out.events("recovered_dead_worker"), 10, "the recovered_dead_worker line")  # reader may lag
    assert [dead_worker] == [e["dead_worker"] for e in sv.out.events("recovered_dead_worker")]
    assert 0 == jq.depth("apnsd:queue")


def test_supervisord_exits_when_apnsd_goes_fatal(tmp_path: Path) -> None:
    """With a config apnsd refuses, the failed starts run out, apnsd goes FATAL and supervisord itself exits."""
    short = Path(tempfile.mkdtemp(prefix="sv-"))
    env = clean_env(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        PYTHONUNBUFFERED="1",
        APNSD_WORKER_BATCH_SIZE="many",
        APNSD_WORKER_STATE_DIR=str(tmp_path / "state"),
    )
    conf = write_conf(short)
    # A loaded machine can take longer than startsecs=2 to import apnsd and refuse the config, and a start
    # that outlives startsecs counts as a successful one: give each attempt ample time to fail as a start.
    conf.write_text(conf.read_text().replace("startsecs=2\n", "startsecs=20\n", 1))
    proc = subprocess.Popen(
        [str(VENV_BIN / "supervisord"), "-c", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=short,
    )
    out = OutputReader(proc.stdout)  # type: ignore[arg-type]
    try:
        wait_for(lambda: proc.poll() is not None, 120, "supervisord to exit after apnsd went FATAL")
    finally:
        stop_by_pid(proc)
        out.join(5)
        shutil.rmtree(short, ignore_errors=True)

    assert "gave up: apnsd entered FATAL state" in out.text()
    assert "apnsd-fatal: apnsd is FATAL" in out.text()
