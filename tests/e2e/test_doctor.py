"""`apnsd check`: per-app credential reports and the live gateway probe against real local TLS servers."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable

from apnsd.cli.check import run_check
from apnsd.config import load_config
from apnsd.testing.devpki import DevPki
from tests.support.pki import OneShotServer

ENV = "APNSD_APP_DEFAULT_"


def check(connect: bool = False, **settings: str | int) -> tuple[int, str]:
    """Run the check over the default app configured from APNSD_APP_DEFAULT_* settings; return (exit code, report)."""
    config = load_config(None, env={ENV + key.upper(): str(value) for key, value in settings.items()})
    out = io.StringIO()
    code = run_check(config, connect, out)
    return code, out.getvalue()


def problems(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith(("ERROR", "WARN"))]


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return listener.getsockname()[1]


def test_good_certificate(pki: DevPki) -> None:
    """A valid universal certificate with its key passes with no errors or warnings."""
    code, report = check(cert=pki.client_pem, topic="com.example.app")
    assert (0, []) == (code, problems(report))
    assert (
        "  topics        com.example.app (app), com.example.app.voip (voip), "
        "com.example.app.complication (complication)" in report
    )


def test_report_shows_gateway_and_subject(pki: DevPki) -> None:
    """The report names protocol, environment, gateway, bundle id and team id."""
    _, report = check(cert=pki.client_pem, environment="sandbox")
    assert report.startswith("app default: http2, sandbox, gateway api.sandbox.push.apple.com:443\n")
    assert ("  bundle id     com.example.app", "  team id       TEAM123456") == tuple(report.splitlines()[3:5])


def test_expired_certificate(pki: DevPki) -> None:
    """An expired certificate is an error."""
    code, report = check(cert=pki.expired_pem)
    assert 1 == code
    assert problems(report)[0].startswith(f"ERROR  certificate {pki.expired_pem} expired on ")


def test_certificate_expiring_soon_is_a_warning(pki: DevPki) -> None:
    """A certificate with 10 days left warns but does not fail."""
    code, report = check(cert=pki.expiring_pem)
    assert 0 == code
    assert problems(report)[0].startswith("WARN   certificate expires in 10 days")


def test_sandbox_certificate_against_production(pki: DevPki) -> None:
    """A sandbox-only certificate configured for production is an error."""
    code, report = check(cert=pki.sandbox_pem, environment="production")
    assert 1 == code
    assert problems(report)[0].startswith(
        "ERROR  sandbox-only certificate used against production gateway api.push.apple.com"
    )


def test_sandbox_certificate_against_sandbox(pki: DevPki) -> None:
    """A sandbox-only certificate configured for sandbox passes."""
    code, report = check(cert=pki.sandbox_pem, environment="sandbox")
    assert (0, []) == (code, problems(report))


def test_mismatched_key(pki: DevPki) -> None:
    """A key from another pair is an error naming both files."""
    code, report = check(cert=pki.mismatched_cert, key=pki.mismatched_key)
    assert (
        1,
        [f"ERROR  private key in {pki.mismatched_key} does not match the certificate in {pki.mismatched_cert}"],
    ) == (code, problems(report))


def test_pkcs12_with_right_passphrase(pki: DevPki) -> None:
    """A PKCS#12 bundle with its passphrase passes and says the passphrase worked."""
    code, report = check(pkcs12=pki.client_p12, passphrase=pki.p12_passphrase)
    assert (0, True) == (code, f"ok     passphrase opens PKCS#12 file {pki.client_p12}" in report)


def test_pkcs12_with_wrong_passphrase(pki: DevPki) -> None:
    """A wrong PKCS#12 passphrase is an error."""
    code, report = check(pkcs12=pki.client_p12, passphrase="wrong")
    assert (1, [f"ERROR  wrong passphrase for PKCS#12 file {pki.client_p12}"]) == (code, problems(report))


def test_pem_without_key(pki: DevPki) -> None:
    """A PEM with a certificate but no key is an error that names the key setting."""
    code, report = check(cert=pki.cert_only_pem)
    assert (1, [f"ERROR  {pki.cert_only_pem} contains a certificate but no private key; set key = <key file>"]) == (
        code,
        problems(report),
    )


def test_unknown_topic(pki: DevPki) -> None:
    """A configured topic the certificate does not list is an error listing the allowed ones."""
    code, report = check(cert=pki.client_pem, topic="com.other.app")
    expected = (
        "ERROR  topic 'com.other.app' is not one of the certificate's topics: "
        "com.example.app, com.example.app.voip, com.example.app.complication"
    )
    assert (1, [expected]) == (code, problems(report))


def test_wildcard_topic(pki: DevPki) -> None:
    """A wildcard topic is an error."""
    code, report = check(cert=pki.client_pem, topic="com.example.*")
    assert (1, True) == (code, problems(report)[0].startswith("ERROR  topic 'com.example.*' is a wildcard"))


def test_voip_topic_from_certificate(pki: DevPki) -> None:
    """A topic from the certificate's topics extension other than the bundle id is accepted."""
    code, report = check(cert=pki.client_pem, topic="com.example.app.voip")
    assert (0, []) == (code, problems(report))


def test_token_auth(pki: DevPki) -> None:
    """A P-256 .p8 key with key id and team id signs a verifiable token; its header is printed."""
    code, report = check(token_key=pki.p8_key, key_id=pki.key_id, team_id=pki.team_id, topic="com.example.app")
    assert (0, []) == (code, problems(report))
    assert "  JWT header    {'alg': 'ES256', 'kid': 'ABC123DEFG'}" in report.splitlines()


def test_token_auth_with_rsa_key(pki: DevPki) -> None:
    """A .p8 that is not an EC P-256 key is an error."""
    code, report = check(token_key=pki.rsa_pem, key_id=pki.key_id, team_id=pki.team_id, topic="com.example.app")
    assert (1, [f"ERROR  {pki.rsa_pem} is not an EC P-256 key (APNs tokens are ES256)"]) == (code, problems(report))


def test_missing_ca_file(pki: DevPki) -> None:
    """A ca_file that does not exist is an error even without --connect."""
    code, report = check(cert=pki.client_pem, ca_file=pki.dir + "/nope.pem")
    assert (1, [f"ERROR  CA file {pki.dir}/nope.pem does not exist"]) == (code, problems(report))


def test_connect_http2(pki: DevPki, tls_server: Callable[..., OneShotServer]) -> None:
    """A live check completes TCP, TLS with the client certificate, ALPN h2 and sees the gateway's SETTINGS."""
    server = tls_server(client_ca=pki.ca_cert, alpn=[b"h2"], h2=True)
    code, report = check(True, cert=pki.client_pem, host="127.0.0.1", port=server.port, ca_file=pki.ca_cert)
    assert (0, []) == (code, problems(report))
    assert "ok     ALPN selected h2" in report and "HTTP/2 SETTINGS received" in report
    assert [
        "C=US,O=Example Inc.,OU=TEAM123456,CN=Apple Push Services: com.example.app,UID=com.example.app"
    ] == server.client_certs


def test_connect_binary(pki: DevPki, tls_server: Callable[..., OneShotServer]) -> None:
    """A binary gateway that stays silent after the handshake counts as having accepted the certificate."""
    server = tls_server(client_ca=pki.ca_cert)
    code, report = check(
        True, cert=pki.client_pem, protocol="binary", host="localhost", port=server.port, ca_file=pki.ca_cert
    )
    assert (0, []) == (code, problems(report))
    assert "ok     server certificate is trusted and names localhost" in report


def test_connect_token_auth(pki: DevPki, tls_server: Callable[..., OneShotServer]) -> None:
    """Token auth connects without a client certificate."""
    server = tls_server(alpn=[b"h2"], h2=True)
    code, report = check(
        True,
        token_key=pki.p8_key,
        key_id=pki.key_id,
        team_id=pki.team_id,
        topic="com.example.app",
        host="127.0.0.1",
        port=server.port,
        ca_file=pki.ca_cert,
    )
    assert (0, [], [""]) == (code, problems(report), server.client_certs)


def test_connect_to_closed_port(pki: DevPki) -> None:
    """A refused connection suggests the outgoing port may be blocked."""
    port = closed_port()
    code, report = check(True, cert=pki.client_pem, host="127.0.0.1", port=port, ca_file=pki.ca_cert)
    assert (1, [f"ERROR  cannot reach 127.0.0.1:{port}: Connection refused — outgoing port {port} blocked?"]) == (
        code,
        problems(report),
    )


def test_gateway_rejects_certificate_from_other_ca(pki: DevPki, tls_server: Callable[..., OneShotServer]) -> None:
    """A gateway that does not trust the client certificate's issuer is reported as rejecting the certificate."""
    server = tls_server(client_ca=pki.ca_cert, alpn=[b"h2"], h2=True)
    code, report = check(True, cert=pki.untrusted_pem, host="127.0.0.1", port=server.port, ca_file=pki.ca_cert)
    assert 1 == code
    assert problems(report)[0].startswith("ERROR  gateway rejected the certificate (")


def test_gateway_without_alpn_h2(pki: DevPki, tls_server: Callable[..., OneShotServer]) -> None:
    """An HTTP/2 app whose gateway does not select ALPN h2 fails."""
    server = tls_server(client_ca=pki.ca_cert)
    code, report = check(True, cert=pki.client_pem, host="127.0.0.1", port=server.port, ca_file=pki.ca_cert)
    assert (1, ["ERROR  gateway did not select ALPN h2 (selected: nothing); not an HTTP/2 gateway?"]) == (
        code,
        problems(report),
    )


def test_untrusted_server_certificate(pki: DevPki, tls_server: Callable[..., OneShotServer]) -> None:
    """Without the dev CA in ca_file the system store does not trust the gateway, and the report says why."""
    server = tls_server(alpn=[b"h2"], h2=True)
    code, report = check(True, cert=pki.client_pem, host="127.0.0.1", port=server.port)
    assert 1 == code
    assert problems(report)[0].startswith("ERROR  server certificate not trusted: its issuer is not in the trust store")
