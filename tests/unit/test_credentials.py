"""Loading client identities and .p8 keys, inspecting APNs certificates, host names and provider tokens."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from apnsd.errors import ConfigError, CredentialsError
from apnsd.gateway.certinfo import parse_topics
from apnsd.gateway.credentials import (
    TokenSigner,
    check_validity,
    client_context,
    inspect_certificate,
    load_identity,
    load_public_key,
    server_context,
    verify_hostname,
    verify_token,
)
from apnsd.testing.devpki import DevPki, make_dev_pki, topics_extension

TOPICS = (
    ("com.example.app", "app"),
    ("com.example.app.voip", "voip"),
    ("com.example.app.complication", "complication"),
)


def load_cert(path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def encrypted_key_file(pki: DevPki, tmp_path: Path, passphrase: bytes) -> str:
    key = serialization.load_pem_private_key(Path(pki.client_key).read_bytes(), None)
    path = tmp_path / "encrypted-key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    )
    return str(path)


def credentials_error(**kwargs: str) -> str:
    with pytest.raises(CredentialsError) as info:
        load_identity(**kwargs)
    return str(info.value)


def b64json(part: str) -> dict[str, object]:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_pem_with_cert_and_key_in_one_file(pki: DevPki) -> None:
    """A single PEM holding certificate and key loads, and its subject facts come out."""
    identity = load_identity(cert=pki.client_pem)
    assert ("com.example.app", "TEAM123456", TOPICS) == (
        identity.info.bundle_id,
        identity.info.team_id,
        identity.info.topics,
    )
    assert pki.client_pem == identity.source


def test_pem_cert_and_key_in_two_files(pki: DevPki) -> None:
    """Certificate and key in separate files load into the same identity as the combined file."""
    identity = load_identity(cert=pki.client_cert, key=pki.client_key)
    assert load_identity(cert=pki.client_pem).certificate == identity.certificate


def test_pkcs12_with_passphrase_loads_key_cert_and_chain(pki: DevPki) -> None:
    """A PKCS#12 bundle opens with its passphrase; the CA inside becomes the chain."""
    identity = load_identity(pkcs12=pki.client_p12, passphrase=pki.p12_passphrase)
    assert (load_cert(pki.client_cert), (load_cert(pki.ca_cert),)) == (identity.certificate, identity.chain)


def test_rsa_identity_loads(pki: DevPki) -> None:
    """RSA client certificates work as well as EC ones."""
    assert "com.example.app" == load_identity(cert=pki.rsa_pem).info.bundle_id


def test_leaf_is_found_when_chain_comes_first(pki: DevPki, tmp_path: Path) -> None:
    """A PEM that lists the CA before the client certificate still picks the client certificate as leaf."""
    path = tmp_path / "chain-first.pem"
    path.write_bytes(Path(pki.ca_cert).read_bytes() + Path(pki.client_pem).read_bytes())
    identity = load_identity(cert=str(path))
    assert (load_cert(pki.client_cert), (load_cert(pki.ca_cert),)) == (identity.certificate, identity.chain)


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A certificate path that does not exist is reported with the path."""
    assert f"certificate file {tmp_path}/nope.pem does not exist" == credentials_error(cert=f"{tmp_path}/nope.pem")


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    """A path that cannot be read (here a directory) is reported with the OS reason."""
    assert f"cannot read certificate file {tmp_path}: Is a directory" == credentials_error(cert=str(tmp_path))


def test_pem_without_certificate(pki: DevPki) -> None:
    """A PEM holding only a key, given as the certificate, says there is no certificate."""
    assert f"{pki.client_key} contains no PEM certificate" == credentials_error(cert=pki.client_key)


def test_pkcs12_given_as_pem_gets_a_hint(pki: DevPki) -> None:
    """A PKCS#12 file configured as cert is recognised and the pkcs12 key suggested."""
    assert "set pkcs12 = ... instead" in credentials_error(cert=pki.client_p12)


def test_pem_without_private_key(pki: DevPki) -> None:
    """A PEM with only a certificate asks for the key setting."""
    expected = f"{pki.cert_only_pem} contains a certificate but no private key; set key = <key file>"
    assert expected == credentials_error(cert=pki.cert_only_pem)


def test_key_file_without_key(pki: DevPki) -> None:
    """A key file that holds no private key is named."""
    assert f"{pki.client_cert} contains no private key" == credentials_error(cert=pki.client_cert, key=pki.client_cert)


def test_encrypted_key_without_passphrase(pki: DevPki, tmp_path: Path) -> None:
    """An encrypted PEM key without a configured passphrase asks for one."""
    key = encrypted_key_file(pki, tmp_path, b"pw")
    assert f"private key in {key} is encrypted; set passphrase" == credentials_error(cert=pki.client_cert, key=key)


def test_encrypted_key_with_wrong_passphrase(pki: DevPki, tmp_path: Path) -> None:
    """An encrypted PEM key with the wrong passphrase says so."""
    key = encrypted_key_file(pki, tmp_path, b"pw")
    expected = f"wrong passphrase for private key in {key}"
    assert expected == credentials_error(cert=pki.client_cert, key=key, passphrase="nope")


def test_encrypted_key_with_right_passphrase(pki: DevPki, tmp_path: Path) -> None:
    """An encrypted PEM key opens with its passphrase."""
    key = encrypted_key_file(pki, tmp_path, b"pw")
    assert "com.example.app" == load_identity(cert=pki.client_cert, key=key, passphrase="pw").info.bundle_id


def test_wrong_pkcs12_passphrase(pki: DevPki) -> None:
    """A wrong PKCS#12 passphrase is reported as such, naming the file."""
    assert f"wrong passphrase for PKCS#12 file {pki.client_p12}" == credentials_error(
        pkcs12=pki.client_p12, passphrase="x"
    )


def test_pkcs12_without_passphrase(pki: DevPki) -> None:
    """A protected PKCS#12 with no passphrase configured asks for one."""
    expected = f"PKCS#12 file {pki.client_p12} needs a passphrase; set passphrase"
    assert expected == credentials_error(pkcs12=pki.client_p12)


def test_pkcs12_that_does_not_parse(pki: DevPki) -> None:
    """A file that is not PKCS#12 at all is not blamed on the passphrase."""
    expected = f"{pki.client_pem} is not a PKCS#12 file (or it is damaged)"
    assert expected == credentials_error(pkcs12=pki.client_pem, passphrase="secret")


def test_key_that_does_not_match(pki: DevPki) -> None:
    """A private key from another pair is caught by comparing public keys."""
    expected = f"private key in {pki.mismatched_key} does not match the certificate in {pki.mismatched_cert}"
    assert expected == credentials_error(cert=pki.mismatched_cert, key=pki.mismatched_key)


def test_inspect_universal_certificate(pki: DevPki) -> None:
    """A universal certificate allows both environments and lists its topics and subject."""
    info = inspect_certificate(load_cert(pki.client_cert))
    assert frozenset({"sandbox", "production"}) == info.environments
    assert ("com.example.app", "com.example.app.voip", "com.example.app.complication") == info.topic_names()
    assert "Apple Push Services: com.example.app" == info.common_name
    assert "UID=com.example.app" in info.subject


def test_inspect_sandbox_certificate_without_topics_extension(pki: DevPki) -> None:
    """A sandbox-only certificate without a topics list gets its bundle id as the one app topic."""
    info = load_identity(cert=pki.sandbox_pem).info
    assert (frozenset({"sandbox"}), (("com.example.app", "app"),)) == (info.environments, info.topics)


def test_inspect_plain_certificate(pki: DevPki) -> None:
    """A certificate with no Apple extensions has no environments, bundle id or topics."""
    info = inspect_certificate(load_cert(pki.server_cert))
    assert (frozenset(), None, None, ()) == (info.environments, info.bundle_id, info.team_id, info.topics)


def test_topics_extension_round_trip_with_long_topic() -> None:
    """The topics DER decodes back to what was encoded, long-form lengths included."""
    topics = (("com.example." + "x" * 200, "app"), ("com.example.app.voip", "voip"))
    assert topics == parse_topics(topics_extension(topics))


def test_garbled_topics_extension_is_rejected() -> None:
    """Truncated topics DER raises ValueError rather than yielding half a list."""
    with pytest.raises(ValueError):
        parse_topics(topics_extension(TOPICS)[:-3])


def test_expired_certificate(pki: DevPki) -> None:
    """check_validity names the file and the expiry date of an expired certificate."""
    info = load_identity(cert=pki.expired_pem).info
    with pytest.raises(CredentialsError, match=f"certificate {pki.expired_pem} expired on {info.not_after:%Y-%m-%d}"):
        check_validity(info, datetime.now(UTC), pki.expired_pem)


def test_not_yet_valid_certificate(pki: DevPki) -> None:
    """check_validity rejects a certificate before its not_before."""
    info = load_identity(cert=pki.client_pem).info
    with pytest.raises(CredentialsError, match="is not valid before"):
        check_validity(info, info.not_before - timedelta(seconds=1), "client.pem")


def test_days_left(pki: DevPki) -> None:
    """days_left counts fractional days to not_after."""
    info = load_identity(cert=pki.expiring_pem).info
    assert 2.5 == info.days_left(info.not_after - timedelta(days=2, hours=12))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.2", False),
        ("example.com", False),
        ("local", False),
    ],
)
def test_verify_hostname_on_gateway_certificate(pki: DevPki, host: str, expected: bool) -> None:
    """IP and DNS subjectAltNames of the dev gateway certificate match exactly."""
    assert expected == verify_hostname(load_cert(pki.server_cert), host)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.push.example.com", True),
        ("push.example.com", False),
        ("a.api.push.example.com", False),
        ("apipush.example.com", False),
    ],
)
def test_verify_hostname_wildcard(host: str, expected: bool) -> None:
    """A wildcard stands for exactly one leftmost label."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wildcard")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.push.example.com")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    assert expected == verify_hostname(cert, host)


def test_verify_hostname_without_san(pki: DevPki) -> None:
    """A certificate without subjectAltName matches nothing (no CN fallback)."""
    assert False is verify_hostname(load_cert(pki.client_cert), "com.example.app")


def test_client_context_with_missing_ca_file(pki: DevPki, tmp_path: Path) -> None:
    """A ca_file that does not exist fails as a credentials problem naming it."""
    with pytest.raises(CredentialsError, match=f"CA file {tmp_path}/ca.pem does not exist"):
        client_context(load_identity(cert=pki.client_pem), f"{tmp_path}/ca.pem", [b"h2"])


def test_server_context_with_missing_key(pki: DevPki, tmp_path: Path) -> None:
    """A mock gateway with a missing key file fails as a credentials problem."""
    with pytest.raises(CredentialsError, match="cannot use server credentials"):
        server_context(pki.server_cert, f"{tmp_path}/none.pem", None)


def test_token_header_claims_and_signature(pki: DevPki) -> None:
    """A token is header.claims.signature with ES256/kid, iss/iat and a raw 64-byte r||s that verifies."""
    jwt = TokenSigner.from_p8(pki.p8_key, pki.key_id, pki.team_id).token(1_700_000_000.7)
    header, claims, signature = jwt.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    assert ({"alg": "ES256", "kid": "ABC123DEFG"}, {"iss": "TEAM123456", "iat": 1_700_000_000}) == (
        b64json(header),
        b64json(claims),
    )
    assert (64, False) == (len(raw), "=" in jwt)
    public = load_public_key(pki.p8_public)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))


def test_token_is_cached_until_refresh_after(pki: DevPki) -> None:
    """The same token is handed out until it is refresh_after seconds old, then a new one is signed."""
    signer = TokenSigner.from_p8(pki.p8_key, pki.key_id, pki.team_id, refresh_after=3000)
    first = signer.token(10_000.0)
    assert (first, 10_000) == (signer.token(12_999.0), signer.issued_at)
    second = signer.token(13_000.0)
    assert (True, 13_000) == (second != first, signer.issued_at)


def test_force_refresh_respects_twenty_minutes(pki: DevPki) -> None:
    """force_refresh keeps a token younger than 20 minutes and replaces an older one."""
    signer = TokenSigner.from_p8(pki.p8_key, pki.key_id, pki.team_id)
    first = signer.token(10_000.0)
    assert first == signer.force_refresh(11_199.0)
    second = signer.force_refresh(11_200.0)
    assert (True, 11_200) == (second != first, signer.issued_at)


def test_p8_errors(pki: DevPki, tmp_path: Path) -> None:
    """A missing file, a non-PEM file and a non-P-256 key each get their own message."""
    (tmp_path / "text.p8").write_text("hello")
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "p384.p8").write_bytes(p384)
    cases = {
        f"{tmp_path}/none.p8": "does not exist",
        f"{tmp_path}/text.p8": "is not a PEM PKCS#8 private key",
        f"{tmp_path}/p384.p8": "is not an EC P-256 key",
        pki.rsa_pem: "is not an EC P-256 key",
    }
    for path, message in cases.items():
        with pytest.raises(CredentialsError, match=message):
            TokenSigner.from_p8(path, pki.key_id, pki.team_id)


def test_verify_token_reasons(pki: DevPki) -> None:
    """verify_token answers like APNs: fine, expired after max_age, or invalid for anything malformed or forged."""
    public = load_public_key(pki.p8_key)
    jwt = TokenSigner.from_p8(pki.p8_key, pki.key_id, pki.team_id).token(1000.0)
    header, claims, signature = jwt.split(".")
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode() + f".{claims}.{signature}"
    other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert (True, "") == verify_token(jwt, public, 4600.0)
    assert (False, "ExpiredProviderToken") == verify_token(jwt, public, 4601.0)
    invalid = (False, "InvalidProviderToken")
    assert invalid == verify_token(f"{header}.{claims}.{signature[:-4]}AAAA", public, 1000.0)
    assert invalid == verify_token(unsigned, public, 1000.0)
    assert invalid == verify_token("not-a-jwt", public, 1000.0)
    assert invalid == verify_token(jwt, other_key, 1000.0)
    assert invalid == verify_token(jwt, public, 1000.0, key_id="OTHERKEYID")


def test_verify_token_refuses_a_token_issued_in_the_future(pki: DevPki) -> None:
    """A JWT whose iat lies ahead of the verifier's clock is InvalidProviderToken, as APNs treats it."""
    jwt = TokenSigner.from_p8(pki.p8_key, pki.key_id, pki.team_id).token(1000.0)

    assert [(False, "InvalidProviderToken"), (True, "")] == [
        verify_token(jwt, load_public_key(pki.p8_key), 999.0),
        verify_token(jwt, load_public_key(pki.p8_key), 1000.0),
    ]


def test_public_key_from_p8_equals_exported_public_key(pki: DevPki) -> None:
    """load_public_key derives the same key from the .p8 as from the exported public PEM."""
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert load_public_key(pki.p8_public).public_bytes(*der) == load_public_key(pki.p8_key).public_bytes(*der)


def test_dev_pki_is_reused(tmp_path: Path) -> None:
    """A second make_dev_pki over a complete, valid directory keeps the existing files."""
    first = make_dev_pki(str(tmp_path))
    ca = Path(first.ca_cert).read_bytes()
    assert (first, ca) == (make_dev_pki(str(tmp_path)), Path(first.ca_cert).read_bytes())


def test_dev_pki_regenerated_when_ca_expired(tmp_path: Path) -> None:
    """An expired CA makes make_dev_pki start over with a valid one."""
    pki = make_dev_pki(str(tmp_path))
    Path(pki.ca_cert).write_bytes(Path(pki.expired_pem).read_bytes())
    make_dev_pki(str(tmp_path))
    assert load_cert(pki.ca_cert).not_valid_after_utc > datetime.now(UTC) + timedelta(days=365)


def test_dev_pki_regenerated_for_other_hosts(tmp_path: Path) -> None:
    """Asking for host names the gateway certificate lacks regenerates it."""
    make_dev_pki(str(tmp_path))
    pki = make_dev_pki(str(tmp_path), hosts=("127.0.0.1", "gateway.test"))
    assert (True, False) == (
        verify_hostname(load_cert(pki.server_cert), "gateway.test"),
        verify_hostname(load_cert(pki.server_cert), "::1"),
    )


def test_dev_pki_keys_are_private(pki: DevPki) -> None:
    """Files holding private keys are readable by the owner only."""
    modes = {
        Path(p).stat().st_mode & 0o777 for p in (pki.ca_key, pki.client_pem, pki.client_key, pki.client_p12, pki.p8_key)
    }
    assert {0o600} == modes


def test_apps_with_the_same_p8_key_share_one_signer_and_a_new_key_gets_its_own(pki: DevPki, tmp_path: Path) -> None:
    """Loading the same .p8 for two apps (or again on reload) yields one signer, so the key mints one token."""
    from apnsd.config import AppConfig
    from apnsd.gateway.apps import load_credentials

    other = tmp_path / "other.p8"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    app = AppConfig(token_key=pki.p8_key, key_id=pki.key_id, team_id=pki.team_id, topic="com.example.app")
    first, second = load_credentials("a", app), load_credentials("b", app)
    third = load_credentials("c", AppConfig(token_key=str(other), key_id=pki.key_id, team_id=pki.team_id))

    assert (True, False) == (first.signer is second.signer, first.signer is third.signer)


def test_dev_pki_in_a_loose_directory_is_tightened_and_issued_anew(tmp_path: Path) -> None:
    """A world-writable dev-PKI directory may hold planted files: it is made 0700 and its CA issued again."""
    pki = make_dev_pki(str(tmp_path / "pki"))
    ca = Path(pki.ca_cert).read_bytes()
    (tmp_path / "pki").chmod(0o777)

    make_dev_pki(str(tmp_path / "pki"))

    assert (0o700, False) == (stat.S_IMODE((tmp_path / "pki").stat().st_mode), ca == Path(pki.ca_cert).read_bytes())


def test_dev_pki_refuses_a_symlink_in_place_of_its_directory(tmp_path: Path) -> None:
    """A symlink where the dev-PKI directory should be is refused rather than followed."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "pki").symlink_to(tmp_path / "elsewhere")

    with pytest.raises(ConfigError) as info:
        make_dev_pki(str(tmp_path / "pki"))

    assert "pki_dir" == info.value.key


def test_a_device_named_as_a_credential_file_is_refused_at_once() -> None:
    """cert = "/dev/zero" is a clear CredentialsError, not a read that never ends (and not a MemoryError)."""
    expected = "cannot read certificate file /dev/zero: larger than 16 MiB"

    assert expected == credentials_error(cert="/dev/zero")
