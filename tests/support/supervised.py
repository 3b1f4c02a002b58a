"""Helpers for tests that run real processes: bounded waits, a pipe reader, and supervisord/supervisorctl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, TypeVar

from apnsd.testing.redis_server import stop_process

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
SUPERVISORD_CONF = ROOT / "deploy" / "supervisord.conf"
VENV_BIN = Path(sys.executable).parent.resolve()  # holds apnsd, supervisord and supervisorctl


class OutputReader:
    """Reads a child's stdout pipe line by line on a thread and keeps every line."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True, name="output-reader")
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            with self._lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
        stream.close()

    def text(self) -> str:
        """Everything read so far."""
        with self._lock:
            return "\n".join(self.lines)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines read so far (only those whose event is ``name``, if given)."""
        with self._lock:
            lines = list(self.lines)
        out = []
        for line in lines:
            if line.startswith("{"):
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if name is None or ev.get("event") == name:
                    out.append(ev)
        return out

    def join(self, timeout: float) -> None:
        """Wait for the writer to close its end."""
        self._thread.join(timeout)


def stop_by_pid(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """SIGTERM the process by its PID, wait, SIGKILL if it does not go; returns its exit code."""
    return stop_process(proc, timeout)


def supervisorctl(
    conf: Path, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``supervisorctl -c conf args...`` (optionally behind a command prefix) and capture its output."""
    return subprocess.run(
        [*prefix, str(VENV_BIN / "supervisorctl"), "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def program_state(conf: Path, name: str = "apnsd", **kw: Any) -> str:
    """The program's state word from ``supervisorctl status`` (RUNNING, STOPPED, ...), or '' if unreachable."""
    words = supervisorctl(conf, "status", name, **kw).stdout.split()
    return words[1] if len(words) > 1 and words[0] == name else ""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without APNSD_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APNSD_")}
    env.update(extra)
    return env
