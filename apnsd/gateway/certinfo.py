"""What an APNs client certificate says: bundle id, team, topics, environments, validity, host names."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

from apnsd.errors import CredentialsError

SANDBOX_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.1")
PRODUCTION_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.2")
TOPICS_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.6")
EXPIRY_WARN_DAYS = 30

_STRING_TAGS = (0x0C, 0x13, 0x16)  # UTF8String, PrintableString, IA5String
_SEQUENCE = 0x30


@dataclass(frozen=True)
class CertificateInfo:
    """The APNs-relevant facts of a client certificate."""

    subject: str
    common_name: str | None
    bundle_id: str | None
    team_id: str | None
    topics: tuple[tuple[str, str], ...]
    environments: frozenset[str]
    not_before: datetime
    not_after: datetime

    def days_left(self, now: datetime) -> float:
        """Days until the certificate expires (negative once it has)."""
        return (self.not_after - now).total_seconds() / 86400

    def topic_names(self) -> tuple[str, ...]:
        """The topics this certificate may push to, bundle id first."""
        return tuple(topic for topic, _ in self.topics)


def read_der(data: bytes) -> list[tuple[int, bytes]]:
    """Split DER bytes into consecutive (tag, content) pairs; ValueError if they do not parse."""
    items: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ValueError("truncated DER header")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4 or pos + count > len(data):
                raise ValueError("unsupported DER length")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        if pos + length > len(data):
            raise ValueError("DER value runs past the end")
        items.append((tag, data[pos : pos + length]))
        pos += length
    return items


def _first(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    value = attrs[0].value if attrs else None
    return value if isinstance(value, str) else None


def _extension_value(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else b""


def parse_topics(der: bytes) -> tuple[tuple[str, str], ...]:
    """Decode the .6.3.6 extension: a SEQUENCE of topic strings, each followed by SEQUENCE{kind}."""
    ((outer_tag, body),) = read_der(der)
    if outer_tag != _SEQUENCE:
        raise ValueError("topics extension is not a SEQUENCE")
    topics: list[tuple[str, str]] = []
    for tag, content in read_der(body):
        if tag in _STRING_TAGS:
            topics.append((content.decode("utf-8"), ""))
        elif tag == _SEQUENCE and topics and not topics[-1][1]:
            kinds = [c.decode("utf-8") for t, c in read_der(content) if t in _STRING_TAGS]
            topics[-1] = (topics[-1][0], kinds[0] if kinds else "")
    return tuple(topics)


def inspect_certificate(cert: x509.Certificate) -> CertificateInfo:
    """Read subject UID/OU/CN, Apple environment extensions and the topics list."""
    bundle_id = _first(cert.subject, NameOID.USER_ID)
    topics: tuple[tuple[str, str], ...] = ()
    raw_topics = _extension_value(cert, TOPICS_OID)
    if raw_topics:
        try:
            topics = parse_topics(raw_topics)
        except (ValueError, UnicodeDecodeError):
            topics = ()  # a garbled list still leaves the bundle id usable
    if bundle_id and bundle_id not in (t for t, _ in topics):
        topics = ((bundle_id, "app"), *topics)
    environments = frozenset(
        env
        for env, oid in (("sandbox", SANDBOX_OID), ("production", PRODUCTION_OID))
        if _extension_value(cert, oid) is not None
    )
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        common_name=_first(cert.subject, NameOID.COMMON_NAME),
        bundle_id=bundle_id,
        team_id=_first(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        topics=topics,
        environments=environments,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def check_validity(info: CertificateInfo, now: datetime, source: str) -> None:
    """Raise CredentialsError if the certificate has expired or is not valid yet."""
    if now >= info.not_after:
        raise CredentialsError(f"certificate {source} expired on {info.not_after:%Y-%m-%d %H:%M} UTC")
    if now < info.not_before:
        raise CredentialsError(f"certificate {source} is not valid before {info.not_before:%Y-%m-%d %H:%M} UTC")


@dataclass(frozen=True)
class Verdict:
    """One judgement of a certificate against the config: ok, a warning, or an error that stops delivery."""

    level: Literal["ok", "warn", "error"]
    message: str


def judge_environment(info: CertificateInfo, environment: str, host: str) -> Verdict:
    """Whether the certificate may be used on the configured environment's gateway ``host``."""
    if not info.environments:
        return Verdict(
            "warn",
            "certificate has no APNs environment extension (1.2.840.113635.100.6.3.1/.2); is it a push certificate?",
        )
    if environment not in info.environments:
        only = next(iter(info.environments))
        return Verdict(
            "error",
            f"{only}-only certificate used against {environment} gateway {host}; "
            f'set environment = "{only}" or use a {environment} certificate',
        )
    return Verdict("ok", f"certificate is allowed on the {environment} gateway")


def judge_topic(topic: str, info: CertificateInfo | None) -> Verdict:
    """Whether the configured topic is one APNs accepts (and, with a certificate, one it lists)."""
    allowed = info.topic_names() if info else ()
    if "*" in topic:
        return Verdict(
            "error",
            f"topic {topic!r} is a wildcard; APNs needs an exact topic"
            + (f", one of: {', '.join(allowed)}" if allowed else ""),
        )
    if not topic:
        if info and info.bundle_id:
            return Verdict(
                "ok",
                f"no topic configured: APNs uses the certificate's bundle id {info.bundle_id} unless a job sets one",
            )
        return Verdict("warn", "no topic configured and the certificate names no bundle id (UID); set topic")
    if info is not None and topic not in allowed:
        return Verdict(
            "error", f"topic {topic!r} is not one of the certificate's topics: {', '.join(allowed) or '(none)'}"
        )
    return Verdict("ok", f"topic {topic} is allowed")


def certificate_mismatch(info: CertificateInfo, environment: str, host: str, topic: str) -> str | None:
    """Why this certificate cannot deliver for the configured environment and topic, or None."""
    for verdict in (judge_environment(info, environment, host), judge_topic(topic, info)):
        if verdict.level == "error":
            return verdict.message
    return None


def _dns_matches(pattern: str, host: str) -> bool:
    pattern = pattern.lower().rstrip(".")
    if not pattern.startswith("*."):
        return pattern == host
    # RFC 6125: the wildcard stands for exactly one whole leftmost label
    first, dot, rest = host.partition(".")
    return bool(first) and bool(dot) and rest == pattern[2:]


def verify_hostname(cert: x509.Certificate, host: str) -> bool:
    """True if a DNS (leftmost-label wildcard allowed) or IP subjectAltName of the certificate matches host."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return False  # no CN fallback: browsers and Python's ssl dropped it long ago
    assert isinstance(san, x509.SubjectAlternativeName)
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        host = host.lower().rstrip(".")
        return any(_dns_matches(name, host) for name in san.get_values_for_type(x509.DNSName))
    return address in san.get_values_for_type(x509.IPAddress)
