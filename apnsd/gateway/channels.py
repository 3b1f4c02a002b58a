"""Apple's channel management API (create, read, list, delete broadcast channels) with an app's credentials.

Each call is one request on its own short connection to the management host, driven by the same
HTTP/2 session and one-shot loop as `apnsd send`; only the request (method, path, body) and the
reading of the whole answer (``apns-channel-id`` header, JSON body) differ from a notification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from apnsd.config import AppConfig
from apnsd.core.jobs import ApnsIds, Notification, bundle_of, parse_channel_id
from apnsd.core.outcomes import Outcome, http2_outcome
from apnsd.errors import ApnsdError, ConfigError, JobError
from apnsd.gateway.http2_session import Http2Session
from apnsd.wire.http2.connection import ResponseReceived
from apnsd.wire.http2.hpack import request_block
from apnsd.wire.http2.status import response_headers

POLICIES = {0: "no message stored", 1: "most recent message stored"}
PUSH_TYPE = "LiveActivity"  # the one push type Apple's channels carry, spelled as the management API wants it
_json = msgspec.json.Decoder()


class ChannelApiError(ApnsdError):
    """The channel management API refused a request (``status``/``reason``) or gave no answer (``status`` None)."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ChannelOp:
    """One management request: method, path under the app's bundle id, extra headers, JSON body."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass
class ChannelAnswer:
    """What the management API answered: status, reason, the request id, response headers and JSON body."""

    status: int
    reason: str
    request_id: str
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


class ChannelSession(Http2Session):
    """An HTTP/2 session to the management host that sends its one ``op`` and keeps the whole answer."""

    op: ChannelOp
    answer: ChannelAnswer | None = None

    def on_connected(self, now: float) -> None:
        """As a delivery session, but every answer's headers and body are kept."""
        super().on_connected(now)
        if self._h2 is not None:
            self._h2.keep_responses = True

    def send_pending(self, now: float) -> None:
        """Send the op for the pending (carrier) notification."""
        h2 = self._h2
        if h2 is None or not self.pending or h2.available_streams <= 0:
            return
        note = self.pending.popleft()
        template = self._current_template()
        headers = [("apns-request-id", note.apns_id), *self.op.headers]
        if self.op.body:
            headers += [("content-type", "application/json"), ("content-length", str(len(self.op.body)))]
        block = request_block(self.op.method, template.authority, self.op.path, headers, template.authorization)
        self._streams[h2.send_raw(block, self.op.body)] = note
        self._push()

    def _outcome(self, ev: ResponseReceived) -> Outcome:
        block, body = self._h2.full_responses.pop(ev.stream_id, (b"", b"")) if self._h2 else (b"", b"")
        try:
            headers = response_headers(block)
        except ApnsdError:
            headers = {}
        try:
            data = _json.decode(body) if body else None
        except (msgspec.DecodeError, RecursionError):  # RecursionError: nested deeper than the decoder goes
            data = None
        self.answer = ChannelAnswer(ev.status, ev.reason, headers.get("apns-request-id", ""), headers, data)
        return http2_outcome(200 if ev.status in (200, 201, 204) else ev.status, ev.reason)


class ChannelManager:
    """Creates, reads, lists and deletes one app's broadcast channels through Apple's channel management API."""

    def __init__(self, name: str, app: AppConfig, timeout: float = 15.0) -> None:
        if app.protocol != "http2":
            raise ConfigError(f"apps.{name}.protocol", "broadcast channels need the HTTP/2 protocol")
        self.name = name
        host, port = app.channels_gateway()
        # The session connects to app.gateway(): point it at the management host instead.
        self.app = msgspec.structs.replace(app, host=host, port=port)
        self.timeout = timeout
        self._ids = ApnsIds()
        self._session: ChannelSession | None = None
        self._bundle = ""

    def __enter__(self) -> ChannelManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection kept open between requests."""
        if self._session is not None:
            self._session.close("done")

    @property
    def gateway(self) -> tuple[str, int]:
        """The management host and port this manager talks to."""
        return self.app.gateway()

    def create(self, policy: int = 0) -> str:
        """A new channel with this message-storage policy (0 = none stored, 1 = most recent); returns its id."""
        if policy not in POLICIES:
            raise ChannelApiError(f"message-storage policy must be 0 or 1, got {policy!r}")
        body = msgspec.json.encode({"message-storage-policy": policy, "push-type": PUSH_TYPE})
        answer = self._call(ChannelOp("POST", "channels", (), body), 201)
        channel = answer.headers.get("apns-channel-id", "")
        try:
            return parse_channel_id(channel)
        except JobError:
            raise ChannelApiError(
                f"a channel was created but no usable apns-channel-id came back: {channel!r}", 201
            ) from None

    def get(self, channel: str) -> dict[str, Any]:
        """A channel's configuration: ``{"message-storage-policy": 0|1, "push-type": "LiveActivity"}``."""
        answer = self._call(ChannelOp("GET", "channels", (("apns-channel-id", _channel(channel)),)), 200)
        if not isinstance(answer.body, dict) or answer.body.get("message-storage-policy") not in POLICIES:
            raise ChannelApiError(f"unexpected answer body for channel {channel}: {answer.body!r}", 200)
        return answer.body

    def list(self) -> list[str]:
        """Every channel id of the app in this environment."""
        answer = self._call(ChannelOp("GET", "all-channels"), 200)
        channels = answer.body.get("channels") if isinstance(answer.body, dict) else None
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ChannelApiError(f"unexpected answer body for the channel list: {answer.body!r}", 200)
        return channels

    def delete(self, channel: str) -> None:
        """Delete a channel (irreversible; Apple may still deliver messages it stored)."""
        self._call(ChannelOp("DELETE", "channels", (("apns-channel-id", _channel(channel)),)), 204)

    def _call(self, op: ChannelOp, expected: int) -> ChannelAnswer:
        """Send one op; the answer when its status is ``expected``, else ChannelApiError."""
        from apnsd.gateway.apps import build_session, default_topic, load_credentials, validity_problem
        from apnsd.gateway.oneshot import send_one

        session = self._session
        if session is None:
            creds = load_credentials(self.name, self.app)
            problem = validity_problem(creds)
            if problem:
                raise ChannelApiError(f"app {self.name!r}: {problem}")
            topic = default_topic(self.app, creds)
            if not topic:
                raise ConfigError(f"apps.{self.name}.topic", "channel management needs the app's bundle id as topic")
            self._bundle = bundle_of(topic)
            base = build_session(self.name, self.app, creds)
            assert isinstance(base, Http2Session)
            session = self._session = ChannelSession(
                self.name, self.app, base.make_transport, base.log, signer=base.signer, default_topic=base.default_topic
            )
        session.op = ChannelOp(op.method, f"/1/apps/{self._bundle}/{op.path}", op.headers, op.body)
        session.answer = None
        note = Notification(
            "", b"", op.body, self.name, self._ids(), None, None, None, None, None, None, 0, None, b"channels"
        )
        result = send_one(session, note, self.timeout, keep_open=True)
        answer = session.answer
        if answer is None:
            where = f"{self.app.host}:{self.app.port}"
            raise ChannelApiError(result.error if where in result.error else f"{where}: {result.error}")
        if answer.status != expected:
            said = answer.reason or f"(no reason; {expected} expected)"
            raise ChannelApiError(f"{answer.status} {said}", answer.status, answer.reason)
        return answer


def _channel(channel: str) -> str:
    """A channel id checked like a job's, as ChannelApiError when it is not one."""
    try:
        return parse_channel_id(channel)
    except JobError as exc:
        raise ChannelApiError(exc.detail) from None
