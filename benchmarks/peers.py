"""Other APNs senders measured beside apnsd in the same run: @parse/node-apn (HTTP/2) and node `apn` 1.7 (binary).

Both are npm packages installed under benchmarks/peers/ (`npm install` there; never committed) and driven by
the small scripts beside their package.json. A peer that is not installed is reported as unavailable.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any

from apnsd.testing.devpki import BUNDLE_ID, DevPki
from benchmarks.workload import PAYLOAD

PEERS = Path(__file__).resolve().parent / "peers"


def available(package: str) -> str | None:
    """The installed version of an npm package under benchmarks/peers/, or None (no node, or not installed)."""
    if shutil.which("node") is None:
        return None
    try:
        meta = json.loads((PEERS / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return str(meta.get("version", "?"))


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run(script: str, args: list[str], count: int, timeout: float) -> dict[str, Any]:
    """Run one peer script to its end; its JSON line, plus its CPU time (node is the only child reaped meanwhile)."""
    cpu0 = _children_cpu()
    out = subprocess.run(
        ["node", str(PEERS / script), *args], cwd=PEERS, capture_output=True, text=True, timeout=timeout
    )
    cpu = _children_cpu() - cpu0
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            res: dict[str, Any] = json.loads(line)
            res.update({"count": count, "cpu_seconds": cpu, "cpu_per_10k": cpu / count * 10_000})
            return res
    raise RuntimeError(f"{script} (exit {out.returncode}) printed no result:\n{(out.stderr or out.stdout)[-1500:]}")


def node_apn_http2(port: int, count: int, connections: int, pki: DevPki, timeout: float = 300.0) -> dict[str, Any]:
    """@parse/node-apn, one provider with `connections` clients, token auth (it refuses a client certificate
    without Apple's environment extensions), `count` notifications from memory."""
    args = [str(port), str(count), str(connections), pki.ca_cert, pki.p8_key, pki.key_id, pki.team_id, BUNDLE_ID]
    res = _run("node_apn_http2.js", [*args, PAYLOAD.decode()], count, timeout)
    res["connections"] = connections
    if res.get("sent") != count:
        raise RuntimeError(f"@parse/node-apn: {res.get('sent')} of {count} answered 200 ({res})")
    return res


def node_apn_binary(port: int, count: int, pki: DevPki, timeout: float = 300.0) -> dict[str, Any]:
    """node `apn` 1.7 on one connection, `count` notifications from memory; rate until the last is written."""
    args = [str(port), str(count), pki.ca_cert, pki.client_pem, PAYLOAD.decode()]
    res = _run("node_apn_binary.js", args, count, timeout)
    if res.get("sent") != count or res.get("errors"):
        raise RuntimeError(f"node apn 1.7: {res.get('sent')} of {count} written, {res.get('errors')} errors")
    return res
