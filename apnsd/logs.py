"""structlog configured once: JSON lines when not on a terminal, readable console output on one."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from typing import Any, Protocol, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog for the whole process; ``fmt`` is auto, json or console."""
    stream = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty()) if console else structlog.processors.JSONRenderer()
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _json_safe,  # the console renderer shows values with repr(): control characters are escaped there
        renderer,
    ]
    if console and stream.isatty():
        processors.append(_clear_line)  # a progress line drawn in place (run --drain) must not run into it
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # One write per line (PrintLogger writes the newline separately): where apnsd shares a pipe with
        # another writer, as under supervisord, a line cannot be split by the other's output.
        logger_factory=structlog.WriteLoggerFactory(_Output(stream)),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


class _Output:
    """The log stream, as structlog writes to it; a write that fails (the reader of a pipe went away) costs
    log lines, never the component logging: apnsd keeps delivering with nowhere to log."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lost = False

    def write(self, text: str) -> None:
        """Write one line (or drop it once the output is gone)."""
        try:
            self._stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed
            self._gone()

    def flush(self) -> None:
        """Flush (or drop what is buffered once the output is gone)."""
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._gone()

    def _gone(self) -> None:
        """Point the output's descriptor at /dev/null, so that what is buffered and every later line drain
        there (instead of failing again, up to Python's exit status 120), and say so once on stderr."""
        if self._lost:
            return
        self._lost = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)
            self._stream.flush()
        except (OSError, ValueError):
            pass
        if self._stream is not sys.stderr:
            try:
                print("apnsd: the log output is gone (closed pipe?); log lines are discarded", file=sys.stderr)
            except (OSError, ValueError):
                pass


MAX_TEXT = 4096  # characters kept of one logged text value (a gateway's debug data, another program's text)
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
_SURROGATES = re.compile("[\ud800-\udfff]")  # in a Python str, always unpaired: not Unicode, refused by JSON readers


def json_safe(value: Any, cut: bool = True) -> Any:
    """``value`` as any JSON reader takes it: no unpaired surrogate, no NaN or infinity (written as the strings
    "NaN", "Infinity", "-Infinity"), text longer than MAX_TEXT cut unless not ``cut``."""
    if isinstance(value, str):
        if not value.isascii():
            value = _SURROGATES.sub("\ufffd", value)
        if cut and len(value) > MAX_TEXT:
            value = f"{value[:MAX_TEXT]}…(+{len(value) - MAX_TEXT} characters)"
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE.get(value, "NaN")
    if isinstance(value, dict):
        return {json_safe(k, cut): json_safe(v, cut) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, cut) for v in value]
    return value


def _json_safe(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Every field valid in a JSON line whatever it holds; a traceback is kept whole."""
    return {json_safe(k): json_safe(v, k != "exception") for k, v in event.items()}


def _clear_line(_logger: Any, _method: str, line: str) -> str:
    """Start a terminal log line by erasing whatever was drawn in place on the current line."""
    return "\r\x1b[K" + line


class Logger(Protocol):
    """What apnsd's components log through: structlog's bound loggers (see get()), or a wrapper of one."""

    def debug(self, event: str, **kw: Any) -> Any: ...
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...
    def exception(self, event: str, **kw: Any) -> Any: ...


def get(name: str, **bound: Any) -> Logger:
    """A logger for one component, with fields bound to every event it logs."""
    logger: Logger = structlog.get_logger(component=name, **bound)
    return logger


class OnceLogger:
    """Logs an outage once when it starts and once when it ends (with a count), not on every retry."""

    def __init__(self, log: Logger, event: str) -> None:
        self._log, self._event = log, event
        self.failures = 0

    def failed(self, error: str, **fields: Any) -> None:
        """Note one failure; only the first of a run is logged (with ``fields``)."""
        self.failures += 1
        if self.failures == 1:
            self._log.warning(self._event, error=error, **fields)

    def recovered(self) -> None:
        """Log the end of an outage with how many retries it took."""
        if self.failures:
            self._log.info(self._event + "_recovered", failed_attempts=self.failures)
        self.failures = 0
