"""End to end over the binary protocol: real redis-server, real TLS, the mock gateway."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from typing import Any

import msgspec

from tests.support.binary_gateway import BinaryGateway, frames_from
from tests.support.jobs import good_tokens, inflight_keys, job, push_all, run_drained


def test_ten_thousand_jobs_with_invalid_tokens_deliver_every_valid_one_exactly_once(jq, rdb, binary_mock, make_config):
    """Invalid tokens at several positions are resolved as unregistered and everything else arrives once."""
    mock = binary_mock(fail_prefixes=(("bad0", 8),))
    positions = {0, 10, 500, 5000, 9999}
    tokens = [("bad0" + t[4:]) if i in positions else t for i, t in enumerate(good_tokens(10_000))]
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(mock))

    valid = {t for i, t in enumerate(tokens) if i not in positions}
    accepted = mock.record.accepted_tokens()
    assert valid == set(accepted)
    assert [1] == sorted(set(accepted.values()))
    unregistered = jq.unregistered()
    assert {tokens[i] for i in positions} == set(unregistered)
    assert {"InvalidToken"} == {v["reason"] for v in unregistered.values()}
    assert 0 == jq.depth("apnsd:queue")
    assert [] == inflight_keys(rdb)


def test_invalid_jobs_go_to_the_dead_letter_list_with_reasons(jq, rdb, binary_mock, make_config):
    """Malformed, tokenless, description-form, oversized and unknown-app jobs are dead-lettered, not dropped."""
    mock = binary_mock()
    bad = {
        b"{not json": "not_json",
        b"[1, 2]": "not_object",
        msgspec.json.encode({"payload": {"aps": {}}}): "missing_token",
        job("zz" * 32): "bad_token",
        job("ab" * 31): "bad_token_length",
        job("{length = 32, bytes = 0x965b251e ... 376eab7c }"): "token_is_description",
        msgspec.json.encode({"token": "ab" * 32, "payload": {"aps": {"alert": "x" * 2100}}}): "payload_too_large",
        msgspec.json.encode({"token": "ab" * 32, "payload": [1]}): "bad_payload",
        job("ab" * 32, app="nosuchapp"): "unknown_app",
    }
    push_all(jq, [*list(bad), job("cd" * 32)])

    assert 0 == run_drained(make_config(mock))

    dead = jq.dead_entries(100)
    assert sorted(bad.values()) == sorted(e["reason"] for e in dead)
    assert sorted(raw.decode() for raw in bad) == sorted(e["job"] for e in dead)
    assert all(e["time"] > 0 and e["detail"] for e in dead)
    assert {"cd" * 32: 1} == dict(mock.record.accepted_tokens())
    assert [] == inflight_keys(rdb)


def test_fan_out_job_gives_each_token_its_own_outcome(jq, rdb, binary_mock, make_config):
    """A job with ``tokens`` becomes one notification per device, each resolved on its own."""
    mock = binary_mock(fail_prefixes=(("bad0", 8),))
    good = good_tokens(3)
    gone = "bad0" + good_tokens(1, seed=2)[0][4:]
    push_all(
        jq,
        [
            msgspec.json.encode(
                {"tokens": [good[0], gone, good[1], "xyz", good[2]], "payload": {"aps": {"alert": "fan"}}}
            )
        ],
    )

    assert 0 == run_drained(make_config(mock))

    assert set(good) == set(mock.record.accepted_tokens())
    assert {gone} == set(jq.unregistered())
    assert ["bad_token"] == [e["reason"] for e in jq.dead_entries(10)]


def test_one_persistent_connection_carries_every_batch(jq, binary_mock, make_config):
    """Without faults, many batches travel over a single TLS connection."""
    mock = binary_mock()
    push_all(jq, [job(t) for t in good_tokens(5000)])

    assert 0 == run_drained(make_config(mock, WORKER_BATCH_SIZE="100"))

    assert 5000 == len(mock.record.accepted_tokens())
    assert 1 == mock.record.connections


def test_feedback_service_tokens_land_in_the_unregistered_store(jq, rdb, binary_mock, make_config):
    """The feedback poller records each token the service reports, with Apple's time in milliseconds."""
    mock = binary_mock()
    gone = [bytes.fromhex(t) for t in good_tokens(3, seed=3)]
    mock.feedback.extend((1_700_000_000 + i, t) for i, t in enumerate(gone))
    push_all(jq, [job(good_tokens(1)[0])])
    config = make_config(mock, APP_DEFAULT_FEEDBACK_INTERVAL="10", APP_DEFAULT_FEEDBACK_PORT=str(mock.feedback_port))

    assert 0 == run_drained(config)

    unregistered = jq.unregistered()
    assert {t.hex() for t in gone} == set(unregistered)
    assert {"Feedback"} == {v["reason"] for v in unregistered.values()}
    assert sorted(1_700_000_000_000 + i * 1000 for i in range(3)) == sorted(
        v["timestamp_ms"] for v in unregistered.values()
    )


def test_a_gateway_that_keeps_dropping_the_connection_costs_few_resends(jq, rdb, binary_mock, make_config):
    """After each abrupt close the unconfirmed window restarts small, so repeated drops neither
    multiply duplicates nor dead-letter delivered notifications as lost."""
    mock = binary_mock(close_after=3000, once=False)
    tokens = good_tokens(10_000, seed=9)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(mock))

    accepted = mock.record.accepted_tokens()
    duplicates = sum(accepted.values()) - len(accepted)
    assert set(tokens) == set(accepted)
    assert [] == jq.dead_entries(10)
    drops = mock.record.connections - 1
    assert drops <= 8, drops  # ~10,000 / 3,000 drops plus slack; resending whole windows needed 30
    assert duplicates <= drops * 3000, (duplicates, drops)
    assert [] == inflight_keys(rdb)


class StallingGateway(BinaryGateway):
    """A binary gateway with a tiny receive buffer whose first connection reads nothing for ``stall`` seconds and is
    then reset; later connections read every frame. ``read`` holds the hex tokens it read, in order."""

    def __init__(self, pki: Any, stall: float) -> None:
        self.stall, self.read = stall, list[str]()
        super().__init__(pki, receive_buffer=4096)

    def serve(self, conn: ssl.SSLSocket, number: int) -> None:
        """The first connection stalls, then is reset; the others are read to the end."""
        if number == 1:
            time.sleep(self.stall)  # read nothing: the client's kernel keeps what does not fit here
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # a reset: whatever was unread or unsent is gone
            return
        for f in frames_from(conn, self.stop):
            self.read.append(f.token.hex())


def test_frames_a_stalled_gateway_never_acknowledged_are_resent_not_confirmed(jq, rdb, pki, make_config):
    """A gateway that stops reading holds our frames in our own kernel's send queue: silence there is not a
    delivery. When it then resets the connection, they are written again on the next one, so every job the
    stats count as delivered was read by the gateway, but for the few that fit in its tiny receive buffer."""
    gateway = StallingGateway(pki, stall=1.0)
    tokens = good_tokens(20_000, seed=131)
    push_all(jq, [job(t) for t in tokens])
    try:
        assert 0 == run_drained(make_config(gateway, APP_DEFAULT_STANDBY_CONNECTIONS="0"))
    finally:
        gateway.close()

    never_read = set(tokens) - set(gateway.read)
    stats = {k.decode(): int(v) for k, v in rdb.hgetall("apnsd:stats").items()}
    assert (len(tokens), []) == (stats.get("delivered"), inflight_keys(rdb))
    assert len(never_read) <= 100, f"{len(never_read)} delivered jobs never reached the gateway"
