"""A throwaway local redis-server on a free loopback port: for the demo default and for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from apnsd.errors import QueueError

_handed_out: set[int] = set()
MAX_INFO = 64 * 1024  # INFO server is about 1 KiB: whatever answers on a port is read no further than this


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now and that this process has not handed out before.

    The kernel may give the same ephemeral port to two ``bind(0)`` calls in a row; two servers of one
    test setup given the same port would have the second fail to bind while a readiness check reached
    the first.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise OSError("no fresh free port after 100 tries")


def server_pid(host: str, port: int, timeout: float = 0.2) -> int | None:
    """The process id the Redis server on ``host:port`` reports (INFO server), or None if none answers."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"INFO server\r\n")
            data = b""
            while (b"process_id:" not in data or not data.endswith(b"\r\n")) and len(data) < MAX_INFO:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    for line in data.split(b"\r\n"):
        if line.startswith(b"process_id:"):
            return int(line.split(b":", 1)[1])
    return None


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> int | None:
    """SIGTERM a child by its PID, wait up to ``timeout``, SIGKILL if it does not go; returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def kill_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL a child by its PID (a crash, for outage tests) and reap it."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


class _PortTaken(Exception):
    """Another server answered on the port while ours exited."""


class RedisServer:
    """A redis-server child process bound to 127.0.0.1, stopped by its PID.

    Without persistence by default; ``appendonly=True`` writes an append-only file in ``dir`` and
    fsyncs every write before answering, so a restart on the same port and dir (outage tests) keeps
    every acknowledged write.
    """

    def __init__(self, port: int | None = None, *, persist_dir: str | None = None, appendonly: bool = False) -> None:
        self.chosen_port = bool(port)
        self.port = port or free_port()
        self.dir = persist_dir or tempfile.mkdtemp(prefix="apnsd-redis-")
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL clients use."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start and wait until it accepts connections; on a port it chose itself, retry once taken."""
        for _ in range(3):
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if self.chosen_port:
                    raise QueueError(f"port {self.port} is taken by another process") from None
                self.port = free_port()
        raise QueueError("redis-server found every free port taken by the time it started")

    def _start_once(self, timeout: float) -> RedisServer:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(exe):
            raise QueueError("redis-server is not installed (run scripts/setup.sh, or apt-get install redis-server)")
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *aof,
                "--dir",
                self.dir,
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = server_pid("127.0.0.1", self.port)
            if pid == self.proc.pid:
                self.chosen_port = True  # a restart must come back on the same port
                return self
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                if pid is not None:
                    raise _PortTaken
                raise QueueError(f"redis-server exited at start with code {code}")
            time.sleep(0.02)
        self.stop()
        raise QueueError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        """Terminate by PID and wait for it."""
        stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, for outage tests."""
        kill_process(self.proc)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
