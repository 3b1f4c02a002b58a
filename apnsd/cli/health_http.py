"""`apnsd health --http`: ask the running daemon's /healthz or /readyz; light (no Redis client is imported)."""

from __future__ import annotations

import urllib.error
import urllib.request

from apnsd.config import Config


def http_health(config: Config, liveness: bool, timeout: float = 4.0) -> tuple[bool, str]:
    """(ok, one-line reason) from the running daemon's /healthz (``liveness``) or /readyz on metrics.listen."""
    listen = config.metrics.listen
    if not listen:
        return False, "unhealthy: metrics.listen is empty, so there is no /healthz or /readyz to ask"
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/{'healthz' if liveness else 'readyz'}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return True, resp.read().decode("utf-8", "replace").strip()
    except urllib.error.HTTPError as exc:
        return False, "unhealthy: " + exc.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError) as exc:
        return False, f"unhealthy: cannot reach {url}: {getattr(exc, 'reason', exc)}"
