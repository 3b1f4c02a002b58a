"""The in-flight batch encoding apnsd writes itself, spelled out byte by byte from the msgpack spec."""

from __future__ import annotations

from apnsd.store.layout import pack_jobs


def test_jobs_are_packed_as_msgpack_str_items_of_every_size_class():
    """fixstr, str8, str16 and str32 headers as Lua's cmsgpack writes them, inside a fixarray."""
    items = [b"ab", b"x" * 40, b"y" * 300, b"z" * 70_000]

    expected = (
        b"\x94"
        + b"\xa2ab"
        + b"\xd9\x28"
        + b"x" * 40
        + b"\xda\x01\x2c"
        + b"y" * 300
        + b"\xdb\x00\x01\x11\x70"
        + b"z" * 70_000
    )
    assert expected == pack_jobs(items)


def test_array_header_grows_with_the_job_count():
    """Up to 15 jobs a fixarray, then array16 (and array32 past 65,535)."""
    assert b"\x90" == pack_jobs([])
    assert b"\xdc\x00\x10" + b"\xa0" * 16 == pack_jobs([b""] * 16)
    assert b"\xdd\x00\x01\x00\x00" == pack_jobs([b""] * 65_536)[:5]
