"""HTTP proxy settings: parse ``http://[user:pass@]host:port``, pick one from HTTPS_PROXY/NO_PROXY, redact it."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class ProxyUrl:
    """Where the CONNECT tunnel starts, and the Basic credentials it needs, if any."""

    host: str
    port: int
    username: str = ""
    password: str = ""

    def authorization(self) -> str | None:
        """The Proxy-Authorization header value, or None without credentials."""
        if not self.username and not self.password:
            return None
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __str__(self) -> str:
        """The proxy as shown in logs and messages: never with its password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.username}:***@" if self.username or self.password else ""
        return f"http://{user}{host}:{self.port}"


def parse_proxy(text: str) -> ProxyUrl:
    """Parse ``http://[user:pass@]host:port``; ValueError says what is wrong (without echoing a password)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ValueError("must be http://[user:pass@]host:port (the port is not a number 1-65535)") from None
    if parts.scheme != "http":
        raise ValueError(
            "must start with http:// (apnsd speaks HTTP CONNECT to the proxy, then TLS to Apple through it)"
        )
    if not parts.hostname or port is None or not 0 < port < 65536:
        raise ValueError("must be http://[user:pass@]host:port, with host and port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be http://[user:pass@]host:port, without a path")
    return ProxyUrl(parts.hostname, port, unquote(parts.username or ""), unquote(parts.password or ""))


def redact(text: str) -> str:
    """A proxy URL (valid or not) safe to log: the password replaced by ***."""
    try:
        return str(parse_proxy(text))
    except ValueError:
        scheme, sep, rest = text.partition("://")
        return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else text


def proxy_from_env(host: str, port: int, env: Mapping[str, str]) -> str:
    """HTTPS_PROXY (or https_proxy) unless NO_PROXY (or no_proxy) exempts ``host``; '' for a direct connection."""
    proxy = env.get("HTTPS_PROXY") or env.get("https_proxy") or ""
    if not proxy:
        return ""
    no_proxy = env.get("NO_PROXY") or env.get("no_proxy") or ""
    return "" if bypassed(host, port, no_proxy) else proxy


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """True when NO_PROXY (comma-separated: *, names, .domain suffixes, IPs, CIDR, optional :port) covers host."""
    host = host.strip("[]").lower().rstrip(".")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, want_port = entry, None
        if entry.count(":") == 1:  # host:port (an IPv6 entry has several colons)
            name, _, p = entry.partition(":")
            want_port = int(p) if p.isdigit() else None
        name = name.strip("[]").rstrip(".")
        if want_port is not None and want_port != port:
            continue
        if _ip_match(host, name):
            return True
        bare = name.lstrip(".").lstrip("*.")
        if host == bare or host.endswith("." + bare):
            return True
    return False


def _ip_match(host: str, entry: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
        return address in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
