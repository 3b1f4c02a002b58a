"""`apnsd send` and `apnsd check --probe` against the HTTP/2 mock: good and bad certificates, good and bad .p8 keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from apnsd.cli.probe import DUMMY_TOKEN
from apnsd.gateway.credentials import load_public_key

TOKEN = "c9d4c07cfbbc26d6ef87a44d53e169831096a5d5fd82547556659dddf715defc"


@pytest.fixture
def config_file(tmp_path: Path, pki: Any, redis_server: Any) -> Callable[..., str]:
    """Factory: a TOML config with one app "default" talking to ``mock``, with the given app keys.

    Redis is unreachable (port 1) unless ``redis`` is true: `send` must work without it, while `check`
    also checks Redis."""

    def make(mock: Any, redis: bool = False, **app: str) -> str:
        keys = {"host": mock.host, "port": mock.port, "ca_file": pki.ca_cert, "protocol": mock.protocol, **app}
        body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items())
        path = tmp_path / "apnsd.toml"
        url = redis_server.url if redis else "redis://127.0.0.1:1/0"
        path.write_text(f'[redis]\nurl = "{url}"\n[metrics]\nlisten = ""\n[apps.default]\n{body}\n')
        return str(path)

    return make


def token_auth(pki: Any, p8: str) -> dict[str, str]:
    """App keys for token auth with the given .p8 file and the test PKI's key and team ids."""
    return {"token_key": p8, "key_id": pki.key_id, "team_id": pki.team_id, "topic": "com.example.app"}


@pytest.fixture
def other_p8(tmp_path: Path) -> str:
    """A valid .p8 key that the gateway does not know (as if revoked, or of another team)."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "AuthKey_OTHER.p8"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(path)


def jwt_mock(http2_mock: Any, pki: Any) -> Any:
    """A mock gateway that wants ES256 provider tokens signed by the test PKI's .p8 key."""
    return http2_mock(
        client_ca=False,
        jwt_public_key=load_public_key(pki.p8_public),
        jwt_key_id=pki.key_id,
        jwt_team_id=pki.team_id,
        reject_prefixes=((DUMMY_TOKEN[:8], 400, "BadDeviceToken"),),
    )


# --- send --------------------------------------------------------------------------------------------


def test_send_with_a_good_certificate_prints_200_and_exits_0(cli, config_file, http2_mock, pki):
    """`apnsd send` delivers one notification without Redis and prints status, apns-id and round trip."""
    mock = http2_mock()
    code, out, _ = cli("send", "-c", config_file(mock, cert=pki.client_pem), "--token", TOKEN, "--alert", "hi")

    assert 0 == code
    (received,) = mock.record.received
    assert (TOKEN, 200, {"aps": {"alert": "hi"}}) == (received.token, received.status, json.loads(received.payload))
    assert "  status        200\n" in out
    assert f"  apns-id       {received.ident}\n" in out
    assert "  round trip    " in out


def test_send_builds_title_badge_sound_data_and_headers(cli, config_file, http2_mock, pki):
    """--title, --badge, --sound, --data and --push-type end up in the payload and headers the gateway sees."""
    mock = http2_mock()
    code, _, _ = cli(
        "send",
        "-c",
        config_file(mock, cert=pki.client_pem),
        "--token",
        TOKEN,
        *("--title", "Deploy", "--alert", "done", "--badge", "3", "--sound", "default"),
        *("--data", '{"server": 7}', "--push-type", "alert"),
    )

    (received,) = mock.record.received
    aps = {"alert": {"title": "Deploy", "body": "done"}, "badge": 3, "sound": "default"}
    assert (0, {"server": 7, "aps": aps}) == (code, json.loads(received.payload))
    assert "alert" == dict(received.headers)["apns-push-type"]


def test_send_with_an_untrusted_certificate_fails_with_the_tls_cause(cli, config_file, http2_mock, pki):
    """A certificate the gateway does not trust: no answer, the TLS rejection is printed, exit 1."""
    mock = http2_mock()
    code, out, _ = cli("send", "-c", config_file(mock, cert=pki.untrusted_pem), "--token", TOKEN, "--alert", "x")

    assert 1 == code
    assert [] == mock.record.received
    (error,) = [line for line in out.splitlines() if line.startswith("  error ")]
    assert "rejected the client certificate" in error


def test_send_with_a_good_p8_key_is_accepted(cli, config_file, http2_mock, pki):
    """Token auth with the right .p8 key, key id and team id: 200, exit 0."""
    mock = jwt_mock(http2_mock, pki)
    code, out, _ = cli("send", "-c", config_file(mock, **token_auth(pki, pki.p8_key)), "--token", TOKEN, "--alert", "x")

    assert (0, [TOKEN]) == (code, list(mock.record.accepted_tokens()))
    assert "  status        200\n" in out


def test_send_with_an_unknown_p8_key_shows_403_and_what_to_check(cli, config_file, http2_mock, pki, other_p8):
    """A .p8 key the gateway does not know: 403 InvalidProviderToken, the advice names key_id and team_id, exit 1."""
    mock = jwt_mock(http2_mock, pki)
    code, out, _ = cli("send", "-c", config_file(mock, **token_auth(pki, other_p8)), "--token", TOKEN, "--alert", "x")

    assert 1 == code
    assert "  status        403\n  reason        InvalidProviderToken\n" in out
    assert "key_id" in out and "team_id" in out


def test_send_bad_device_token_explains_the_environment(cli, config_file, http2_mock, pki):
    """400 BadDeviceToken is printed with the sandbox/production explanation, exit 1."""
    mock = http2_mock(reject_prefixes=((TOKEN[:8], 400, "BadDeviceToken"),))
    code, out, _ = cli("send", "-c", config_file(mock, cert=pki.client_pem), "--token", TOKEN, "--sandbox")

    assert 1 == code
    assert "  reason        BadDeviceToken\n" in out and "sandbox" in out.split("meaning", 1)[1]


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--token", "zz"], "bad_token"),
        (["--token", TOKEN, "--data", "[1]"], "--data must be a JSON object"),
        (["--token", TOKEN, "--data", '{"a":' + "[" * 5000 + "]" * 5000 + "}"], "--data is not valid JSON"),
        (["--token", TOKEN, "--app", "nope"], "app 'nope' is not configured"),
    ],
)
def test_send_refuses_bad_input_with_exit_2_and_sends_nothing(cli, config_file, http2_mock, pki, argv, problem):
    """A bad token, bad --data or unknown app: exit 2 with one line, nothing reaches the gateway."""
    mock = http2_mock()
    code, out, err = cli("send", "-c", config_file(mock, cert=pki.client_pem), *argv)

    assert (2, "") == (code, out)
    assert problem in err
    assert 0 == mock.record.connections


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "0", "abc"])
def test_send_refuses_a_timeout_that_is_not_a_sane_number(cli, config_file, http2_mock, pki, timeout):
    """--timeout must be a finite number of seconds: argparse exits 2 before anything is sent."""
    mock = http2_mock()
    with pytest.raises(SystemExit) as info:
        cli("send", "-c", config_file(mock, cert=pki.client_pem), "--token", TOKEN, "--timeout", timeout)

    assert (2, 0) == (info.value.code, mock.record.connections)


# --- check --probe -----------------------------------------------------------------------------------


def probe_lines(out: str) -> list[str]:
    """The probe's verdict lines."""
    return [line for line in out.splitlines() if line[7:].startswith("probe")]


def test_probe_with_a_good_certificate_proves_authentication(cli, config_file, http2_mock, pki):
    """Apple-like 400 BadDeviceToken to the dummy token means the certificate works: ok, exit 0."""
    mock = http2_mock(reject_prefixes=((DUMMY_TOKEN[:8], 400, "BadDeviceToken"),))
    code, out, _ = cli("check", "--probe", "-c", config_file(mock, redis=True, cert=pki.client_pem))

    assert 0 == code, out
    assert [
        "ok     probe: the gateway accepted the certificate and then refused the dummy token, as it should: "
        "authentication works end to end"
    ] == probe_lines(out)
    assert [DUMMY_TOKEN] == [r.token for r in mock.record.received]


def test_probe_with_an_untrusted_certificate_fails(cli, config_file, http2_mock, pki):
    """A certificate the gateway refuses: the probe gets no answer and says why, exit 1."""
    mock = http2_mock()
    code, out, _ = cli("check", "--probe", "-c", config_file(mock, redis=True, cert=pki.untrusted_pem))

    assert 1 == code
    (line,) = probe_lines(out)
    assert line.startswith("ERROR  probe: no answer from the gateway: ")


def test_probe_with_a_good_p8_key_proves_authentication(cli, config_file, http2_mock, pki):
    """Token auth with the right key: BadDeviceToken for the dummy token, reported as working, exit 0."""
    mock = jwt_mock(http2_mock, pki)
    code, out, _ = cli("check", "--probe", "-c", config_file(mock, redis=True, **token_auth(pki, pki.p8_key)))

    assert 0 == code, out
    assert probe_lines(out)[0].startswith("ok     probe: the gateway accepted the provider token (.p8)")


def test_probe_with_an_unknown_p8_key_reports_the_rejection(cli, config_file, http2_mock, pki, other_p8):
    """A .p8 key the gateway does not know: 403 InvalidProviderToken in plain words, exit 1."""
    mock = jwt_mock(http2_mock, pki)
    code, out, _ = cli("check", "--probe", "-c", config_file(mock, redis=True, **token_auth(pki, other_p8)))

    assert 1 == code, out
    (line,) = probe_lines(out)
    assert line.startswith("ERROR  probe: the gateway rejected the provider token (.p8): InvalidProviderToken — ")


def test_send_to_a_gateway_it_cannot_reach_says_so_without_an_apns_id(cli, config_file, http2_mock, pki):
    """Nothing listens on the gateway port: one error line naming the cause and how long it tried, no apns-id
    or round trip of a request that never went out, exit 1."""
    mock = http2_mock()
    path = config_file(mock, cert=pki.client_pem, port=1)  # port 1: nothing listens there

    code, out, _ = cli("send", "-c", path, "--token", TOKEN, "--alert", "x")

    lines = out.splitlines()[1:]
    assert (1, 2) == (code, len(lines)), out
    assert lines[0].startswith("  error         cannot reach 127.0.0.1:1: ")
    assert lines[1].startswith("  gave up after ") and "apns-id" not in out
