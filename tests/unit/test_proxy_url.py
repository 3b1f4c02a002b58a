"""Proxy URLs: parsing, redaction, and the HTTPS_PROXY / NO_PROXY choice."""

from __future__ import annotations

import pytest

from apnsd.proxy import ProxyUrl, bypassed, parse_proxy, proxy_from_env, redact


def test_parse_with_credentials_and_percent_escapes() -> None:
    """User and password are taken apart and unescaped; Basic auth is built from them."""
    p = parse_proxy("http://al%40ice:p%3Ass@proxy.corp:3128")
    assert ProxyUrl("proxy.corp", 3128, "al@ice", "p:ss") == p
    assert "Basic YWxAaWNlOnA6c3M=" == p.authorization()


@pytest.mark.parametrize(
    "text", ["https://proxy:3128", "proxy:3128", "http://proxy", "http://proxy:99999", "http://proxy:3128/path", ""]
)
def test_bad_proxy_urls_are_refused(text: str) -> None:
    """Anything but http://[user:pass@]host:port is a ValueError."""
    with pytest.raises(ValueError):
        parse_proxy(text)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://u:secret@h:1", "http://u:***@h:1"),
        ("http://h:1", "http://h:1"),
        ("socks5://u:secret@h:1", "socks5://***@h:1"),
    ],
)
def test_redact_never_shows_the_password(text: str, shown: str) -> None:
    """Valid or not, a redacted proxy URL has no password in it."""
    assert shown == redact(text)


@pytest.mark.parametrize(
    ("host", "no_proxy", "expected"),
    [
        ("api.push.apple.com", "*", True),
        ("api.push.apple.com", ".apple.com", True),
        ("api.push.apple.com", "apple.com", True),
        ("api.push.apple.com", "push.apple.co", False),
        ("127.0.0.1", "localhost,127.0.0.0/8", True),
        ("10.1.2.3", "127.0.0.1", False),
        ("api.push.apple.com", "api.push.apple.com:2197", False),
        ("api.push.apple.com", "api.push.apple.com:443", True),
        ("::1", "::1", True),
    ],
)
def test_no_proxy_matching(host: str, no_proxy: str, expected: bool) -> None:
    """NO_PROXY entries: *, names, domain suffixes, IPs and CIDR blocks, optionally with a port."""
    assert expected == bypassed(host, 443, no_proxy)


def test_https_proxy_lower_case_and_no_proxy() -> None:
    """https_proxy works in lower case; NO_PROXY turns it off for the hosts it names."""
    env = {"https_proxy": "http://p:8080", "no_proxy": "sandbox.push.apple.com"}
    assert ("http://p:8080", "") == (
        proxy_from_env("api.push.apple.com", 443, env),
        proxy_from_env("api.sandbox.push.apple.com", 443, env),
    )
