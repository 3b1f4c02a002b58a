"""Helpers for the fault-injection suite: polling, seeded tokens, outcome accounting, daemon runners."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from apnsd.config import Config
from apnsd.metrics import REGISTRY
from apnsd.store.queue import JobQueue
from apnsd.testing.mock import MockGateway
from apnsd.worker.daemon import Daemon
from tests.support.jobs import LOG, inflight_keys

REPO = Path(__file__).resolve().parents[2]
LINES: list[str] = []  # one summary line per fault run, reported at the end of the module


def make_tokens(seed: int, n: int, bad: dict[str, int] | None = None) -> tuple[list[str], dict[str, set[str]]]:
    """``n`` unique 32-byte tokens; ``bad`` maps a prefix to how many tokens get it, at seeded random positions."""
    rng = random.Random(seed)
    tokens: list[str] = []
    while len(tokens) < n:
        t = rng.randbytes(32).hex()
        if not t.startswith("bad"):  # only the chosen positions may carry a fault prefix
            tokens.append(t)
    by_prefix: dict[str, set[str]] = {}
    positions = rng.sample(range(n), sum((bad or {}).values()))
    for prefix, k in (bad or {}).items():
        chosen, positions = positions[:k], positions[k:]
        for i in chosen:
            tokens[i] = prefix + tokens[i][len(prefix) :]
        by_prefix[prefix] = {tokens[i] for i in chosen}
    assert len(set(tokens)) == n
    return tokens, by_prefix


@dataclass
class Tally:
    """Every job's outcome, read back from Redis and the mock gateway's record."""

    jobs: int
    delivered: int
    duplicates: int
    dead: int
    unregistered: int
    lost: list[str]
    conflicts: list[str]
    dead_by_token: dict[str, dict[str, Any]] = field(default_factory=dict)
    unregistered_by_token: dict[str, dict[str, Any]] = field(default_factory=dict)
    accepted: Counter[str] = field(default_factory=Counter)
    queued: int = 0
    scheduled: int = 0
    inflight: int = 0

    def line(self, fault: str, **extra: object) -> str:
        """The one-line summary printed for a fault (and kept for the end-of-module report)."""
        text = (
            f"fault={fault} jobs={self.jobs} delivered={self.delivered} duplicates={self.duplicates} "
            f"dead={self.dead} unregistered={self.unregistered} lost={len(self.lost)}"
        )
        text += "".join(f" {k}={v}" for k, v in extra.items())
        print(text)
        LINES.append(text)
        return text


def tally(
    tokens: Iterable[str],
    mock: MockGateway,
    jq: JobQueue,
    rdb: redis.Redis,
    queue: str = "apnsd:queue",
    queued_ok: bool = False,
) -> Tally:
    """Count outcomes per token; a job still queued counts as lost unless ``queued_ok`` (it is then 'queued')."""
    tokens = list(tokens)
    accepted = mock.record.accepted_tokens()
    unregistered = jq.unregistered()
    dead_entries = list(jq.dead_entries(1_000_000))
    dead_count = Counter(e["token"] for e in dead_entries)
    dead_by_token = {e["token"]: e for e in dead_entries}
    queued_tokens: Counter[str] = Counter()
    if queued_ok:
        queued_tokens.update(json.loads(raw)["token"] for raw in rdb.lrange(queue, 0, -1))
    lost, conflicts = [], []
    for t in tokens:
        outcomes = (accepted[t] > 0) + (t in unregistered) + dead_count[t] + queued_tokens[t]
        if outcomes == 0:
            lost.append(t)
        elif outcomes > 1:
            conflicts.append(t)
    known = set(tokens)
    delivered = sum(1 for t in accepted if t in known)
    return Tally(
        jobs=len(tokens),
        delivered=delivered,
        duplicates=sum(c - 1 for t, c in accepted.items() if t in known),
        dead=sum(dead_count[t] for t in known),
        unregistered=sum(1 for t in unregistered if t in known),
        lost=lost,
        conflicts=conflicts,
        dead_by_token=dead_by_token,
        unregistered_by_token=unregistered,
        accepted=accepted,
        queued=jq.depth(queue),
        scheduled=jq.scheduled_count(queue),
        inflight=len(inflight_keys(rdb)),
    )


def assert_resolved(t: Tally) -> None:
    """Every job has exactly one outcome, nothing is lost, and nothing is left queued or in flight."""
    assert [] == t.lost[:10], f"{len(t.lost)} jobs lost"
    assert [] == t.conflicts[:10], f"{len(t.conflicts)} jobs with more than one outcome"
    assert (0, 0, 0) == (t.queued, t.scheduled, t.inflight)
    assert t.jobs == t.delivered + t.dead + t.unregistered


# --- logs ---------------------------------------------------------------------------------------


class LogTap:
    """The JSON log events the in-process daemons write from now on (tests.conftest.LOG)."""

    def __init__(self) -> None:
        self.start = len(LOG.getvalue())

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Events logged since the tap was made, optionally only those with one event name."""
        return parse_events(LOG.getvalue()[self.start :], name)


def parse_events(text: str, name: str | None = None) -> list[dict[str, Any]]:
    """JSON log lines → event dicts (lines that are not JSON are skipped)."""
    out = []
    for line in text.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and (name is None or ev.get("event") == name):
            out.append(ev)
    return out


def resent_on_abrupt_loss(events: list[dict[str, Any]]) -> int:
    """How many notifications were sent again after connection losses (the bound on duplicates)."""
    return sum(int(e.get("resend", 0)) for e in events if e.get("event") == "disconnected")


def connect_failures(app: str = "default") -> float:
    """The process-wide connect-failure counter (failed attempts, for in-process daemons)."""
    return REGISTRY.get_sample_value("apnsd_connect_failures_total", {"app": app}) or 0.0


# --- daemons ------------------------------------------------------------------------------------


class DaemonThread:
    """An in-process daemon running in a thread; ``stop()`` is what SIGTERM does."""

    def __init__(self, config: Config, drain: bool = False) -> None:
        self.daemon = Daemon(config, drain=drain)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="test-daemon")

    def _run(self) -> None:
        self.code = self.daemon.run()

    def start(self) -> DaemonThread:
        """Start the daemon's thread; returns self."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Ask for a graceful stop."""
        self.daemon.request_stop()

    def join(self, timeout: float) -> int:
        """Wait for the daemon to exit; returns its exit code (fails the test if it does not exit)."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.daemon.request_stop()
            self.thread.join(30)
            raise AssertionError(f"daemon did not exit within {timeout} s")
        assert self.code is not None
        return self.code


def daemon_env(
    redis_url: str, mock_host: str, mock_port: int, protocol: str, pki: Any, state_dir: Path, **extra: str
) -> dict[str, str]:
    """The APNSD_* environment of a daemon subprocess talking to a mock gateway."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APNSD_")}
    env.update(
        {
            "APNSD_REDIS_URL": redis_url,
            "APNSD_APP_DEFAULT_HOST": mock_host,
            "APNSD_APP_DEFAULT_PORT": str(mock_port),
            "APNSD_APP_DEFAULT_CA_FILE": pki.ca_cert,
            "APNSD_APP_DEFAULT_CERT": pki.client_pem,
            "APNSD_APP_DEFAULT_PROTOCOL": protocol,
            "APNSD_APP_DEFAULT_MAX_CONNECTS_PER_MINUTE": "60",
            "APNSD_APP_DEFAULT_BACKOFF_INITIAL": "0.05",
            "APNSD_APP_DEFAULT_CONFIRM_DELAY": "0.2",
            "APNSD_APP_DEFAULT_RETRY_BACKOFF": "0.05",
            "APNSD_WORKER_STATE_DIR": str(state_dir),
            "APNSD_WORKER_GRACE_PERIOD": "5",
            "APNSD_WORKER_BLOCK_TIMEOUT": "0.2",
            "APNSD_METRICS_LISTEN": "",
            "APNSD_LOG_FORMAT": "json",
        }
    )
    env.update({k if k.startswith("APNSD_") else f"APNSD_{k}": v for k, v in extra.items()})
    return env


class DaemonProcess:
    """`apnsd run` as a real child process; its JSON log goes to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, drain: bool = False) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        args = [sys.executable, "-m", "apnsd.cli", "run"] + (["--drain"] if drain else [])
        self.proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def worker_id(self) -> str:
        """The default worker id of the child (host:pid)."""
        import socket

        return f"{socket.gethostname()}:{self.proc.pid}"

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the child (by its PID)."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for exit; returns the exit code, or kills the child and fails after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon pid {self.proc.pid} did not exit within {timeout} s\n{self.tail()}") from None
        finally:
            self._log.flush()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Events from the child's log so far."""
        return parse_events(self.log_path.read_text(errors="replace"), name)

    def tail(self, n: int = 20) -> str:
        """The last lines of the child's log, for failure messages."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def kill(self) -> None:
        """SIGKILL the child if it still runs (cleanup)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def drain_with_a_new_worker(env: dict[str, str], log_path: Path, timeout: float = 90) -> DaemonProcess:
    """Start another `apnsd run --drain` on the same Redis and wait for it to finish with exit 0."""
    worker = DaemonProcess(env, log_path, drain=True)
    try:
        assert 0 == worker.wait(timeout), worker.tail()
    finally:
        worker.kill()
    return worker


# --- a cut between daemon and Redis -------------------------------------------------------------


class RedisCutter:
    """A TCP proxy in front of Redis that loses chosen answers: it forwards the n-th request carrying
    ``marker`` (counted over all connections: a script's SHA, e.g. the commit's or the take's), waits for
    Redis's answer, discards it and closes that connection. The command has run; the client only sees
    its connection drop."""

    def __init__(self, upstream_port: int, marker: bytes, cut: set[int]) -> None:
        import socket

        self._upstream = upstream_port
        self._marker = marker
        self._cut = set(cut)
        self._lock = threading.Lock()
        self.seen = 0
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: list[Any] = []
        # Cleared: a connection is accepted (``accepted`` is set) but not forwarded until it is set again.
        self.gate = threading.Event()
        self.gate.set()
        self.accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="redis-cutter").start()

    @property
    def url(self) -> str:
        """The redis:// URL the daemon is given instead of Redis's own."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted.set()
            self.gate.wait()
            server = socket.create_connection(("127.0.0.1", self._upstream))
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: Any, server: Any) -> None:
        """One connection, both directions, in one thread: request in, answer out (redis-py waits for it)."""
        import select

        tail = b""
        try:
            while True:
                readable, _, _ = select.select([client, server], [], [])
                if server in readable:
                    data = server.recv(65536)
                    if not data:
                        break
                    client.sendall(data)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        break
                    server.sendall(data)
                    seen = (tail + data).count(self._marker)
                    tail = (tail + data)[-(len(self._marker) - 1) :]  # a marker split across reads
                    with self._lock:
                        first = self.seen + 1
                        self.seen += seen
                        hit = any(first <= n <= self.seen for n in self._cut)
                    if hit:
                        self._swallow_answer(server)
                        with self._lock:
                            self.cuts += 1
                        break
        except (OSError, ValueError):  # ValueError: the proxy closed the socket under select()
            pass
        finally:
            for s in (client, server):
                try:
                    s.close()
                except OSError:
                    pass

    @staticmethod
    def _swallow_answer(server: Any) -> None:
        """Wait for Redis's answer to the pipeline (so the transaction has run), then drop it."""
        try:
            server.settimeout(5)
            chunk = server.recv(65536)
            server.settimeout(0.05)  # the rest of the pipeline's answers, if they come in pieces
            while chunk:
                chunk = server.recv(65536)
        except OSError:
            pass

    def close(self) -> None:
        """Stop accepting and close every proxied connection."""
        self._listener.close()
        with self._lock:
            for s in self._conns:
                try:
                    s.close()
                except OSError:
                    pass


# --- a binary gateway that stops reading for a while ---------------------------------------------


class StallingBinaryGateway:
    """A binary APNs gateway over real TLS that reads nothing for ``stall`` seconds after each handshake,
    then reads and records every frame at full speed (and never answers: silence is success)."""

    protocol = "binary"

    def __init__(self, pki: Any, stall: float) -> None:
        import socket

        from apnsd.gateway.credentials import server_context
        from apnsd.testing.record import MockRecord

        self.record = MockRecord(keep_payloads=False)
        self._ctx = server_context(pki.server_cert, pki.server_key, pki.ca_cert)
        self._stall = stall
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = "127.0.0.1", self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._socks: list[Any] = []
        threading.Thread(target=self._accept, daemon=True, name="stalling-gateway").start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self._socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: Any) -> None:
        from OpenSSL import SSL

        from apnsd.testing.record import Received
        from apnsd.wire import binary

        conn = SSL.Connection(self._ctx, sock)
        conn.set_accept_state()
        buf = bytearray()
        try:
            conn.do_handshake()
            self.record.connected()
            if self._stopped.wait(self._stall):
                return
            while True:
                data = conn.recv(256 * 1024)
                if not data:
                    return
                buf += data
                frames, used = binary.decode_frames(buf)
                del buf[:used]
                self.record.add([Received(f.token.hex(), b"", str(f.identifier), 200) for f in frames])
        except (SSL.Error, OSError):
            return
        finally:
            sock.close()

    def stop(self) -> None:
        """Stop accepting and close every connection."""
        self._stopped.set()
        self._listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass
