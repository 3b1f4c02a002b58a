"""`apnsd check`: does the supervisord config that runs `apnsd run` leave a graceful stop time to finish?"""

from __future__ import annotations

import configparser
import glob
import shlex
from collections.abc import Iterable
from pathlib import Path

from apnsd.config import STOP_MARGIN, WorkerConfig, read_file
from apnsd.gateway.certinfo import Verdict

# Where the image keeps it, then where supervisord and supervisorctl look by default on Debian and elsewhere.
SUPERVISORD_CONFS = ("/etc/apnsd/supervisord.conf", "/etc/supervisor/supervisord.conf", "/etc/supervisord.conf")
SUPERVISORD_STOPWAITSECS = 10  # supervisord's own default
GRACEFUL_SIGNALS = frozenset({"TERM", "INT", "QUIT"})


def stop_verdicts(worker: WorkerConfig, paths: Iterable[str] = SUPERVISORD_CONFS) -> list[Verdict]:
    """One verdict per supervisord program that runs `apnsd run`, in the first of ``paths`` that exists."""
    for path in paths:
        if Path(path).is_file():
            return [_judge(name, where, options, worker) for name, where, options in _programs(path)]
    return []


def _programs(path: str) -> list[tuple[str, str, dict[str, str]]]:
    """(program name, file, options) for each [program:x] running `apnsd run`, following [include] files."""
    main = _read(path)
    if main is None:
        return []
    parsers = [(path, main)]
    if main.has_option("include", "files"):
        base = Path(path).parent
        for pattern in main.get("include", "files").split():
            for file in sorted(glob.glob(str(base / pattern))):
                included = _read(file)
                if included is not None:
                    parsers.append((file, included))
    found = []
    for file, parser in parsers:
        for section in parser.sections():
            options = dict(parser.items(section, raw=True))
            if section.startswith("program:") and _runs_apnsd(options.get("command", "")):
                found.append((section.removeprefix("program:"), file, options))
    return found


def _read(path: str) -> configparser.RawConfigParser | None:
    """A supervisord config file, read as apnsd reads its own (bounded, a pipe never waited on); None if unreadable."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    try:
        parser.read_string(read_file(path).decode("utf-8"), source=path)
    except (OSError, UnicodeDecodeError, configparser.Error):
        return None
    return parser


def _runs_apnsd(command: str) -> bool:
    try:
        words = shlex.split(command)
    except ValueError:
        return False
    return "run" in words and any(Path(w).name == "apnsd" or w.startswith("apnsd.cli") for w in words)


def _judge(name: str, where: str, options: dict[str, str], worker: WorkerConfig) -> Verdict:
    allowance = worker.stop_allowance
    signal = options.get("stopsignal", "TERM").strip().upper().removeprefix("SIG")
    if signal not in GRACEFUL_SIGNALS:
        return Verdict(
            "warn", f"supervisord program {name} ({where}) stops apnsd with SIG{signal}: use stopsignal=TERM"
        )
    text = options.get("stopwaitsecs", str(SUPERVISORD_STOPWAITSECS)).strip()
    try:
        wait = int(text)
    except ValueError:
        return Verdict("warn", f"supervisord program {name} ({where}): stopwaitsecs={text!r} is not a number")
    if wait <= allowance:
        return Verdict(
            "warn",
            f"supervisord program {name} ({where}) SIGKILLs apnsd {wait} s after SIGTERM, but a graceful stop "
            f"may take {allowance:g} s (worker.grace_period {worker.grace_period:g} + block_timeout "
            f"{worker.block_timeout:g} + {STOP_MARGIN:g}): raise stopwaitsecs above {allowance:g} "
            "or lower grace_period",
        )
    return Verdict("ok", f"supervisord program {name} waits {wait} s before SIGKILL, past a {allowance:g} s stop")
