"""A real HTTP CONNECT proxy for the tests: Debian's tinyproxy on a free loopback port, stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apnsd.testing.redis_server import free_port


class Tinyproxy:
    """One tinyproxy process with its own config file; its log (``-d``: stderr) goes to a file."""

    def __init__(self, workdir: Path, connect_ports: tuple[int, ...] = (), auth: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = workdir / f"tinyproxy-{self.port}.log"
        conf = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 60",
            "LogLevel Connect",
            "MaxClients 50",
            "Allow 127.0.0.1",
            # Without ConnectPort lines tinyproxy tunnels to any port; with them, only to those.
            *(f"ConnectPort {p}" for p in connect_ports),
            *([f"BasicAuth {auth[0]} {auth[1]}"] if auth else []),
        ]
        self.conf_path = workdir / f"tinyproxy-{self.port}.conf"
        self.conf_path.write_text("\n".join(conf) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The proxy URL without credentials."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Tinyproxy:
        """Start in the foreground (-d) and wait until the port accepts connections."""
        binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([binary, "-d", "-c", str(self.conf_path)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tinyproxy exited: {self.log_path.read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("tinyproxy did not start listening within 10 s")

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def tunnels(self) -> list[str]:
        """The CONNECT request lines the proxy logged, e.g. ``CONNECT 127.0.0.1:4433 HTTP/1.1``."""
        return [line.split("): ", 1)[1] for line in self.log_path.read_text().splitlines() if "Request (file" in line]


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Callable[..., Tinyproxy]]:
    """Factory for started tinyproxy processes; all are stopped at teardown."""
    if not (shutil.which("tinyproxy") or os.path.exists("/usr/bin/tinyproxy")):
        pytest.fail("tinyproxy is not installed: run `bash scripts/setup.sh --test`")
    started: list[Tinyproxy] = []

    def start(connect_ports: tuple[int, ...] = (), auth: tuple[str, str] | None = None) -> Tinyproxy:
        proxy = Tinyproxy(tmp_path, connect_ports, auth)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()
