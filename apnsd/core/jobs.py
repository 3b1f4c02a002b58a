"""Raw queue elements → validated notifications: token normalisation, fan-out, payload size."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from itertools import count
from typing import Any

import msgspec

from apnsd.core.headers import (
    MAX_COLLAPSE_ID as MAX_COLLAPSE_ID,  # re-exported for the mock and the tests
)
from apnsd.core.headers import (
    MAX_EXPIRATION,
    MAX_JOB_ID,
    PRIORITIES,
    check_collapse_id,
    check_expiration,
    check_job_id,
    check_priority,
    check_topic,
    is_known_topic,
    is_text,
    is_uuid,
)
from apnsd.core.push_types import PUSH_TYPE_SUFFIXES, infer_push_type, topic_problem
from apnsd.errors import JobError

__all__ = ["PUSH_TYPE_SUFFIXES"]  # re-exported: callers validate push types against this table

MIN_TOKEN_BYTES = 32
MAX_TOKEN_BYTES = 100
_HEX = frozenset("0123456789abcdef")
MAX_ATTEMPTS_FIELD = 1_000_000
# A broadcast channel id: standard base64 with its padding, as Apple hands it out (not URL-safe base64).
_CHANNEL_ID = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
MAX_CHANNEL_ID = 256  # Apple sets no size ("don't make assumptions"); ids seen are ~24 characters
LIVE_ACTIVITY = "liveactivity"
UUID_LENGTH = 36


class JobSpec(msgspec.Struct, kw_only=True):
    """The JSON object applications push; unknown keys are kept out of the way, not rejected."""

    token: str | None = None
    tokens: list[str] | None = None
    channel: str | None = None
    payload: msgspec.Raw = msgspec.Raw(b"")
    app: str = "default"
    id: str | None = None
    priority: int | None = None
    expiration: int | None = None
    push_type: str | None = None
    topic: str | None = None
    collapse_id: str | None = None
    send_at: float | None = None
    attempts: int = 0
    enqueued_at: float | None = None
    failing_since: float | None = None  # set by apnsd on the first retry: retry_for counts from here


class Notification(msgspec.Struct, eq=False, gc=False):
    """One device's notification, ready for either protocol; ``raw`` is the job it came from.

    A Struct rather than a dataclass: one is made per job, and msgspec's constructor (in C) takes a third of
    the time of the generated ``__init__``. ``eq=False`` keeps identity equality and hashing.

    ``gc=False``: the cyclic collector never walks the tens of thousands in flight (16 bytes and a traversal
    less each). The one cycle through a notification, ``n.batch.unresolved[n]``, ends when its outcome is
    recorded (the recorder deletes the entry), and every notification's outcome is recorded.
    """

    # None when the token is the lower-case hex of ``token_bytes`` (every parsed device token): tens of
    # thousands wait in flight at once, and the hex string would cost another 113 bytes each.
    _token: str | None
    token_bytes: bytes
    # The payload as it stands in the raw job (msgspec's ~48-byte view into ``raw``, held anyway) when it is
    # sent as pushed, the common case; the bytes to send otherwise (a pre-encoded string, a compacted one).
    # None once such a view was let go (``take_body``): it is read from ``raw`` again if ever needed.
    _payload: bytes | msgspec.Raw | None
    app: str
    apns_id: str
    # The application's id; IN_RAW when it is left in ``raw`` (read again only for receipts and rewritten jobs):
    # the window holds tens of thousands of notifications, and the string would cost ~55 bytes each.
    _job_id: str | None
    priority: int | None
    expiration: int | None
    push_type: str | None
    topic: str | None
    collapse_id: str | None
    attempts: int
    enqueued_at: float | None
    raw: bytes
    fanout: bool = False
    send_at: float | None = None
    batch: Any = None
    losses: int = 0
    failing_since: float | None = None
    unique_id: str = ""  # apns-unique-id of the answer (development environment only), for receipts
    channel: str | None = None  # a Live Activity broadcast to this channel id instead of a device token
    suspect: int = 0  # connections ended by a gateway protocol error while this was unanswered
    # Its job's position in the batch's in-flight list in Redis, when it can be read back from there (one job, one
    # token, a batch taken into a list of its own, no receipts); else -1. See core/slim.py.
    index: int = -1

    @property
    def job_id(self) -> str | None:
        """The application's id of the job, if it gave one."""
        j = self._job_id
        return _id_decoder.decode(self.raw).id if j is IN_RAW else j

    def __repr__(self) -> str:
        """The fields that say which notification this is (not the raw job, nor the batch it came in)."""
        return f"Notification(token={shorten(self.token)!r}, app={self.app!r}, apns_id={self.apns_id!r})"

    @property
    def token(self) -> str:
        """The device token in lower-case hex, or the channel id of a broadcast."""
        t = self._token
        return self.token_bytes.hex() if t is None else t

    @property
    def payload(self) -> bytes:
        """The JSON payload to send."""
        p = self._payload
        if p is None:
            p = self._payload_again()
        return p if type(p) is bytes else bytes(p)

    @property
    def body(self) -> bytes | msgspec.Raw:
        """The payload's bytes as held (a view into ``raw`` or bytes): for writers that take any bytes-like object."""
        p = self._payload
        return self._payload_again() if p is None else p

    def take_body(self) -> bytes | msgspec.Raw:
        """``body``, for a writer that will not need it again: a view into ``raw`` is let go (read from ``raw``
        again if ever asked for), bytes that differ from the raw job are kept.

        For a binary window: tens of thousands of written frames wait there for silence, and their payloads
        are needed again only if one must be encoded afresh (a resend the kept bytes do not cover)."""
        p = self._payload
        if p is None:
            return self._payload_again()
        if type(p) is msgspec.Raw:
            self._payload = None
        return p

    def _payload_again(self) -> msgspec.Raw:
        """The payload as it stands in ``raw``, read again (the view was let go: it was sent as pushed)."""
        return _payload_decoder.decode(self.raw).payload


IN_RAW = "\x00in raw"  # Notification._job_id: read the id from the raw job (a control character: never a valid id)


class _JobId(msgspec.Struct):
    """Only a job's id (every other key skipped)."""

    id: str | None = None


_id_decoder = msgspec.json.Decoder(_JobId)


class _JobPayload(msgspec.Struct):
    """Only a job's payload as it stands (every other key skipped)."""

    payload: msgspec.Raw = msgspec.Raw(b"")


_payload_decoder = msgspec.json.Decoder(_JobPayload)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A job (or one token of it) that cannot be sent, with the reason it failed validation."""

    raw: bytes | None  # None: the job itself is gone (see worker/readback.py), nothing to requeue
    reason: str
    detail: str
    app: str | None
    token: str | None = None
    tokens: dict[str, str] | None = None  # a fan-out job's rejected tokens → reason


_LOW_HEX = [f"{i:02x}" for i in range(256)]


class ApnsIds:
    """Fast unique canonical UUIDs for apns-id: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        r = os.urandom(10).hex()
        self._prefix = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-a{r[17:20]}-"
        self._next = count(int.from_bytes(os.urandom(3), "big") << 24).__next__
        self._high = ""  # the id up to its last two hex digits, redone every 256 ids (formatting each cost more)

    def __call__(self) -> str:
        """A new lowercase 8-4-4-4-12 id, unique within this process."""
        n = self._next() & 0xFFFFFFFFFFFF
        low = n & 0xFF
        if not low or not self._high:
            self._high = f"{self._prefix}{n >> 8:010x}"
        return self._high + _LOW_HEX[low]


def normalise_token(token: str) -> str:
    """Lower-case hex with spaces and <> removed; rejects the truncated iOS 13 description form."""
    return parse_token(token)[0]


def _plain_hex(token: str) -> bytes | None:
    """The token's bytes when it is plain hex of a valid length (the common case), else None."""
    try:
        raw = bytes.fromhex(token)
    except ValueError:
        return None
    # fromhex skips whitespace: only if the lengths agree was there none
    return raw if len(raw) * 2 == len(token) and MIN_TOKEN_BYTES <= len(raw) <= MAX_TOKEN_BYTES else None


def parse_token(token: str) -> tuple[str, bytes]:
    """Lower-case hex (spaces and <> removed) and its bytes; rejects the truncated iOS 13 description form."""
    raw = _plain_hex(token)
    if raw is not None:
        return token.lower(), raw
    if "length" in token or "bytes" in token or "{" in token or "…" in token or "..." in token:
        raise JobError(
            "token_is_description",
            "token looks like an iOS 13 NSData description ({length = …, bytes = 0x…}), which is truncated; "
            "send the hex of the token bytes",
        )
    t = token.replace(" ", "").replace("<", "").replace(">", "").lower()
    if not t:
        raise JobError("missing_token", "token is empty")
    try:
        raw = bytes.fromhex(t)
    except ValueError:
        raw = b""
    # fromhex also skips tabs and newlines, so a token holding them decodes but is not hex
    if 2 * len(raw) != len(t) and (len(t) % 2 == 0 or not _HEX.issuperset(t)):
        raise JobError("bad_token", f"token is not hexadecimal: {shorten(t)}")
    if len(t) % 2 or not MIN_TOKEN_BYTES <= len(raw) <= MAX_TOKEN_BYTES:
        raise JobError(
            "bad_token_length",
            f"token has {len(t)} hex digits; "
            f"expected an even count from {2 * MIN_TOKEN_BYTES} to {2 * MAX_TOKEN_BYTES}",
        )
    return t, raw


def parse_channel_id(value: str) -> str:
    """A broadcast channel id as given (base64, padded); JobError("bad_channel") for anything else."""
    if not value:
        raise JobError("bad_channel", "channel is empty")
    if len(value) > MAX_CHANNEL_ID:
        raise JobError("bad_channel", f"channel is {len(value)} characters; at most {MAX_CHANNEL_ID}")
    if not _CHANNEL_ID.fullmatch(value):
        raise JobError("bad_channel", f"channel is not a base64 channel id: {shorten(value)}")
    return value


def bundle_of(topic: str) -> str:
    """The bundle id a Live Activity topic belongs to (its ``.push-type.liveactivity`` suffix removed)."""
    suffix = PUSH_TYPE_SUFFIXES[LIVE_ACTIVITY]
    return topic[: -len(suffix)] if topic.endswith(suffix) else topic


def live_activity_topic(topic: str) -> str:
    """The apns-topic of a Live Activity push for an app topic: the bundle id with ``.push-type.liveactivity``."""
    return bundle_of(topic) + PUSH_TYPE_SUFFIXES[LIVE_ACTIVITY]


def shorten(token: str) -> str:
    """The first 8 characters of a token, for logs."""
    return token[:8] + "…" if len(token) > 8 else token


_decoder = msgspec.json.Decoder(JobSpec)
_SILENT_KEY = b"content-available"
_plain = msgspec.json.Decoder()


class JobParser:
    """Turns raw list elements into notifications for known apps, rejecting what cannot be sent."""

    def __init__(self, limits: dict[str, tuple[str, int, int]]) -> None:
        """``limits`` maps app name → (protocol, payload limit, voip payload limit)."""
        self._limits = limits
        self.new_id = ApnsIds()

    def parse(self, raw: bytes) -> tuple[list[Notification], list[Rejected]]:
        """Validate one job; every token ends up either as a notification or a rejection, whatever ``raw`` holds."""
        good: list[Notification] = []
        bad: list[Rejected] = []
        self._parse_into(raw, good, bad, None)
        return good, bad

    def parse_many(
        self, raws: list[bytes], batch: Any = None, indexed: bool = False
    ) -> tuple[list[Notification], list[Rejected]]:
        """Validate a taken batch of jobs (as ``parse`` does each), every notification carrying ``batch``; with
        ``indexed``, a one-token job's notification also carries its position in ``raws`` (``Notification.index``)."""
        good: list[Notification] = []
        bad: list[Rejected] = []
        parse = self._parse_into
        if not indexed:
            for raw in raws:
                parse(raw, good, bad, batch)
            return good, bad
        for i, raw in enumerate(raws):
            added = len(good)
            parse(raw, good, bad, batch)
            if len(good) == added + 1:
                n = good[added]
                if not n.fanout and n.channel is None:
                    n.index = i
        return good, bad

    def _parse_into(self, raw: bytes, good: list[Notification], bad: list[Rejected], batch: Any) -> None:
        """Validate one job, appending its notifications to ``good`` and its rejection, if any, to ``bad``."""
        added = len(good)
        try:  # free unless something raises (3.11+): no wrapper call on the hot path
            try:
                spec = _decoder.decode(raw)
            except msgspec.ValidationError as exc:
                bad.append(self._reject_whole(raw, exc))
                return
            except msgspec.DecodeError as exc:
                bad.append(Rejected(raw, "not_json", f"job is not valid JSON: {exc}", None))
                return
            # msgspec checks the UTF-8 of the strings it decodes, not of the payload it keeps as pushed (Raw)
            # nor of keys it skips: a non-ASCII job is checked whole (an ASCII one, the common case, is valid)
            if not raw.isascii() and not _is_utf8(raw):
                bad.append(Rejected(raw, "not_json", "job is not valid JSON: invalid UTF-8", spec.app))
                return
            if (  # the common shape (one token, no delivery options) has a fast path; it declines anything else
                spec.token is not None
                and spec.tokens is None
                and spec.channel is None
                and spec.topic is None
                and spec.push_type is None
                and spec.priority is None
                and spec.expiration is None
                and spec.collapse_id is None
            ):
                note = self._plain(raw, spec, batch)
                if note is not None:
                    good.append(note)
                    return
            job_uuid = None
            job_id = spec.id
            if job_id is not None:
                # a canonical UUID is 36 characters: the length spares the pattern for every other id
                job_uuid = job_id.lower() if len(job_id) == UUID_LENGTH else None
                if job_uuid is None or not is_uuid(job_uuid):
                    job_uuid = None
                    try:
                        check_job_id(job_id)
                    except JobError as exc:
                        bad.append(Rejected(raw, exc.reason, exc.detail, spec.app))
                        return
            if spec.channel is not None:
                notes, rejects = self._broadcast(raw, spec, job_uuid)
                for n in notes:
                    n.batch = batch
                good += notes
                bad += rejects
                return
            try:
                payload, protocol, push_type = self._common(spec)
            except JobError as exc:
                bad.append(Rejected(raw, exc.reason, exc.detail, spec.app))
                return
            # Same length: the payload object as pushed (a decoded string or a compacted payload is shorter),
            # so the notification keeps the view into ``raw`` rather than a copy of it.
            body: bytes | msgspec.Raw = spec.payload if len(payload) == len(spec.payload) else payload
            fanout = spec.tokens is not None
            tokens: list[str] | tuple[str] = spec.tokens if spec.tokens is not None else (spec.token or "",)
            own_id = job_uuid if len(tokens) == 1 else None  # one device: the job's UUID is its apns-id
            failed: dict[str, str] | None = None
            first: JobError | None = None
            new_id = self.new_id if protocol == "http2" else None
            for token in tokens:
                tb = _plain_hex(token)
                if tb is None:
                    try:
                        tb = parse_token(token)[1]  # the normalised text is the bytes' hex: not kept
                    except JobError as exc:
                        failed = failed or {}
                        failed[token] = exc.reason
                        first = first or exc
                        continue
                # the binary protocol has no apns-id: its frames carry a per-connection number
                apns_id = own_id or (new_id() if new_id is not None else "")
                good.append(
                    Notification(
                        None,
                        tb,
                        body,
                        spec.app,
                        apns_id,
                        job_id,
                        spec.priority,
                        spec.expiration,
                        push_type,
                        spec.topic,
                        spec.collapse_id,
                        spec.attempts,
                        spec.enqueued_at,
                        raw,
                        fanout,
                        spec.send_at,
                        batch,
                        0,
                        spec.failing_since,
                    )
                )
            if first is None:
                return
            if not fanout:
                bad.append(Rejected(raw, first.reason, first.detail, spec.app, spec.token))
            else:
                bad.append(_failed_tokens(raw, spec.app, failed or {}, first))
        except RecursionError:  # nested deeper than the decoder goes
            del good[added:]
            bad.append(Rejected(raw, "not_json", "job is not valid JSON: nested too deeply", None))
        except Exception as exc:  # a bug must cost this one job, never the loop that parses it
            del good[added:]
            bad.append(Rejected(raw, f"internal_error:{type(exc).__name__}", "validating the job failed", None))

    def _plain(self, raw: bytes, spec: JobSpec, batch: Any) -> Notification | None:
        """The notification of a one-token job without delivery options when it passes every check the full
        path would make (so yields the same notification), else None: the full path decides, and explains."""
        limits = self._limits.get(spec.app)
        tb = _plain_hex(spec.token or "")
        payload = bytes(spec.payload)
        job_id = spec.id
        if (
            limits is None
            or tb is None
            or payload[:1] != b"{"  # an object, as pushed (decode_payload's first case)
            or len(payload) > limits[1]  # no topic or push type: never voip, so the plain limit applies
            or not 0 <= spec.attempts <= MAX_ATTEMPTS_FIELD
        ):
            return None
        own_id = ""
        if job_id is not None and len(job_id) == UUID_LENGTH:
            own_id = job_id.lower()  # a UUID becomes the apns-id
            if not is_uuid(own_id):
                return None
        elif job_id is not None and (len(job_id) > MAX_JOB_ID or not is_text(job_id)):  # check_job_id's rule
            return None
        push_type = "alert" if payload.find(_SILENT_KEY) < 0 else infer_push_type(None, payload)
        return Notification(
            None,
            tb,
            spec.payload,
            spec.app,
            own_id or (self.new_id() if limits[0] == "http2" else ""),  # binary frames carry no apns-id
            job_id if job_id is None else IN_RAW,
            None,
            None,
            push_type,
            None,
            None,
            spec.attempts,
            spec.enqueued_at,
            raw,
            False,
            spec.send_at,
            batch,
            0,
            spec.failing_since,
        )

    def _broadcast(self, raw: bytes, spec: JobSpec, job_uuid: str | None) -> tuple[list[Notification], list[Rejected]]:
        """A channel job: one Live Activity broadcast, validated like any job plus the broadcast rules."""
        try:
            channel = parse_channel_id(spec.channel or "")
            if spec.token is not None or spec.tokens is not None:
                raise JobError("bad_field", "give one of 'token', 'tokens' or 'channel', not several")
            limits = self._limits.get(spec.app)
            if limits is None:
                raise JobError(
                    "unknown_app", f"app {spec.app!r} is not configured (known: {', '.join(sorted(self._limits))})"
                )
            protocol, _, broadcast_limit = limits
            if protocol != "http2":
                raise JobError("bad_channel", "broadcasts need the HTTP/2 protocol; this app uses binary")
            if spec.push_type not in (None, LIVE_ACTIVITY):
                raise JobError("bad_push_type", f"a channel job is a Live Activity update: push_type {LIVE_ACTIVITY!r}")
            if spec.collapse_id is not None:
                raise JobError("bad_collapse_id", "broadcasts have no collapse id")
            self._options(spec, protocol)
            payload = decode_payload(spec.payload)
            if len(payload) > broadcast_limit:  # Apple: 5 KB for broadcasts, the same as voip's limit
                payload = msgspec.json.encode(_plain.decode(payload))
                if len(payload) > broadcast_limit:
                    raise JobError(
                        "payload_too_large", f"payload is {len(payload)} bytes; the limit is {broadcast_limit}"
                    )
        except JobError as exc:
            return [], [Rejected(raw, exc.reason, exc.detail, spec.app, spec.channel)]
        note = Notification(
            channel,
            b"",
            payload,
            spec.app,
            job_uuid or self.new_id(),
            spec.id,
            10 if spec.priority is None else spec.priority,  # Apple requires both headers on a broadcast
            0 if spec.expiration is None else spec.expiration,
            LIVE_ACTIVITY,
            spec.topic,
            None,
            spec.attempts,
            spec.enqueued_at,
            raw,
            send_at=spec.send_at,
            channel=channel,
        )
        return [note], []

    def _reject_whole(self, raw: bytes, exc: msgspec.ValidationError) -> Rejected:
        try:
            obj = _plain.decode(raw)
        except msgspec.DecodeError as dexc:
            return Rejected(raw, "not_json", f"job is not valid JSON: {dexc}", None)
        if not isinstance(obj, dict):
            return Rejected(raw, "not_object", f"job must be a JSON object, got {type(obj).__name__}", None)
        app = obj.get("app") if isinstance(obj.get("app"), str) else None
        return Rejected(raw, "bad_field", str(exc).replace("$.", ""), app)

    def _common(self, spec: JobSpec) -> tuple[bytes, str, str]:
        """Checks shared by every token of a job; returns the encoded payload, the app's protocol and the push type."""
        limits = self._limits.get(spec.app)
        if limits is None:
            raise JobError(
                "unknown_app", f"app {spec.app!r} is not configured (known: {', '.join(sorted(self._limits))})"
            )
        if spec.token is None or spec.tokens is not None:  # anything but the common shape: one token
            if spec.token is None and not spec.tokens:
                raise JobError("missing_token", "job has no 'token', non-empty 'tokens' list or 'channel'")
            if spec.token is not None and spec.tokens is not None:
                raise JobError("bad_field", "give 'token' or 'tokens', not both")
        protocol, limit, voip_limit = limits
        if spec.attempts and not 0 <= spec.attempts <= MAX_ATTEMPTS_FIELD:
            raise JobError("bad_attempts", f"attempts must be a whole number from 0 to {MAX_ATTEMPTS_FIELD}")
        # send_at and enqueued_at need no finiteness check: JSON has no NaN, and msgspec refuses a number
        # too large for a float (1e999) instead of decoding it to infinity (tests/unit/test_hostile_jobs.py)
        if (
            spec.push_type is not None
            or spec.priority is not None
            or spec.expiration is not None
            or spec.collapse_id is not None
            or spec.topic is not None
        ):
            self._options(spec, protocol)
        payload = decode_payload(spec.payload)
        push_type = spec.push_type
        if push_type is None:  # the common case inline: no topic and no silent-push key means alert
            push_type = (
                "alert"
                if spec.topic is None and payload.find(_SILENT_KEY) < 0
                else infer_push_type(spec.topic, payload)
            )
        if spec.priority is not None or spec.topic is not None:
            check_push_type(push_type, spec)
        cap = voip_limit if push_type == "voip" else limit
        if len(payload) > cap:
            payload = msgspec.json.encode(_plain.decode(payload))
            if len(payload) > cap:
                raise JobError("payload_too_large", f"payload is {len(payload)} bytes; the limit is {cap}")
        return payload, protocol, push_type

    def _options(self, spec: JobSpec, protocol: str) -> None:
        """Checks of the optional delivery fields (most jobs have none, so they are skipped)."""
        if spec.push_type is not None and spec.push_type not in PUSH_TYPE_SUFFIXES:
            raise JobError(
                "bad_push_type", f"push_type {spec.push_type!r} is not one of {', '.join(PUSH_TYPE_SUFFIXES)}"
            )
        # The rules live in core.headers; the common valid cases are decided here inline, since this runs
        # for every job that sets these fields.
        priority = spec.priority
        if priority is not None and (priority not in PRIORITIES or (priority == 1 and protocol == "binary")):
            check_priority(priority, protocol)
        if spec.expiration is not None and not 0 <= spec.expiration < MAX_EXPIRATION:
            check_expiration(spec.expiration)
        if spec.collapse_id is not None:
            check_collapse_id(spec.collapse_id)
        if spec.topic is not None and not is_known_topic(spec.topic):
            check_topic(spec.topic)


def _is_utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8 (no lone surrogates, as Python's codec and RFC 3629 say)."""
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _failed_tokens(raw: bytes, app: str, bad: dict[str, str], first: JobError) -> Rejected:
    """One rejection for every failed token of a fan-out job: the job with only those tokens, once.

    One entry per token, each holding the whole job, would let a job of thousands of bad tokens
    write thousands of copies of itself into Redis.
    """
    obj = _plain.decode(raw)
    obj["tokens"] = list(bad)
    detail = f"{len(bad)} token(s) rejected; first: {first.detail}"
    return Rejected(msgspec.json.encode(obj), first.reason, detail, app, None, bad)


def check_push_type(push_type: str, spec: JobSpec) -> None:
    """Apple's rules between a push type (given or inferred), the priority and an explicit topic."""
    if push_type == "background" and spec.priority == 10:
        raise JobError("bad_priority", "background pushes must use priority 5 (Apple: using priority 10 is an error)")
    if spec.topic is not None and spec.push_type is not None:
        problem = topic_problem(spec.topic, spec.push_type)
        if problem:
            raise JobError("bad_topic", problem)


def decode_payload(raw: msgspec.Raw) -> bytes:
    """The payload as JSON object bytes, whether pushed as an object or as a pre-encoded string."""
    data = bytes(raw)  # a Raw spans exactly the value: no surrounding whitespace to strip
    if data[:1] == b"{":
        return data
    if not data or data == b"null":
        raise JobError("missing_payload", "job has no 'payload'")
    if data[:1] == b'"':
        text = _plain.decode(data)
        try:
            inner = _plain.decode(text)
        except (msgspec.DecodeError, RecursionError):
            raise JobError("bad_payload", "payload string is not valid JSON (or nested too deeply)") from None
        if not isinstance(inner, dict):
            raise JobError("bad_payload", "payload must be a JSON object")
        return text.encode()
    raise JobError("bad_payload", "payload must be a JSON object (or a string holding one)")


def single_job(n: Notification, **changes: Any) -> bytes:
    """The job that sends just ``n`` (one token of a fan-out, or the whole job), with fields changed."""
    if not n.fanout and not changes:
        return n.raw
    obj: dict[str, Any] = _plain.decode(n.raw)
    if n.channel is None:
        obj.pop("tokens", None)
        obj.update(token=n.token)
    obj.update(id=n.job_id or n.apns_id or None, **changes)
    return msgspec.json.encode(obj)


def retry_job(n: Notification, send_at: float, now: float | None = None, counted: bool = True) -> bytes:
    """The job that sends ``n`` once more at ``send_at``: attempt count raised (when ``counted``), and
    ``failing_since`` kept from the first failure (or set to ``now``), so that retries end by time."""
    since = n.failing_since if n.failing_since is not None else (now if now is not None else send_at)
    return single_job(n, attempts=n.attempts + (1 if counted else 0), send_at=send_at, failing_since=since)
