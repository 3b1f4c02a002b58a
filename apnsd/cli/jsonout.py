"""Strict JSON for the command line's --json output, whatever another program stored in Redis."""

from __future__ import annotations

import json
import math
from typing import Any

# Python's json reads 1e999 as inf and NaN/Infinity literals as floats, and would write them back as
# Infinity/NaN, which no RFC 8259 reader accepts: they are written as these strings instead.
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by "Infinity", "-Infinity" or "NaN"."""
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE.get(value, "NaN")
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """``value`` as RFC 8259 JSON text (non-finite numbers as strings)."""
    return json.dumps(strict(value), indent=indent, allow_nan=False)
