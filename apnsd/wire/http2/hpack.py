"""HPACK for the client core: literal fields and APNs request header blocks from cached bytes.

The client never adds to the server's dynamic table: every field is an indexed static entry
or a literal "without indexing" (RFC 7541 §6.2.2), so encoding keeps no state that the server
must mirror, and a request's header block is a concatenation of byte strings built once per
template, per push type or per priority, plus the few values that change per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apnsd.core.headers import is_utf8
from apnsd.errors import JobError

if TYPE_CHECKING:
    from apnsd.wire.http2.events import RequestTemplate

INDEXED_METHOD_GET = b"\x82"  # static index 2
INDEXED_METHOD_POST = b"\x83"  # static index 3
STATIC_METHOD = 2
INDEXED_SCHEME_HTTPS = b"\x87"  # static index 7
TABLE_SIZE_ZERO = b"\x20"  # dynamic table size update to 0
STATIC_AUTHORITY, STATIC_PATH, STATIC_AUTHORIZATION, STATIC_CONTENT_LENGTH = 1, 4, 23, 28
_LITERAL_PLAIN, _LITERAL_NEVER_INDEXED = 0x00, 0x10


def encode_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer with an N-bit prefix; ``first`` carries the pattern bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SHORT_LENGTHS = [bytes((n,)) for n in range(127)]


def encode_str(value: bytes) -> bytes:
    """An HPACK string literal, without Huffman coding (cheaper to build, a few bytes longer)."""
    n = len(value)
    return (_SHORT_LENGTHS[n] if n < 127 else encode_int(n, 7)) + value


def literal_name(name: int | str, never_indexed: bool = False) -> bytes:
    """The start of a literal field: a static-table name index or a literal name; the value follows."""
    first = _LITERAL_NEVER_INDEXED if never_indexed else _LITERAL_PLAIN
    if isinstance(name, int):
        return encode_int(name, 4, first)
    return bytes((first,)) + encode_str(name.encode("ascii"))


def literal(name: int | str, value: str | bytes, never_indexed: bool = False) -> bytes:
    """A whole literal-without-indexing (or never-indexed) header field."""
    raw = value.encode() if isinstance(value, str) else value
    return literal_name(name, never_indexed) + encode_str(raw)


def checked(name: str, value: str) -> str:
    """``value`` if HTTP/2 allows it in a field (RFC 9113 §8.2.1), else JobError.

    A malformed field value is a connection error for strict servers (h2 among them), so
    one bad job would take every request in flight down with it.
    """
    if "\0" in value or "\r" in value or "\n" in value or value[:1] in (" ", "\t") or value[-1:] in (" ", "\t"):
        raise JobError("bad_header_value", f"{name} {value!r} has NUL, CR, LF or surrounding whitespace")
    if not is_utf8(value):
        raise JobError("bad_header_value", f"{name} {value!r} is not valid UTF-8 text")
    return value


_PATH = literal_name(STATIC_PATH)
_PATH_PREFIX = b"/3/device/"
_EXPIRATION = literal_name("apns-expiration")
_COLLAPSE_ID = literal_name("apns-collapse-id")
_APNS_ID = literal_name("apns-id")
_CONTENT_LENGTH = literal_name(STATIC_CONTENT_LENGTH)
_PRIORITIES = {p: literal("apns-priority", str(p)) for p in (10, 5, 1)}
_BROADCAST_PREFIX = b"/4/broadcasts/apps/"
_CHANNEL_ID = literal_name("apns-channel-id")
_REQUEST_ID = literal_name("apns-request-id")
_LIVE_ACTIVITY = literal("apns-push-type", "liveactivity")
_CACHE_LIMIT = 256  # topics and push types come from jobs: keep their caches bounded
_TAIL_CACHE_LIMIT = 8192  # body lengths: a few KB at most each, so this holds every one in practice
_PATH_PREFIX_LEN = len(_PATH_PREFIX)


class RequestEncoder:
    """Builds the header block of each APNs request, reusing the encoded fields of its template."""

    def __init__(self) -> None:
        self._template: RequestTemplate | None = None
        self._pseudo = self._pseudo_path = self._topic = self._auth = b""
        self._topics: dict[str, bytes] = {}
        self._push_types: dict[str, bytes] = {}
        # Per template, the encoded fields between the path and the apns-id value (topic, push type,
        # priority, the apns-id name) by their values, and the fields after it (content-length, authorization)
        # by body length: a request is then a join of six byte strings.
        self._middles: dict[tuple[str | None, str | None, int | None], bytes] = {}
        self._tails: dict[int, bytes] = {}

    def block(
        self,
        template: RequestTemplate,
        token_hex: str,
        apns_id: str,
        length: int,
        push_type: str | None,
        priority: int | None,
        expiration: int | None,
        collapse_id: str | None,
        topic: str | None,
    ) -> bytes:
        """The header block: pseudo-headers, apns-* headers, content-length, then authorization."""
        if template is not self._template:
            self._use(template)
        if expiration is None and collapse_id is None:  # the common shape, from cached parts
            middle = self._middles.get((topic, push_type, priority))
            if middle is None:
                middle = self._middle(template, topic, push_type, priority)
            tail = self._tails.get(length)
            if tail is None:
                tail = self._tail(length)
            path = token_hex.encode()
            ident = apns_id.encode()
            n, m = len(path) + _PATH_PREFIX_LEN, len(ident)
            if n < 127 and m < 127:
                return b"".join(
                    (self._pseudo_path, _SHORT_LENGTHS[n], _PATH_PREFIX, path, middle, _SHORT_LENGTHS[m], ident, tail)
                )
        topic_field = self._topic
        if topic is not None and topic != template.topic:
            topic_field = self._topics.get(topic) or self._cached(self._topics, "apns-topic", topic)
        parts = [self._pseudo, _PATH, encode_str(_PATH_PREFIX + token_hex.encode()), topic_field]
        if push_type is not None:
            parts.append(self._push_types.get(push_type) or self._cached(self._push_types, "apns-push-type", push_type))
        if priority is not None:
            parts.append(_PRIORITIES.get(priority) or literal("apns-priority", str(priority)))
        if expiration is not None:
            parts += (_EXPIRATION, encode_str(str(expiration).encode()))
        if collapse_id is not None:
            parts += (_COLLAPSE_ID, encode_str(checked("apns-collapse-id", collapse_id).encode()))
        parts += (_APNS_ID, encode_str(apns_id.encode()), _CONTENT_LENGTH, encode_str(str(length).encode()), self._auth)
        return b"".join(parts)

    def broadcast_block(
        self,
        template: RequestTemplate,
        bundle_id: str,
        channel_id: str,
        request_id: str,
        length: int,
        priority: int,
        expiration: int,
        topic: str,
    ) -> bytes:
        """A Live Activity broadcast: POST /4/broadcasts/apps/<bundle id> with the channel's headers."""
        if template is not self._template:
            self._use(template)
        path = _BROADCAST_PREFIX + checked(":path", bundle_id).encode()
        parts = [
            self._pseudo,
            _PATH,
            encode_str(path),
            self._topics.get(topic) or self._cached(self._topics, "apns-topic", topic),
            _LIVE_ACTIVITY,
            _CHANNEL_ID,
            encode_str(checked("apns-channel-id", channel_id).encode()),
            _PRIORITIES.get(priority) or literal("apns-priority", str(priority)),
            _EXPIRATION,
            encode_str(str(expiration).encode()),
            _REQUEST_ID,
            encode_str(request_id.encode()),
            _CONTENT_LENGTH,
            encode_str(str(length).encode()),
            self._auth,
        ]
        return b"".join(parts)

    def _use(self, t: RequestTemplate) -> None:
        """Encode the fields a template fixes; a new object (e.g. a rotated JWT) re-encodes."""
        authority = literal(STATIC_AUTHORITY, checked(":authority", t.authority))
        pseudo = INDEXED_METHOD_POST + INDEXED_SCHEME_HTTPS + authority
        topic = literal("apns-topic", checked("apns-topic", t.topic)) if t.topic is not None else b""
        # never-indexed asks intermediaries, too, never to keep the bearer token in a table
        auth = (
            literal(STATIC_AUTHORIZATION, checked("authorization", t.authorization), never_indexed=True)
            if t.authorization
            else b""
        )
        self._template, self._pseudo, self._topic, self._auth = t, pseudo, topic, auth
        self._pseudo_path = pseudo + _PATH
        self._middles.clear()
        self._tails.clear()

    def _middle(self, t: RequestTemplate, topic: str | None, push_type: str | None, priority: int | None) -> bytes:
        """The encoded topic, push type, priority and apns-id name of requests with these values (cached)."""
        topic_field = self._topic
        if topic is not None and topic != t.topic:
            topic_field = self._topics.get(topic) or self._cached(self._topics, "apns-topic", topic)
        parts = [topic_field]
        if push_type is not None:
            parts.append(self._push_types.get(push_type) or self._cached(self._push_types, "apns-push-type", push_type))
        if priority is not None:
            parts.append(_PRIORITIES.get(priority) or literal("apns-priority", str(priority)))
        parts.append(_APNS_ID)
        if len(self._middles) >= _CACHE_LIMIT:
            self._middles.clear()
        middle = self._middles[(topic, push_type, priority)] = b"".join(parts)
        return middle

    def _tail(self, length: int) -> bytes:
        """The encoded content-length and authorization of a request whose body is ``length`` bytes (cached)."""
        if len(self._tails) >= _TAIL_CACHE_LIMIT:
            self._tails.clear()
        tail = self._tails[length] = _CONTENT_LENGTH + encode_str(str(length).encode()) + self._auth
        return tail

    @staticmethod
    def _cached(cache: dict[str, bytes], name: str, value: str) -> bytes:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        field = cache[value] = literal(name, checked(name, value))
        return field


def request_block(
    method: str, authority: str, path: str, headers: list[tuple[str, str]], authorization: str | None
) -> bytes:
    """Any request's header block (the channel management API: GET, POST, DELETE on its own paths)."""
    if method == "GET":
        first = INDEXED_METHOD_GET
    elif method == "POST":
        first = INDEXED_METHOD_POST
    else:
        first = literal(STATIC_METHOD, checked(":method", method))
    parts = [first, INDEXED_SCHEME_HTTPS, literal(STATIC_AUTHORITY, checked(":authority", authority))]
    parts.append(literal(STATIC_PATH, checked(":path", path)))
    parts += [literal(name, checked(name, value)) for name, value in headers]
    if authorization:
        parts.append(literal(STATIC_AUTHORIZATION, checked("authorization", authorization), never_indexed=True))
    return b"".join(parts)
