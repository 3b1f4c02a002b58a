"""Terminal-safe text for the command line's plain output, whatever another program stored."""

from __future__ import annotations

from typing import Any

SHOWN = 300  # characters of one field a text line shows


def shown(value: Any) -> str:
    """A field another program may have written, as a safe piece of one terminal line: control characters
    (a newline, an escape sequence) as `?`, cut after SHOWN characters (`--json` shows it whole)."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}…(+{len(text) - SHOWN} characters)"
