"""The one place that loads certificates and keys (PEM, PKCS#12, .p8), builds TLS contexts and signs JWTs."""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import pkcs12
from OpenSSL import SSL, crypto

from apnsd.config import read_file
from apnsd.errors import CredentialsError
from apnsd.gateway.certinfo import (
    EXPIRY_WARN_DAYS,
    CertificateInfo,
    check_validity,
    inspect_certificate,
    read_der,
    verify_hostname,
)

__all__ = [
    "EXPIRY_WARN_DAYS",
    "CertificateInfo",
    "ClientIdentity",
    "TokenSigner",
    "check_validity",
    "client_context",
    "decode_token",
    "inspect_certificate",
    "load_ca_certificates",
    "load_identity",
    "load_public_key",
    "server_context",
    "verify_hostname",
    "verify_token",
]

_KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.*?-----END \1-----", re.DOTALL)
MIN_TOKEN_REFRESH = 1200.0  # Apple answers TooManyProviderTokenUpdates to a new JWT within 20 minutes


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate with its private key, extra chain certificates and what the certificate says."""

    certificate: x509.Certificate
    private_key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...]
    info: CertificateInfo
    source: str


def _read(path: str, what: str) -> bytes:
    try:
        return read_file(path)
    except FileNotFoundError:
        raise CredentialsError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise CredentialsError(f"cannot read {what} {path}: {exc.strerror}") from None


def _spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem_certificates(data: bytes, path: str) -> list[x509.Certificate]:
    if b"-----BEGIN" not in data:
        hint = " (looks like PKCS#12: set pkcs12 = ... instead)" if _looks_like_pkcs12(data) else ""
        raise CredentialsError(f"{path} is not a PEM file{hint}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CredentialsError(f"{path} contains no PEM certificate") from None


def _pem_private_key(data: bytes, passphrase: str, path: str) -> PrivateKeyTypes:
    block = _KEY_BLOCK.search(data)
    if block is None:
        raise CredentialsError(f"{path} contains no private key")
    encrypted = b"ENCRYPTED" in block.group(0)
    if encrypted and not passphrase:
        raise CredentialsError(f"private key in {path} is encrypted; set passphrase")
    try:
        # a passphrase meant for nothing here (unencrypted key) is simply not used
        return serialization.load_pem_private_key(block.group(0), passphrase.encode() if encrypted else None)
    except ValueError:
        problem = "wrong passphrase for" if encrypted else "cannot parse"
        raise CredentialsError(f"{problem} private key in {path}") from None
    except UnsupportedAlgorithm:
        raise CredentialsError(f"private key in {path} uses an unsupported algorithm") from None


def _looks_like_pkcs12(data: bytes) -> bool:
    """PFX ::= SEQUENCE { version INTEGER (3), authSafe ContentInfo, ... } spanning the whole file."""
    try:
        ((tag, body),) = read_der(data)
        return tag == 0x30 and read_der(body)[0] == (0x02, b"\x03")
    except ValueError:
        return False


def _load_pkcs12(path: str, passphrase: str) -> tuple[PrivateKeyTypes, x509.Certificate, list[x509.Certificate]]:
    data = _read(path, "PKCS#12 file")
    # OpenSSL tells a NULL password from an empty one; exporters use either for "no passphrase"
    attempts = [passphrase.encode()] if passphrase else [None, b""]
    for password in attempts:
        try:
            bundle = pkcs12.load_pkcs12(data, password)
            break
        except ValueError:
            continue
    else:
        if not _looks_like_pkcs12(data):
            raise CredentialsError(f"{path} is not a PKCS#12 file (or it is damaged)")
        if not passphrase:
            raise CredentialsError(f"PKCS#12 file {path} needs a passphrase; set passphrase")
        raise CredentialsError(f"wrong passphrase for PKCS#12 file {path}")
    if bundle.cert is None or bundle.key is None:
        missing = "certificate" if bundle.cert is None else "private key"
        raise CredentialsError(f"PKCS#12 file {path} contains no {missing}")
    return bundle.key, bundle.cert.certificate, [c.certificate for c in bundle.additional_certs]


def load_identity(cert: str = "", key: str = "", pkcs12: str = "", passphrase: str = "") -> ClientIdentity:
    """Load a client identity from PEM (cert+key in one file or two) or PKCS#12; CredentialsError says what is wrong."""
    if pkcs12:
        private_key, leaf, chain = _load_pkcs12(pkcs12, passphrase)
        source = pkcs12
    elif cert:
        cert_data = _read(cert, "certificate file")
        certs = _pem_certificates(cert_data, cert)
        if key:
            private_key = _pem_private_key(_read(key, "key file"), passphrase, key)
        elif _KEY_BLOCK.search(cert_data) is None:
            raise CredentialsError(f"{cert} contains a certificate but no private key; set key = <key file>")
        else:
            private_key = _pem_private_key(cert_data, passphrase, cert)
        # files sometimes list the chain first: the leaf is whichever certificate holds our public key
        wanted = _spki(private_key.public_key())
        leaf = next((c for c in certs if _spki(c.public_key()) == wanted), certs[0])
        chain = [c for c in certs if c is not leaf]
        source = f"{cert} + {key}" if key else cert
    else:
        raise CredentialsError("no client certificate configured (set cert or pkcs12)")
    if _spki(private_key.public_key()) != _spki(leaf.public_key()):
        raise CredentialsError(
            f"private key in {key or pkcs12 or cert} does not match the certificate in {cert or pkcs12}"
        )
    return ClientIdentity(leaf, private_key, tuple(chain), inspect_certificate(leaf), source)


def load_ca_certificates(path: str) -> tuple[x509.Certificate, ...]:
    """The PEM certificates of a CA bundle file."""
    return tuple(_pem_certificates(_read(path, "CA file"), path))


def client_context(
    identity: ClientIdentity | None, ca_file: str = "", alpn: list[bytes] | None = None, tls13: bool = False
) -> SSL.Context:
    """A TLS 1.2+ client context that verifies the gateway (ca_file or the system store) and presents identity.

    Without ALPN (the legacy binary gateway and its feedback service) it stops at TLS 1.2 unless ``tls13``, the
    TLS of that gateway's era (the project's mock serves binary the same way). A binary gateway ends the connection
    on every error response, and resuming a TLS 1.2 session needs no key exchange, where a resumed TLS 1.3
    handshake repeats the (EC)DHE one: ~65 µs of OpenSSL per reconnect against ~250 µs (OpenSSL 4.0, loopback).
    A gateway that refuses TLS 1.2 gets a ``tls13`` context instead (TlsTransport's ``newer_context``)."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    if not alpn and not tls13:
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_verify(SSL.VERIFY_PEER)
    try:
        if ca_file:
            store = ctx.get_cert_store()
            assert store is not None
            for ca in load_ca_certificates(ca_file):
                store.add_cert(crypto.X509.from_cryptography(ca))
        else:
            ctx.set_default_verify_paths()
        if identity is not None:
            ctx.use_certificate(identity.certificate)
            ctx.use_privatekey(identity.private_key)  # type: ignore[arg-type]  # our loaders yield only RSA or EC keys
            for extra in identity.chain:
                ctx.add_extra_chain_cert(extra)
            ctx.check_privatekey()
    except SSL.Error as exc:
        raise CredentialsError(f"OpenSSL refused the credentials: {exc}") from None
    if alpn:
        ctx.set_alpn_protos(alpn)
    return ctx


def server_context(
    cert_file: str, key_file: str, client_ca_file: str | None, alpn: list[bytes] | None = None
) -> SSL.Context:
    """A server context for mock gateways; with client_ca_file it demands a client certificate issued by that CA."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    try:
        ctx.use_certificate_chain_file(cert_file)
        ctx.use_privatekey_file(key_file)
        ctx.check_privatekey()
        if client_ca_file:
            ctx.load_verify_locations(client_ca_file)
            ctx.load_client_ca(client_ca_file.encode())
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
            # Without a session id context OpenSSL aborts (internal error alert) every resumption attempt
            # by a client whose certificate it verified, instead of resuming or doing a full handshake.
            ctx.set_session_id(b"apnsd-mock")
    except SSL.Error as exc:
        raise CredentialsError(f"cannot use server credentials {cert_file} / {key_file}: {exc}") from None
    if alpn:
        preferred = list(alpn)

        def select(_conn: SSL.Connection, offered: list[bytes]) -> bytes | SSL._NoOverlappingProtocols:
            return next((p for p in preferred if p in offered), SSL.NO_OVERLAPPING_PROTOCOLS)

        ctx.set_alpn_select_callback(select)
    return ctx


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _p256(key: object, path: str) -> None:
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) or key.curve.name != "secp256r1":
        raise CredentialsError(f"{path} is not an EC P-256 key (APNs tokens are ES256)")


class TokenSigner:
    """ES256 provider tokens from a .p8 key; one token shared until it is refresh_after seconds old."""

    def __init__(
        self, key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str, refresh_after: float = 3000.0
    ) -> None:
        self.key_id = key_id
        self.team_id = team_id
        self.refresh_after = refresh_after
        self._key = key
        self._token = ""
        self._issued_at = 0
        self._lock = threading.Lock()  # one signer may serve the delivery loops of several apps

    @property
    def identity(self) -> tuple[str, str, float, bytes]:
        """What makes two signers interchangeable: key id, team, refresh interval and the key itself."""
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return (self.key_id, self.team_id, self.refresh_after, der)

    @classmethod
    def from_p8(cls, path: str, key_id: str, team_id: str, refresh_after: float = 3000.0) -> TokenSigner:
        """Load the .p8 (PEM PKCS#8) key Apple issues for token auth."""
        data = _read(path, "token key")
        if _KEY_BLOCK.search(data) is None:
            raise CredentialsError(f"{path} is not a PEM PKCS#8 private key (.p8)")
        key = _pem_private_key(data, "", path)
        _p256(key, path)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(key, key_id, team_id, refresh_after)

    @property
    def issued_at(self) -> int:
        """The iat of the current token, 0 before the first one."""
        return self._issued_at

    def token(self, now: float) -> str:
        """The current token, signing a new one when none exists or it is refresh_after seconds old."""
        if not self._token or now - self._issued_at >= self.refresh_after:
            with self._lock:
                if not self._token or now - self._issued_at >= self.refresh_after:
                    self._sign(now)
        return self._token

    def force_refresh(self, now: float) -> str:
        """After ExpiredProviderToken: a new token, unless the current one is under 20 minutes old."""
        with self._lock:
            if not self._token or now - self._issued_at >= MIN_TOKEN_REFRESH:
                self._sign(now)
        return self._token

    def _sign(self, now: float) -> None:
        self._issued_at = int(now)
        header = _b64(json.dumps({"alg": "ES256", "kid": self.key_id}, separators=(",", ":")).encode())
        claims = _b64(json.dumps({"iss": self.team_id, "iat": self._issued_at}, separators=(",", ":")).encode())
        signing_input = f"{header}.{claims}".encode("ascii")
        r, s = decode_dss_signature(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        self._token = f"{header}.{claims}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def decode_token(jwt: str) -> tuple[dict[str, object], dict[str, object], bytes]:
    """Split a JWT into header, claims and raw signature; ValueError if it is not a well-formed JWS."""
    header_b64, claims_b64, signature_b64 = jwt.split(".")
    header, claims = json.loads(_unb64(header_b64)), json.loads(_unb64(claims_b64))
    if not (isinstance(header, dict) and isinstance(claims, dict)):
        raise ValueError("JWT header and claims must be JSON objects")
    return header, claims, _unb64(signature_b64)


def verify_token(
    jwt: str, public_key: PublicKeyTypes, now: float, max_age: float = 3600, key_id: str | None = None
) -> tuple[bool, str]:
    """Check a provider token as APNs does: (True, "") or (False, "InvalidProviderToken" | "ExpiredProviderToken")."""
    invalid = (False, "InvalidProviderToken")
    try:
        header, claims, signature = decode_token(jwt)
    except ValueError:  # wrong part count, bad base64, bad JSON, bad UTF-8
        return invalid
    iat = claims.get("iat")
    if header.get("alg") != "ES256" or (key_id is not None and header.get("kid") != key_id):
        return invalid
    if len(signature) != 64 or not isinstance(iat, int) or not isinstance(public_key, ec.EllipticCurvePublicKey):
        return invalid
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public_key.verify(der, jwt.rpartition(".")[0].encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return invalid
    if iat > now:  # issued in the future: a clock ahead of APNs' makes tokens APNs refuses
        return invalid
    if now - iat > max_age:
        return (False, "ExpiredProviderToken")
    return (True, "")


def load_public_key(path: str) -> PublicKeyTypes:
    """A PEM public key, or the public half of a PEM private key such as a .p8."""
    data = _read(path, "key file")
    if _KEY_BLOCK.search(data):
        return _pem_private_key(data, "", path).public_key()
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise CredentialsError(f"{path} contains no PEM public or private key") from None


@dataclass
class AppCredentials:
    """What one app authenticates with, loaded once and shared by its sessions and the feedback poller:
    a client certificate, a token signer, or neither (mock gateways without client auth)."""

    identity: ClientIdentity | None
    signer: TokenSigner | None
