"""Pytest plugin: independent APNs gateways (HTTP/2 and binary) on Node's own http2 and tls modules.

``node_gateway.js`` beside this file is the server; it reports every request and answer as a JSON line
on stdout, which a reader thread collects here. The gateways are built on another implementation than
our mocks (python-h2 and our own binary code), so that apnsd meets a peer whose framing and timing it
did not choose.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.wait import wait_for

SCRIPT = Path(__file__).with_name("node_gateway.js")
NODE = shutil.which("node")


class NodeGateway:
    """One running ``node node_gateway.js``: its port, and what it reported so far."""

    host = "127.0.0.1"

    def __init__(self, mode: str, pki: Any, **options: Any) -> None:
        assert NODE is not None
        self.protocol = mode
        opts = {"mode": mode, "cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca_cert, **options}
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [NODE, str(SCRIPT), json.dumps(opts)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        listening = wait_for(lambda: self.of("listening") or self._proc.poll() is not None, 10, "node to listen")
        if not isinstance(listening, list):
            raise AssertionError(f"node gateway exited: {self._proc.stderr.read() if self._proc.stderr else ''}")
        self.port = int(listening[0]["port"])

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._lock:
                self.events.append(json.loads(line))

    def of(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        """The reported events of one kind (``req``, ``ans``, ``conn``, ``note``) with the given field values."""
        with self._lock:
            return [e for e in self.events if e["ev"] == kind and all(e.get(k) == v for k, v in fields.items())]

    def accepted(self) -> Counter[str]:
        """How many times the gateway accepted each token (HTTP/2 200, binary: no error for it)."""
        return Counter(e["token"] for e in self.of("ans") if e["status"] in (0, 200))

    def received(self) -> Counter[str]:
        """How many times each token reached the gateway whole."""
        return Counter(e["token"] for e in self.of("req"))

    def stop(self) -> None:
        """Stop the node process (by its PID, through Popen) and its reader; fail if it had died on its own."""
        died = self._proc.poll()
        if died is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._reader.join(5)
        errors = self._proc.stderr.read() if self._proc.stderr is not None else ""
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()
        if died is not None:
            raise AssertionError(f"the node gateway exited by itself (status {died}) during the test: {errors[-2000:]}")


@pytest.fixture
def node_gateway(pki: Any) -> Iterator[Callable[..., NodeGateway]]:
    """Factory: ``node_gateway("http2" | "binary", **options)`` starts a Node gateway; all are stopped at teardown.
    Skips only where ``node`` is not installed (CI installs it: scripts/setup.sh --test)."""
    if NODE is None:
        pytest.skip("node is not installed (scripts/setup.sh --test installs Debian's nodejs)")
    started: list[NodeGateway] = []

    def start(mode: str, **options: Any) -> NodeGateway:
        started.append(NodeGateway(mode, pki, **options))
        return started[-1]

    yield start
    for gateway in started:
        gateway.stop()
