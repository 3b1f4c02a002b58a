"""Live Activity broadcast end to end: channel management and channel jobs through the mock over real TLS."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import msgspec
import pytest

from apnsd.cli import main as cli
from apnsd.errors import ConfigError, JobError
from apnsd.gateway.channels import ChannelApiError, ChannelManager
from apnsd.testing.devpki import BUNDLE_ID
from tests.support.jobs import good_tokens, inflight_keys, job, push_all, run_drained
from tests.support.pki import token_auth_env, token_mock_options

UPDATE = {"aps": {"timestamp": 1685952000, "event": "update", "content-state": {"score": "2-1"}}}
CHANNEL = "dHN0LXNyY2gtY2hubA=="
ROOT = Path(__file__).resolve().parents[2]


def schema() -> jsonschema.Draft202012Validator:
    """A validator for docs/job.schema.json."""
    return jsonschema.Draft202012Validator(json.loads((ROOT / "docs" / "job.schema.json").read_text()))


def channel_job(channel: str, **extra: object) -> bytes:
    """One broadcast job as an application would LPUSH it."""
    return msgspec.json.encode({"channel": channel, "payload": UPDATE, **extra})


def broadcasts(mock) -> list[tuple[str, int, str]]:
    """(channel, status, reason) of every broadcast the mock answered."""
    return [(r.channel, r.status, r.reason) for r in mock.record.broadcasts()]


def test_create_broadcast_delete_then_broadcast_to_the_deleted_channel(jq, rdb, http2_mock, make_config):
    """A created channel takes a broadcast from the queue; once deleted, the next one is reported as a gone channel."""
    mock = http2_mock()
    config = make_config(mock, APP_DEFAULT_CHANNELS_PORT=str(mock.channels_port))
    channels = ChannelManager("default", config.apps["default"])

    channel = channels.create(policy=1)
    assert [channel] == channels.list()
    assert {"message-storage-policy": 1, "push-type": "LiveActivity"} == channels.get(channel)

    token = good_tokens(1)[0]
    push_all(jq, [channel_job(channel, expiration=2_000_000_000), job(token)])
    assert 0 == run_drained(config)
    assert [(channel, 200, "")] == broadcasts(mock)
    assert {token: 1} == dict(mock.record.accepted_tokens())

    channels.delete(channel)
    assert [] == channels.list()
    push_all(jq, [channel_job(channel, id="match-42")])
    assert 0 == run_drained(config)

    assert [(channel, 200, ""), (channel, 400, "ChannelNotRegistered")] == broadcasts(mock)
    gone = jq.channels_gone()
    assert {channel: ("default", "ChannelNotRegistered", 400)} == {
        c: (v["app"], v["reason"], v["status"]) for c, v in gone.items()
    }
    assert ({}, []) == (jq.unregistered(), jq.dead_entries(10))
    assert [] == inflight_keys(rdb)


def test_a_broadcast_request_has_the_path_and_headers_apple_documents(jq, http2_mock, make_config, pki):
    """POST /4/broadcasts/apps/<bundle id> with the channel id, push type, Live Activity topic, priority, expiration."""
    mock = http2_mock()
    config = make_config(mock, APP_DEFAULT_CHANNELS_PORT=str(mock.channels_port))
    channel = ChannelManager("default", config.apps["default"]).create(policy=0)
    push_all(jq, [channel_job(channel, priority=5)])

    assert 0 == run_drained(config)

    [received] = mock.record.received
    headers = dict(received.headers)
    bundle = BUNDLE_ID
    expected = {
        ":method": "POST",
        ":path": f"/4/broadcasts/apps/{bundle}",
        "apns-channel-id": channel,
        "apns-push-type": "liveactivity",
        "apns-topic": f"{bundle}.push-type.liveactivity",
        "apns-priority": "5",
        "apns-expiration": "0",
    }
    assert expected == {k: headers.get(k) for k in expected}
    assert UPDATE == json.loads(received.payload)
    assert 200 == received.status


def test_gateway_rejections_of_a_broadcast_end_as_dead_letters_with_apples_reason(jq, http2_mock, make_config):
    """A nonzero expiration on a no-storage channel is 400 BadExpirationDate, dead-lettered with the channel id."""
    mock = http2_mock()
    config = make_config(mock, APP_DEFAULT_CHANNELS_PORT=str(mock.channels_port))
    channel = ChannelManager("default", config.apps["default"]).create(policy=0)
    push_all(jq, [channel_job(channel, expiration=2_000_000_000)])

    assert 0 == run_drained(config)

    [entry] = jq.dead_entries(10)
    assert ("BadExpirationDate", 400, channel) == (entry["reason"], entry["status"], entry["token"])
    assert {} == jq.channels_gone()


def test_channel_management_errors_carry_apples_status_and_reason(http2_mock, make_config):
    """Reading a channel that does not exist raises ChannelApiError 400 ChannelNotRegistered."""
    mock = http2_mock()
    config = make_config(mock, APP_DEFAULT_CHANNELS_PORT=str(mock.channels_port))

    with pytest.raises(ChannelApiError) as info:
        ChannelManager("default", config.apps["default"]).get("dGhpcyBpcyBub3QgYSBjaGFubmVs")

    assert (400, "ChannelNotRegistered") == (info.value.status, info.value.reason)


def test_channels_under_token_auth_send_a_provider_token_the_mock_verifies(jq, http2_mock, make_config, pki):
    """With a .p8 key, management requests and broadcasts carry an ES256 bearer token the mock accepts."""
    mock = http2_mock(**token_mock_options(pki))
    config = make_config(
        mock,
        **token_auth_env(pki),
        APP_DEFAULT_CHANNELS_PORT=str(mock.channels_port),
    )
    channels = ChannelManager("default", config.apps["default"])
    channel = channels.create()
    push_all(jq, [channel_job(channel)])

    assert 0 == run_drained(config)

    assert [(channel, 200, "")] == broadcasts(mock)
    assert [("POST", "/1/apps/com.example.app/channels", 201, "")] == mock.channels.requests


def test_the_channels_command_creates_lists_gets_and_deletes(http2_mock, make_config, redis_server, pki, tmp_path):
    """`apnsd channels create|list|get|delete` print the channel id and its message-storage policy."""
    mock = http2_mock()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APNSD_")}
    env.update(
        APNSD_REDIS_URL=redis_server.url,
        APNSD_APP_DEFAULT_HOST=mock.host,
        APNSD_APP_DEFAULT_PORT=str(mock.port),
        APNSD_APP_DEFAULT_CHANNELS_PORT=str(mock.channels_port),
        APNSD_APP_DEFAULT_CA_FILE=pki.ca_cert,
        APNSD_APP_DEFAULT_CERT=pki.client_pem,
    )

    def channels(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "apnsd", "channels", *args, "--app", "default"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = channels("create", "--policy", "1")
    assert 0 == created.returncode, created.stderr
    channel = created.stdout.split()[0]
    assert [channel] == list(mock.channels.channels)
    other = channels("create", "--policy", "0").stdout.split()[0]
    before = mock.channels.connections
    listed = channels("list").stdout.splitlines()
    # the list and the two reads of its policies share one connection
    expected = [f"{channel}\tmost recent message stored (1)", f"{other}\tno message stored (0)"]
    assert (expected, 1) == (listed, mock.channels.connections - before)
    assert 0 == channels("delete", other).returncode
    assert f"{channel}\tmost recent message stored (1)" == channels("get", channel).stdout.strip()
    assert 0 == channels("delete", channel).returncode
    missing = channels("get", channel)
    assert (1, "") == (missing.returncode, missing.stdout)
    assert "400 ChannelNotRegistered" in missing.stderr
    assert 2 == channels("get", "not base64!").returncode


def test_the_python_client_manages_channels_broadcasts_and_reads_gone_channels(jq, http2_mock, make_config):
    """Client.channels creates and deletes, Client.broadcast validates and queues, channels_gone reads the verdict."""
    from apnsd.client import Client

    mock = http2_mock()
    config = make_config(mock, APP_DEFAULT_CHANNELS_PORT=str(mock.channels_port))
    client = Client.from_config(config)
    with client.channels("default") as channels:
        live, deleted = channels.create(), channels.create()
        channels.delete(deleted)
        assert [live] == channels.list()
    client.broadcast(live, UPDATE, priority=5)
    client.broadcast(deleted, UPDATE)
    with pytest.raises(JobError) as info:
        client.broadcast(live, UPDATE, collapse_id="score")
    assert "bad_collapse_id" == info.value.reason

    assert 0 == run_drained(config)

    assert [(live, 200, ""), (deleted, 400, "ChannelNotRegistered")] == broadcasts(mock)
    assert [deleted] == list(client.channels_gone())
    assert (1, {}) == (client.forget_channels([deleted]), client.channels_gone())


def test_channel_management_needs_a_client_built_from_config(redis_server):
    """Without the config (and so the credentials) Client.channels refuses with the key to set."""
    from apnsd.client import Client

    with pytest.raises(ConfigError):
        Client(redis_server.url).channels("default")


def test_apnsd_push_queues_a_broadcast_that_fits_the_schema(rdb, redis_server, env_clean, monkeypatch, capsys):
    """`apnsd push --channel` queues one channel job, valid against docs/job.schema.json; a bad id is refused."""
    monkeypatch.setenv("APNSD_REDIS_URL", redis_server.url)
    assert 0 == cli.main(["push", "--channel", CHANNEL, "--payload", json.dumps(UPDATE), "--priority", "5"])
    assert "queued 1 job (a broadcast)" in capsys.readouterr().out
    [queued] = [json.loads(raw) for raw in rdb.lrange("apnsd:queue", 0, -1)]
    assert (CHANNEL, 5, "token" in queued) == (queued["channel"], queued["priority"], False)
    schema().validate(queued)
    assert 2 == cli.main(["push", "--channel", "not base64", "--alert", "x"])
    assert "bad_channel" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("job", "valid"),
    [
        ({"channel": CHANNEL, "payload": UPDATE}, True),
        ({"channel": CHANNEL, "payload": UPDATE, "push_type": "liveactivity", "priority": 1}, True),
        ({"channel": CHANNEL, "payload": UPDATE, "push_type": "alert"}, False),
        ({"channel": CHANNEL, "payload": UPDATE, "collapse_id": "c"}, False),
        ({"channel": "dHN0LXNyY2gtY2hubA", "payload": UPDATE}, False),
        ({"channel": CHANNEL, "token": "ab" * 32, "payload": UPDATE}, False),
        ({"channel": "", "payload": UPDATE}, False),
    ],
)
def test_the_schema_and_the_daemon_agree_on_channel_jobs(job, valid):
    """A channel job the schema accepts is one the daemon accepts, and the other way round."""
    from apnsd.core.jobs import JobParser

    good, bad = JobParser({"default": ("http2", 4096, 5120)}).parse(msgspec.json.encode(job))
    assert (valid, valid) == (schema().is_valid(job), bool(good) and not bad)


def test_a_broadcast_answered_503_is_retried_and_then_delivered_once(jq, http2_mock, make_config):
    """The retry of a channel job stays a channel job: one 503, then one 200, one outcome."""
    mock = http2_mock(burst_status=(503, "ServiceUnavailable", 1))
    config = make_config(mock, APP_DEFAULT_CHANNELS_PORT=str(mock.channels_port))
    channel = ChannelManager("default", config.apps["default"]).create()
    push_all(jq, [channel_job(channel, id="final-score")])

    assert 0 == run_drained(config)

    assert [(channel, 503, "ServiceUnavailable"), (channel, 200, "")] == broadcasts(mock)
    assert ([], {}) == (jq.dead_entries(10), jq.channels_gone())


def test_an_unreachable_management_api_is_one_clear_error(http2_mock, make_config):
    """Nothing listening on the management port: ChannelApiError names the host and the connect failure."""
    import socket

    mock = http2_mock()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    config = make_config(mock, APP_DEFAULT_CHANNELS_PORT=str(closed), APP_DEFAULT_CONNECT_TIMEOUT="2")

    with pytest.raises(ChannelApiError) as info:
        ChannelManager("default", config.apps["default"], timeout=5).list()

    assert (None, True) == (info.value.status, f"127.0.0.1:{closed}" in str(info.value))


@pytest.mark.parametrize(
    ("call", "answer", "expected"),
    [
        ("create", (201, "", [], b""), (201, "no usable apns-channel-id")),
        ("create", (201, "", [("apns-channel-id", "not base64!")], b""), (201, "no usable apns-channel-id")),
        ("list", (200, "", [], b'{"channels": "dHN0"}'), (200, "unexpected answer body")),
        ("list", (200, "", [], b"[1, 2"), (200, "unexpected answer body")),
        ("get", (200, "", [], b'{"message-storage-policy": 7}'), (200, "unexpected answer body")),
        ("get", (500, "InternalServerError", [], b""), (500, "500 InternalServerError")),
        ("delete", (200, "", [], b""), (200, "200 (no reason; 204 expected)")),
    ],
)
def test_hostile_management_answers_are_clear_errors(http2_mock, make_config, monkeypatch, call, answer, expected):
    """Missing ids, malformed bodies, unexpected statuses: a ChannelApiError saying what came back, no traceback."""
    from apnsd.testing.channels_mock import ChannelApiConnection

    monkeypatch.setattr(ChannelApiConnection, "_manage", lambda self, h, body: answer)
    mock = http2_mock()
    config = make_config(mock, APP_DEFAULT_CHANNELS_PORT=str(mock.channels_port))
    channels = ChannelManager("default", config.apps["default"])

    with pytest.raises(ChannelApiError) as info:
        getattr(channels, call)(*([CHANNEL] if call in ("get", "delete") else []))

    assert (expected[0], True) == (info.value.status, expected[1] in str(info.value)), str(info.value)


def test_stats_show_gone_channels(jq, rdb, redis_server, env_clean, monkeypatch, capsys):
    """`apnsd stats` prints a gone-channels line once there are any, and --json always has the count."""
    monkeypatch.setenv("APNSD_REDIS_URL", redis_server.url)
    assert 0 == cli.main(["stats", "--json"])
    assert 0 == json.loads(capsys.readouterr().out)["channels_gone"]
    rdb.hset("apnsd:channels:gone", CHANNEL, b"{}")
    assert 0 == cli.main(["stats"])
    assert "gone broadcast channels: 1" in capsys.readouterr().out.splitlines()


@pytest.mark.timeout(180)
def test_the_whole_lifecycle_as_processes(rdb, redis_server, tmp_path):
    """apnsd mock, apnsd channels, apnsd push --channel and apnsd run --drain as real processes, end to end."""
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("APNSD_")}
    env["PYTHONPATH"] = str(repo)
    pki_dir, record = tmp_path / "pki", tmp_path / "record.jsonl"
    mock = subprocess.Popen(
        [sys.executable, "-m", "apnsd", "mock", "--pki-dir", str(pki_dir), "--record", str(record)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        first = mock.stdout.readline() if mock.stdout else ""
        found = re.fullmatch(
            r"apnsd mock \(http2\) listening on 127\.0\.0\.1:(\d+), channel management on (\d+) \(channels_port\)\n",
            first,
        )
        assert found, first
        env.update(
            APNSD_REDIS_URL=redis_server.url,
            APNSD_APP_DEFAULT_HOST="127.0.0.1",
            APNSD_APP_DEFAULT_PORT=found.group(1),
            APNSD_APP_DEFAULT_CHANNELS_PORT=found.group(2),
            APNSD_APP_DEFAULT_CA_FILE=str(pki_dir / "ca.pem"),
            APNSD_APP_DEFAULT_CERT=str(pki_dir / "client.pem"),
            APNSD_WORKER_STATE_DIR=str(tmp_path / "state"),
            APNSD_WORKER_BLOCK_TIMEOUT="0.2",
            APNSD_METRICS_LISTEN="",
        )

        def apnsd(*args: str) -> str:
            done = subprocess.run(
                [sys.executable, "-m", "apnsd", *args], env=env, capture_output=True, text=True, timeout=60
            )
            assert 0 == done.returncode, done.stderr
            return done.stdout

        channel = apnsd("channels", "create").split()[0]
        apnsd("push", "--channel", channel, "--payload", json.dumps(UPDATE))
        apnsd("run", "--drain")
        apnsd("channels", "delete", channel)
        apnsd("push", "--channel", channel, "--payload", json.dumps(UPDATE))
        apnsd("run", "--drain")
        stats = json.loads(apnsd("stats", "--json"))
    finally:
        mock.send_signal(signal.SIGTERM)
        out, _ = mock.communicate(timeout=30)

    assert (1, 0) == (stats["channels_gone"], stats["dead"])
    summary = json.loads(out.strip().splitlines()[-1])
    assert (2, 1, 0) == (summary["broadcasts"], summary["accepted"], summary["channels"])
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(channel, 200, ""), (channel, 400, "ChannelNotRegistered")] == [
        (r["channel"], r["status"], r["reason"]) for r in lines
    ]
