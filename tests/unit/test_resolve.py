"""Resolving the gateway's address: an IP address is used as given, a name goes to the resolver."""

from __future__ import annotations

import socket

import pytest

from apnsd.gateway import transport


def _no_resolver(*args: object, **kwargs: object) -> list[object]:
    raise AssertionError("the resolver was asked")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", (socket.AF_INET, ("127.0.0.1", 2195))),
        ("::1", (socket.AF_INET6, ("::1", 2195, 0, 0))),
    ],
)
def test_an_ip_address_is_not_resolved_again_on_each_connect(monkeypatch, host, expected):
    """A gateway given as an IP address dials that address without asking the resolver."""
    monkeypatch.setattr(socket, "getaddrinfo", _no_resolver)
    t = transport.TlsTransport(host, 2195, context=None)  # type: ignore[arg-type]

    got = transport._resolve(host, 2195, t._ip)

    assert [(expected[0], socket.SOCK_STREAM, socket.IPPROTO_TCP, "", expected[1])] == got


def test_a_name_is_resolved(monkeypatch):
    """A gateway name goes to the resolver, with the port, for stream sockets."""
    asked: list[tuple[object, ...]] = []

    def resolver(*args: object) -> list[tuple[int, int, int, str, tuple[str, int]]]:
        asked.append(args)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 2195))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)

    got = transport._resolve("gateway.example", 2195, False)

    assert [("gateway.example", 2195, 0, socket.SOCK_STREAM)] == asked
    assert [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 2195))] == got
