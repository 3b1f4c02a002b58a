"""A throwaway PKI made at run time: test CA, gateway certificate, APNs-like client identities, a .p8 key."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from apnsd.gateway.certinfo import PRODUCTION_OID, SANDBOX_OID, TOPICS_OID, verify_hostname
from apnsd.worker.state import ensure_private_dir

BUNDLE_ID = "com.example.app"
TEAM_ID = "TEAM123456"
KEY_ID = "ABC123DEFG"
P12_PASSPHRASE = "secret"
TOPICS = ((BUNDLE_ID, "app"), (f"{BUNDLE_ID}.voip", "voip"), (f"{BUNDLE_ID}.complication", "complication"))
_DER_NULL = b"\x05\x00"  # Apple's environment extensions carry an ASN.1 NULL

_FILES = {
    "ca_cert": "ca.pem",
    "ca_key": "ca-key.pem",
    "server_cert": "server.pem",
    "server_key": "server-key.pem",
    "client_pem": "client.pem",
    "client_cert": "client-cert.pem",
    "client_key": "client-key.pem",
    "client_p12": "client.p12",
    "sandbox_pem": "sandbox.pem",
    "expired_pem": "expired.pem",
    "expiring_pem": "expiring.pem",
    "mismatched_cert": "mismatched-cert.pem",
    "mismatched_key": "mismatched-key.pem",
    "cert_only_pem": "cert-only.pem",
    "untrusted_pem": "untrusted.pem",
    "rsa_pem": "rsa.pem",
    "p8_key": f"AuthKey_{KEY_ID}.p8",
    "p8_public": f"AuthKey_{KEY_ID}.pub.pem",
}


@dataclass(frozen=True)
class DevPki:
    """Paths of every file of a development PKI, plus the passphrase and token ids that go with them."""

    dir: str
    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    client_pem: str
    client_cert: str
    client_key: str
    client_p12: str
    sandbox_pem: str
    expired_pem: str
    expiring_pem: str
    mismatched_cert: str
    mismatched_key: str
    cert_only_pem: str
    untrusted_pem: str
    rsa_pem: str
    p8_key: str
    p8_public: str
    p12_passphrase: str = P12_PASSPHRASE
    key_id: str = KEY_ID
    team_id: str = TEAM_ID


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + content


def topics_extension(topics: tuple[tuple[str, str], ...]) -> bytes:
    """DER for Apple's .6.3.6: SEQUENCE of UTF8String topic, each followed by SEQUENCE{UTF8String kind}."""
    body = b"".join(_der(0x0C, t.encode()) + _der(0x30, _der(0x0C, k.encode())) for t, k in topics)
    return _der(0x30, body)


def _name(common_name: str, uid: str = "", ou: str = "") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.USER_ID, uid)] if uid else []
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    if ou:
        attrs += [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Inc."),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    return x509.Name(attrs)


def _issue(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    start: datetime,
    end: datetime,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    """Sign a certificate for public_key with signer, whose certificate's subject is issuer."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .issuer_name(issuer)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def _ca(common_name: str, now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # keyCertSign, cRLSign
    name = _name(common_name)
    cert = _issue(
        name,
        key.public_key(),
        name,
        key,
        now - timedelta(days=1),
        now + timedelta(days=3650),
        [(x509.BasicConstraints(ca=True, path_length=0), True), (usage, True)],
    )
    return cert, key


def _apple_client(
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    start: datetime,
    end: datetime,
    environments: tuple[x509.ObjectIdentifier, ...] = (SANDBOX_OID, PRODUCTION_OID),
    topics: tuple[tuple[str, str], ...] = TOPICS,
    prefix: str = "Apple Push Services",
) -> x509.Certificate:
    """A client certificate shaped like Apple's: UID/CN/OU subject, environment OIDs, topics list."""
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    ]
    exts += [(x509.UnrecognizedExtension(oid, _DER_NULL), False) for oid in environments]
    if topics:
        exts.append((x509.UnrecognizedExtension(TOPICS_OID, topics_extension(topics)), False))
    subject = _name(f"{prefix}: {BUNDLE_ID}", uid=BUNDLE_ID, ou=TEAM_ID)
    return _issue(subject, key.public_key(), issuer[0].subject, issuer[1], start, end, exts)


def _pem(*items: x509.Certificate | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += item.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
    return out


def _write(path: str, data: bytes, secret: bool) -> None:
    """Write a fresh temporary name (never through a planted symlink), then rename over ``path``."""
    tmp = f"{path}.tmp{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # never leave a half-written file that would look complete


def _paths(directory: str) -> DevPki:
    return DevPki(dir=directory, **{field: os.path.join(directory, name) for field, name in _FILES.items()})


def _reusable(pki: DevPki, hosts: tuple[str, ...], now: datetime) -> bool:
    """True when every file exists, the CA is valid, the 'expiring' cert has not expired and the server fits hosts."""
    if not all(os.path.isfile(getattr(pki, f.name)) for f in fields(pki) if f.name in _FILES):
        return False
    try:
        ca = x509.load_pem_x509_certificate(Path(pki.ca_cert).read_bytes())
        expiring = x509.load_pem_x509_certificate(Path(pki.expiring_pem).read_bytes())
        server = x509.load_pem_x509_certificate(Path(pki.server_cert).read_bytes())
    except (OSError, ValueError):
        return False
    return (
        ca.not_valid_after_utc > now
        and expiring.not_valid_after_utc > now
        and all(verify_hostname(server, h) for h in hosts)
    )


def make_dev_pki(directory: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")) -> DevPki:
    """Create (or reuse, when complete and still valid) a development PKI in directory."""
    now = datetime.now(UTC).replace(microsecond=0)
    pki = _paths(directory)
    # A directory others could write to may hold a planted CA or key: tighten it and issue everything anew.
    loose = ensure_private_dir(Path(directory), "pki_dir")
    if not loose and _reusable(pki, hosts, now):
        return pki
    Path(pki.ca_cert).unlink(missing_ok=True)  # the set counts as incomplete until rewritten
    ca = _ca("apnsd dev CA", now)
    other_ca = _ca("apnsd untrusted CA", now)
    start, year = now - timedelta(hours=1), now + timedelta(days=365)

    server_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server = _issue(
        _name("apnsd dev gateway"),
        server_key.public_key(),
        ca[0].subject,
        ca[1],
        start,
        now + timedelta(days=825),
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName(sans), False),
        ],
    )

    def fresh() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    client_key, rsa_key = fresh(), rsa.generate_private_key(65537, 2048)
    client = _apple_client(ca, client_key, start, year)
    sandbox_key, expired_key, expiring_key, untrusted_key = fresh(), fresh(), fresh(), fresh()
    sandbox = _apple_client(
        ca,
        sandbox_key,
        start,
        year,
        environments=(SANDBOX_OID,),
        topics=(),
        prefix="Apple Development IOS Push Services",
    )
    expired = _apple_client(ca, expired_key, now - timedelta(days=400), now - timedelta(days=35))
    expiring = _apple_client(ca, expiring_key, now - timedelta(days=355), now + timedelta(days=10))
    untrusted = _apple_client(other_ca, untrusted_key, start, year)
    rsa_client = _apple_client(ca, rsa_key, start, year)
    token_key = fresh()
    p12 = pkcs12.serialize_key_and_certificates(
        BUNDLE_ID.encode(), client_key, client, [ca[0]], serialization.BestAvailableEncryption(P12_PASSPHRASE.encode())
    )
    public = token_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    files: list[tuple[str, bytes, bool]] = [
        (pki.ca_key, _pem(ca[1]), True),
        (pki.server_cert, _pem(server), False),
        (pki.server_key, _pem(server_key), True),
        (pki.client_pem, _pem(client, client_key), True),
        (pki.client_cert, _pem(client), False),
        (pki.client_key, _pem(client_key), True),
        (pki.client_p12, p12, True),
        (pki.sandbox_pem, _pem(sandbox, sandbox_key), True),
        (pki.expired_pem, _pem(expired, expired_key), True),
        (pki.expiring_pem, _pem(expiring, expiring_key), True),
        (pki.mismatched_cert, _pem(client), False),
        (pki.mismatched_key, _pem(fresh()), True),
        (pki.cert_only_pem, _pem(client), False),
        (pki.untrusted_pem, _pem(untrusted, untrusted_key), True),
        (pki.rsa_pem, _pem(rsa_client, rsa_key), True),
        (pki.p8_key, _pem(token_key), True),
        (pki.p8_public, public, False),
        (pki.ca_cert, _pem(ca[0]), False),  # last: its presence marks the set as complete
    ]
    for path, data, secret in files:
        _write(path, data, secret)
    return pki
