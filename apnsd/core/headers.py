"""The one set of rules for values that become APNs request headers, matched against the whole string.

Jobs (``JobParser``), ``apnsd push``, ``apnsd.client`` and the config all check through here, so a
value that passes can be encoded as an HTTP/2 field without the gateway ending the connection.
Every pattern is used with ``fullmatch``: ``$`` would also match before a trailing newline.
"""

from __future__ import annotations

import re

from apnsd.errors import JobError

MAX_COLLAPSE_ID = 64
MAX_TOPIC = 255
MAX_JOB_ID = 256
PRIORITIES = (10, 5, 1)
MAX_EXPIRATION = 2**32

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# A bundle id (letters, digits, '-' and '.') and the push-type suffixes Apple appends to it.
_TOPIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TOPIC_OR_WILDCARD = re.compile(r"[A-Za-z0-9*][A-Za-z0-9._*-]*")
_TOPIC_CACHE_LIMIT = 256
_good_topics: set[str] = set()  # topics already checked: a handful, repeated in every job
_BEARER = re.compile(r"bearer [A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def is_uuid(value: str) -> bool:
    """True when ``value`` (lower case) is a canonical 8-4-4-4-12 UUID, usable as apns-id as it is."""
    return UUID.fullmatch(value) is not None


def is_text(value: str) -> bool:
    """Non-empty printable text (no control, format or line-break character anywhere) without surrounding spaces.

    ``str.isprintable`` judges every character of the string, so it is a full-string match. ``strip`` returns the
    string itself when there is nothing to strip, so the comparison is an identity check on the common path (half
    the time of two slices compared, once per job id).
    """
    return value != "" and value.isprintable() and value.strip(" ") == value


def is_utf8(value: str) -> bool:
    """True when ``value`` can be written as UTF-8: no unpaired surrogate (which Python callers, and arguments
    in bytes that are not UTF-8, can hand over; JSON jobs cannot carry one)."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_job_id(value: str) -> str:
    """The application's id: printable text without control characters, at most 256 characters."""
    if len(value) > MAX_JOB_ID or not is_text(value):
        raise JobError(
            "bad_id",
            f"id must be 1-{MAX_JOB_ID} characters of printable text without control characters or surrounding spaces",
        )
    return value


def is_known_topic(value: str) -> bool:
    """True for a topic that already passed ``check_topic`` (the handful every job repeats)."""
    return value in _good_topics


def check_topic(value: str, wildcard_ok: bool = False) -> str:
    """An apns-topic: a bundle id (plus suffix) of letters, digits, '.', '-' and '_'.

    ``wildcard_ok`` lets '*' through (the config: `apnsd check` explains why a wildcard topic is refused
    by the gateway; it is a well-formed header value that cannot break the connection).
    """
    if value in _good_topics:
        return value
    pattern = _TOPIC_OR_WILDCARD if wildcard_ok else _TOPIC
    if len(value) > MAX_TOPIC or not pattern.fullmatch(value):
        raise JobError(
            "bad_topic", f"topic must be a bundle id (letters, digits, '.', '-', '_'; at most {MAX_TOPIC} characters)"
        )
    if wildcard_ok:
        return value
    if len(_good_topics) >= _TOPIC_CACHE_LIMIT:
        _good_topics.clear()
    _good_topics.add(value)
    return value


def check_collapse_id(value: str) -> str:
    """An apns-collapse-id: at most 64 bytes of printable text without surrounding spaces."""
    if len(value.encode()) > MAX_COLLAPSE_ID:
        raise JobError("bad_collapse_id", f"collapse_id is longer than {MAX_COLLAPSE_ID} bytes")
    if not is_text(value):
        raise JobError("bad_collapse_id", "collapse_id must be non-empty printable text without surrounding spaces")
    return value


def check_priority(value: int, protocol: str) -> int:
    """10, 5 or 1 (binary: 10 or 5)."""
    if type(value) is not int or value not in PRIORITIES:
        raise JobError("bad_priority", f"priority must be 10, 5 or 1, got {value}")
    if protocol == "binary" and value == 1:
        raise JobError("bad_priority", "the binary protocol knows priorities 10 and 5 only")
    return value


def check_expiration(value: int) -> int:
    """Unix seconds that fit the binary frame's 32 bits (0 = do not store)."""
    if type(value) is not int or not 0 <= value < MAX_EXPIRATION:
        raise JobError("bad_expiration", f"expiration must be unix seconds (0 = do not store), got {value}")
    return value


def check_authorization(value: str) -> str:
    """``bearer <JWT>``: three base64url parts."""
    if not _BEARER.fullmatch(value):
        raise JobError("bad_header_value", "authorization must be 'bearer' and a JWT of three base64url parts")
    return value
