"""structlog configured once: JSON lines when not on a terminal, readable console output on one."""

from __future__ import annotations

import logging
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
        renderer,
    ]
    if console and stream.isatty():
        processors.append(_clear_line)  # a progress line drawn in place (run --drain) must not run into it
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # One write per line (PrintLogger writes the newline separately): where apnsd shares a pipe with
        # another writer, as under supervisord, a line cannot be split by the other's output.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )


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
