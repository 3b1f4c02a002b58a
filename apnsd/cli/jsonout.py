"""Strict JSON for the command line's --json output, whatever another program stored in Redis."""

from __future__ import annotations

import json
from typing import Any

from apnsd.logs import json_safe


def dumps(value: Any, indent: int | None = None) -> str:
    """``value`` as RFC 8259 JSON text: non-finite numbers as the strings "NaN", "Infinity", "-Infinity" (Python's
    json would write bare NaN/Infinity, which no strict reader accepts), unpaired surrogates as U+FFFD, as in the
    log lines; nothing cut."""
    return json.dumps(json_safe(value, cut=False), indent=indent, allow_nan=False)
