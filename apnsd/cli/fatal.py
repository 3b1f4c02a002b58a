"""A supervisord event listener: when apnsd goes FATAL, stop supervisord so that the container exits.

With supervisord as PID 1, a program that gave up restarting would otherwise leave a live container
doing nothing until a health check noticed. Run as ``python -m apnsd.cli.fatal`` from an
``[eventlistener:...]`` section with ``events=PROCESS_STATE_FATAL`` (see deploy/supervisord.conf).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import BinaryIO


def _fields(line: bytes) -> dict[str, str]:
    """``key:value key:value`` (supervisor's header and payload format) as a dict."""
    return dict(word.split(":", 1) for word in line.decode("utf-8", "replace").split() if ":" in word)


def listen(stdin: BinaryIO, stdout: BinaryIO, programs: set[str], stop: Callable[[str], None]) -> int:
    """Follow the event protocol; call ``stop(program)`` on a FATAL of one of ``programs``; returns at EOF."""
    while True:
        stdout.write(b"READY\n")
        stdout.flush()
        header = stdin.readline()
        if not header:
            return 0
        head = _fields(header)
        payload = stdin.read(int(head.get("len", "0")))
        event = _fields(payload.split(b"\n", 1)[0])
        if head.get("eventname") == "PROCESS_STATE_FATAL" and event.get("processname") in programs:
            stop(event["processname"])
        stdout.write(b"RESULT 2\nOK")
        stdout.flush()


def stop_supervisord(program: str) -> None:
    """SIGTERM our parent, supervisord: it stops everything and exits, and so does the container."""
    pid = os.getppid()
    print(
        f"apnsd-fatal: {program} is FATAL (gave up restarting); stopping supervisord (pid {pid}) "
        "so that the container exits and is restarted",
        file=sys.stderr,
        flush=True,
    )
    os.kill(pid, signal.SIGTERM)


def main() -> int:
    """Entry point: watch the programs named on the command line (default: apnsd)."""
    return listen(sys.stdin.buffer, sys.stdout.buffer, set(sys.argv[1:]) or {"apnsd"}, stop_supervisord)


if __name__ == "__main__":
    raise SystemExit(main())
