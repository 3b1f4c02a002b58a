"""Fault injection: whatever happens to gateway, Redis or daemon, every job ends in exactly one outcome.

Each test pushes jobs with known, unique tokens, injects one fault, runs to completion and reads
every job's fate back from Redis (dead letters, unregistered store, queue, in-flight storage) and
from the mock gateway's record. One summary line per fault is printed and repeated at the end.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from apnsd.config import WorkerConfig
from apnsd.metrics import REGISTRY
from apnsd.store.queue import JobQueue, connect
from apnsd.testing.mock import BinaryFaults, MockGateway
from apnsd.testing.redis_server import RedisServer, free_port
from apnsd.worker.delivery import COMMIT_SLICE
from tests.support.faultkit import (
    LINES,
    DaemonProcess,
    DaemonThread,
    LogTap,
    RedisCutter,
    StallingBinaryGateway,
    assert_resolved,
    connect_failures,
    daemon_env,
    drain_with_a_new_worker,
    make_tokens,
    resent_on_abrupt_loss,
    tally,
)
from tests.support.jobs import job, push_all, run_drained
from tests.support.wait import wait_for

QUEUE = "apnsd:queue"
PROTOCOLS = ["binary", "http2"]


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Repeat every fault's summary line at the end of the module, whether or not output is captured."""
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None or not LINES:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_sep("-", "fault summary")
        for line in LINES:
            reporter.write_line(line)


@pytest.fixture
def gateway_later(pki: Any) -> Iterator[Callable[..., MockGateway]]:
    """Factory for mock gateways started on a chosen port later in a test; stopped at teardown."""
    started: list[MockGateway] = []

    def start(protocol: str, port: int, **faults: Any) -> MockGateway:
        from apnsd.testing.http2_mock import Http2Faults

        m = MockGateway(
            protocol,
            pki.server_cert,
            pki.server_key,
            pki.ca_cert,
            port=port,
            binary_faults=BinaryFaults(**faults) if protocol == "binary" else BinaryFaults(),
            http2_faults=Http2Faults(**faults) if protocol == "http2" else None,
        )
        started.append(m.start())
        return m

    yield start
    for m in started:
        m.stop()


def mock_for(
    protocol: str, binary_mock: Callable[..., MockGateway], http2_mock: Callable[..., MockGateway], **faults: Any
) -> MockGateway:
    """A started mock gateway of the given protocol."""
    return binary_mock(**faults) if protocol == "binary" else http2_mock(**faults)


# --- 1. gateway error responses -----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_error_responses_at_random_positions_resolve_each_job_once(
    protocol, jq, rdb, binary_mock, http2_mock, make_config
):
    """Rejected tokens at seeded random positions become unregistered or dead; every other job arrives once."""
    tokens, bad = make_tokens(seed=101, n=10_000, bad={"bad0": 6, "bad1": 6})
    if protocol == "binary":
        mock, dead_reason = binary_mock(fail_prefixes=(("bad0", 8), ("bad1", 7))), "InvalidPayloadSize"
    else:
        mock = http2_mock(reject_prefixes=(("bad0", 410, "Unregistered"), ("bad1", 400, "BadTopic")))
        dead_reason = "BadTopic"
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(mock))

    t = tally(tokens, mock, jq, rdb)
    t.line(f"error_responses/{protocol}")
    assert_resolved(t)
    assert 0 == t.duplicates
    assert bad["bad0"] == set(t.unregistered_by_token)
    assert bad["bad1"] == set(t.dead_by_token)
    assert {dead_reason} == {e["reason"] for e in t.dead_by_token.values()}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("status", [8, 10])
def test_error_response_then_immediate_close_resends_only_what_followed(status, jq, rdb, binary_mock, make_config):
    """A binary gateway that writes its error response (8: InvalidToken at random positions; 10: Shutdown
    every 2,500) and closes at once, while apnsd writes at full speed: the daemon's next write meets a
    reset, yet it reads the answer first and resends only what followed it — 0 duplicates, 0 lost, every
    rejected token recorded once."""
    if status == 8:
        tokens, bad = make_tokens(seed=111, n=10_000, bad={"bad0": 12})
        mock = binary_mock(fail_prefixes=(("bad0", 8),), hard_close=True)
    else:
        tokens, _ = make_tokens(seed=112, n=10_000)
        bad: dict[str, set[str]] = {"bad0": set()}
        mock = binary_mock(shutdown_after=2500, once=False, hard_close=True)
    push_all(jq, [job(t) for t in tokens])
    tap = LogTap()

    assert 0 == run_drained(make_config(mock))

    t = tally(tokens, mock, jq, rdb)
    resets = [e for e in tap.events("disconnected") if "lost" in str(e.get("reason"))]
    t.line(f"error_then_reset_{status}/binary", connections=mock.record.connections, write_failures=len(resets))
    assert_resolved(t)
    assert (10_000 - len(bad["bad0"]), 0) == (t.delivered, t.duplicates)
    assert bad["bad0"] == set(t.unregistered_by_token)
    assert [1] * len(bad["bad0"]) == [sum(r.token == b for r in mock.record.received) for b in sorted(bad["bad0"])]
    assert mock.record.connections >= (13 if status == 8 else 4)


# --- 2. HTTP/2 GOAWAY ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_goaway_mid_stream_resends_only_unprocessed_streams(jq, rdb, http2_mock, make_config):
    """A GOAWAY every 2,500 answers loses nothing and delivers nothing twice."""
    tokens, _ = make_tokens(seed=202, n=10_000)
    mock = http2_mock(goaway_after=2500, once=False)
    push_all(jq, [job(t) for t in tokens])
    tap = LogTap()

    assert 0 == run_drained(make_config(mock))

    t = tally(tokens, mock, jq, rdb)
    goaways = len(tap.events("goaway"))
    t.line("goaway/http2", goaways=goaways, connections=mock.record.connections)
    assert_resolved(t)
    assert (10_000, 0) == (t.delivered, t.duplicates)
    assert goaways >= 3


# --- 3. abrupt gateway close --------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_abrupt_close_mid_stream_loses_nothing(protocol, jq, rdb, binary_mock, http2_mock, make_config):
    """The gateway dropping the connection without a word after 3,000 notifications (HTTP/2: after every
    3,000) loses no job; duplicates stay within what was unanswered when it dropped."""
    tokens, _ = make_tokens(seed=303, n=10_000)
    # Binary learns of success only by silence, so it resends its whole unconfirmed window after a drop;
    # a gateway dropping after every N < window would make it resend the same window again and again.
    mock = mock_for(protocol, binary_mock, http2_mock, close_after=3000, once=protocol == "binary")
    push_all(jq, [job(t) for t in tokens])
    tap = LogTap()

    assert 0 == run_drained(make_config(mock))

    t = tally(tokens, mock, jq, rdb)
    resent = resent_on_abrupt_loss(tap.events("disconnected"))
    t.line(f"abrupt_close/{protocol}", resent_after_loss=resent, connections=mock.record.connections)
    assert_resolved(t)
    assert 10_000 == t.delivered
    assert mock.record.connections >= (2 if protocol == "binary" else 4)
    assert t.duplicates <= resent


# --- 4. 429 / 500 / 503 bursts ------------------------------------------------------------------

BURSTS = [(429, "TooManyRequests"), (500, "InternalServerError"), (503, "ServiceUnavailable")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("status,reason", BURSTS)
def test_error_burst_is_retried_through_the_schedule_then_delivered(status, reason, jq, rdb, http2_mock, make_config):
    """The first 50 requests answered with a retryable error are scheduled again and then delivered once."""
    tokens, _ = make_tokens(seed=404, n=2000)
    mock = http2_mock(burst_status=(status, reason, 50))
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(mock))

    t = tally(tokens, mock, jq, rdb)
    refused = {r.token for r in mock.record.received if r.status == status}
    t.line(f"burst_{status}/http2", refused=len(refused))
    assert_resolved(t)
    assert (2000, 0, 0) == (t.delivered, t.duplicates, t.dead)
    assert 50 == len(refused)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("status,reason", BURSTS)
def test_error_burst_with_one_attempt_is_dead_lettered_with_the_reason(
    status, reason, jq, rdb, http2_mock, make_config
):
    """With max_attempts = 1, the 50 notifications answered with a retryable error are dead letters naming it."""
    tokens, _ = make_tokens(seed=405, n=2000)
    mock = http2_mock(burst_status=(status, reason, 50))
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(mock, APP_DEFAULT_MAX_ATTEMPTS="1"))

    t = tally(tokens, mock, jq, rdb)
    refused = {r.token for r in mock.record.received if r.status == status}
    t.line(f"burst_{status}_max_attempts_1/http2")
    assert_resolved(t)
    assert (1950, 0, 50) == (t.delivered, t.duplicates, t.dead)
    assert refused == set(t.dead_by_token)
    assert {(reason, status, 1)} == {(e["reason"], e["status"], e["attempts"]) for e in t.dead_by_token.values()}


# --- 3b. a binary gateway that stops reading ---------------------------------------------------


@pytest.mark.timeout(60)
def test_binary_gateway_that_stops_reading_gets_every_notification(jq, rdb, pki, make_config):
    """A gateway that reads nothing for a second: notifications waiting in the client's buffer are not
    counted as delivered by silence, so none is lost when the daemon stops after draining."""
    tokens, _ = make_tokens(seed=313, n=20_000)
    mock = StallingBinaryGateway(pki, stall=1.0)
    big = {"aps": {"alert": "x" * 1400}}  # ~30 MB in all: far more than the kernel's socket buffers hold
    push_all(jq, [msgspec.json.encode({"token": t, "payload": big}) for t in tokens])
    try:
        code = run_drained(make_config(mock))
        with contextlib.suppress(AssertionError):  # if some never arrive, the tally says which
            wait_for(lambda: len(mock.record.received) >= 20_000, 10, "the gateway to read what reached it")
    finally:
        mock.stop()

    t = tally(tokens, mock, jq, rdb)
    t.line("stalled_reader/binary")
    assert 0 == code
    assert_resolved(t)
    assert (20_000, 0) == (t.delivered, t.duplicates)


# --- 5. gateway down at start -------------------------------------------------------------------


def attempt_times(start: float, duration: float, before: float) -> list[float]:
    """Watch the connect-failure counter for ``duration`` seconds; returns when each attempt was seen."""
    seen: list[float] = []
    count = before
    while time.monotonic() - start < duration:
        now_count = connect_failures()
        if now_count > count:
            seen += [time.monotonic() - start] * int(now_count - count)
            count = now_count
        time.sleep(0.005)
    return seen


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_gateway_down_at_start_backs_off_then_delivers_when_it_comes_up(protocol, jq, rdb, make_config, gateway_later):
    """With nothing listening the daemon retries with growing, jittered delays and keeps every job; once a
    gateway listens on that port everything is delivered once."""
    port = free_port()
    config = make_config(
        SimpleNamespace(host="127.0.0.1", port=port, protocol=protocol),
        APP_DEFAULT_BACKOFF_INITIAL="0.2",
        APP_DEFAULT_BACKOFF_MAX="0.8",
    )
    tokens, _ = make_tokens(seed=505, n=1000)
    push_all(jq, [job(t) for t in tokens])
    tap = LogTap()
    before = connect_failures()
    d = DaemonThread(config, drain=True).start()

    times = attempt_times(time.monotonic(), 2.5, before)
    held = jq.depth(QUEUE) + jq.inflight_count(QUEUE, d.daemon.worker_id)
    mock = gateway_later(protocol, port)
    assert 0 == d.join(60)

    t = tally(tokens, mock, jq, rdb)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    t.line(
        f"gateway_down_at_start/{protocol}",
        connect_attempts_while_down=len(times),
        gaps="/".join(f"{g:.2f}" for g in gaps),
    )
    assert_resolved(t)
    assert (1000, 0, 0) == (t.delivered, t.duplicates, t.dead)
    assert 1000 == held  # while the gateway was down every job stayed in Redis, none dead
    assert 3 <= len(times) <= 9
    for k, gap in enumerate(gaps, start=1):  # after the k-th failure: full jitter in [c/2, c]
        ceiling = min(0.8, 0.2 * 2 ** (k - 1))
        assert ceiling / 2 - 0.03 <= gap <= ceiling + 0.6, (k, gap)  # upper: slack for a loaded machine
    failed = tap.events("connect_failed")
    assert [1] == [e["failures"] for e in failed]  # logged once, not on every retry
    assert 1 == len(tap.events("connect_recovered"))


@pytest.mark.timeout(30)
def test_gateway_down_connects_at_most_max_connects_per_minute(jq, rdb, make_config):
    """Even with a tiny backoff, no more than max_connects_per_minute attempts are made, and a stop returns
    every job to the queue."""
    config = make_config(
        SimpleNamespace(host="127.0.0.1", port=free_port(), protocol="http2"),
        APP_DEFAULT_MAX_CONNECTS_PER_MINUTE="3",
        APP_DEFAULT_BACKOFF_INITIAL="0.05",
        APP_DEFAULT_BACKOFF_MAX="0.05",
        WORKER_GRACE_PERIOD="0.5",
    )
    tokens, _ = make_tokens(seed=506, n=500)
    push_all(jq, [job(t) for t in tokens])
    queued = sorted(rdb.lrange(QUEUE, 0, -1))
    before = connect_failures()
    d = DaemonThread(config).start()

    times = attempt_times(time.monotonic(), 2.0, before)
    d.stop()
    assert 0 == d.join(15)

    line = (
        f"fault=connect_cap jobs=500 delivered=0 duplicates=0 dead={len(jq.dead_entries(10))} unregistered=0 "
        f"lost={500 - jq.depth(QUEUE)} connect_attempts_in_2s={len(times)}"
    )
    print(line)
    LINES.append(line)
    assert 3 == len(times)
    assert queued == sorted(rdb.lrange(QUEUE, 0, -1))
    assert [] == jq.dead_entries(10)
    assert [] == list(rdb.scan_iter(match="*:inflight*"))


def connect_attempts(app: str = "default") -> float:
    """Connections opened plus connection attempts that failed, process-wide (in-process daemons)."""
    opened = REGISTRY.get_sample_value("apnsd_connects_total", {"app": app}) or 0.0
    return opened + connect_failures(app)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_gateway_refusing_tls_sees_at_most_max_connects_per_minute(protocol, jq, rdb, pki, make_config, gateway_later):
    """A gateway that refuses our client certificate (binary: during the handshake under TLS 1.2; HTTP/2: by
    an alert right after it under TLS 1.3) sees no more than max_connects_per_minute attempts."""
    port = free_port()
    gateway_later(protocol, port)
    config = make_config(
        SimpleNamespace(host="127.0.0.1", port=port, protocol=protocol),
        APP_DEFAULT_CERT=pki.untrusted_pem,
        APP_DEFAULT_MAX_CONNECTS_PER_MINUTE="3",
        APP_DEFAULT_BACKOFF_INITIAL="0.05",
        APP_DEFAULT_BACKOFF_MAX="0.05",
        WORKER_GRACE_PERIOD="0.5",
    )
    tokens, _ = make_tokens(seed=507, n=200)
    push_all(jq, [job(t) for t in tokens])
    before = connect_attempts()
    d = DaemonThread(config).start()

    wait_for(lambda: connect_attempts() - before >= 3, 10, "the first three attempts")
    time.sleep(1.5)  # the window in which a fourth attempt would show: nothing to wait on but time
    attempts = connect_attempts() - before
    d.stop()
    assert 0 == d.join(15)

    line = f"fault=tls_refused_cap/{protocol} jobs=200 delivered=0 lost={200 - jq.depth(QUEUE)} attempts={attempts:.0f}"
    print(line)
    LINES.append(line)
    assert 3 == attempts
    assert 200 == jq.depth(QUEUE)


@pytest.mark.timeout(60)
def test_binary_gateway_rejecting_one_percent_keeps_delivering_under_the_default_cap(jq, rdb, binary_mock, make_config):
    """With the default max_connects_per_minute (6), a gateway rejecting 1 % of tokens (status 8, then an
    immediate close) gets every other notification: a reconnect after a connection that delivered is not
    held by the cap, so 51 connections take seconds, not minutes."""
    tokens, bad = make_tokens(seed=113, n=5000, bad={"bad0": 50})
    mock = binary_mock(fail_prefixes=(("bad0", 8),), hard_close=True)
    push_all(jq, [job(t) for t in tokens])

    assert 0 == run_drained(make_config(mock, APP_DEFAULT_MAX_CONNECTS_PER_MINUTE="6"))

    t = tally(tokens, mock, jq, rdb)
    t.line("one_percent_rejected/binary", connections=mock.record.connections)
    assert_resolved(t)
    assert (4950, 0) == (t.delivered, t.duplicates)
    assert bad["bad0"] == set(t.unregistered_by_token)
    assert mock.record.connections >= 51


# --- 6. Redis restart mid-stream ----------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[RedisServer]:
    """A redis-server of this test's own, with an fsync-always append-only file so it can restart."""
    server = RedisServer(persist_dir=str(tmp_path / "redis"), appendonly=True)
    (tmp_path / "redis").mkdir()
    server.start()
    yield server
    server.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_redis_restart_mid_stream_loses_nothing(protocol, own_redis, binary_mock, http2_mock, make_config):
    """Redis killed and restarted while jobs stream: the daemon keeps running, logs the outage once, and
    every job still ends in exactly one outcome."""
    client = connect(own_redis.url)
    jq = JobQueue(client, "apnsd", "test-inspector")
    tokens, bad = make_tokens(seed=606, n=20_000, bad={"bad0": 5, "bad1": 5})
    faults = (
        {"fail_prefixes": (("bad0", 8), ("bad1", 7))}
        if protocol == "binary"
        else {"reject_prefixes": (("bad0", 410, "Unregistered"), ("bad1", 400, "BadTopic"))}
    )
    mock = mock_for(protocol, binary_mock, http2_mock, **faults)
    push_all(jq, [job(t) for t in tokens])
    tap = LogTap()
    d = DaemonThread(
        make_config(mock, REDIS_URL=own_redis.url, WORKER_BATCH_SIZE="200", WORKER_MAX_IN_FLIGHT="2000"), drain=True
    ).start()

    wait_for(lambda: len(mock.record.received) >= 4000, 30, "the first deliveries")
    own_redis.kill()
    wait_for(
        lambda: [e for e in tap.events() if e["event"].startswith("redis_unavailable")],
        10,
        "the daemon to notice the outage",
    )
    time.sleep(0.5)  # the outage lasts a while: deliveries in flight finish and their commits must wait
    own_redis.start()
    assert 0 == d.join(60)

    t = tally(tokens, mock, jq, client)
    outage = [e["event"] for e in tap.events() if e["event"].startswith("redis_unavailable")]
    t.line(f"redis_restart/{protocol}", outage_log="/".join(outage))
    assert_resolved(t)
    assert 0 == t.duplicates
    assert bad["bad0"] == set(t.unregistered_by_token)
    assert bad["bad1"] == set(t.dead_by_token)
    # Each side that met the outage (taking jobs, writing outcomes) logs it once, and its end once.
    takes, commits = outage.count("redis_unavailable"), outage.count("redis_unavailable_for_outcomes")
    assert 1 <= takes + commits
    assert takes == outage.count("redis_unavailable_recovered") <= 1
    assert commits == outage.count("redis_unavailable_for_outcomes_recovered") <= 1


# --- 7. SIGTERM mid-flush -----------------------------------------------------------------------

JOBS_PER_PROCESS_TEST = 50_000


def received(mock: MockGateway) -> int:
    """Answers the mock has given so far (cheap enough to poll)."""
    return len(mock.record.received)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sigterm_mid_flush_returns_the_rest_and_a_second_run_finishes(
    protocol, jq, rdb, redis_server, pki, binary_mock, http2_mock, tmp_path
):
    """SIGTERM while streaming: exit 0 within the grace period, every job delivered or back in the queue
    (none in flight, none lost); a second run with --drain delivers the rest, each job once."""
    tokens, _ = make_tokens(seed=707, n=JOBS_PER_PROCESS_TEST)
    mock = mock_for(protocol, binary_mock, http2_mock)
    push_all(jq, [job(t) for t in tokens])
    # At most 5,000 taken ahead, so the queue still holds most jobs when the signal comes.
    env = daemon_env(
        redis_server.url,
        mock.host,
        mock.port,
        protocol,
        pki,
        tmp_path / "state",
        WORKER_GRACE_PERIOD="5",
        WORKER_MAX_IN_FLIGHT="5000",
    )
    first = DaemonProcess(env, tmp_path / "first.log")
    try:
        wait_for(lambda: received(mock) >= 10_000, 60, "the first 10,000 deliveries")
        sent = time.monotonic()
        first.signal(signal.SIGTERM)
        assert 0 == first.wait(5 + 10), first.tail()
        took = time.monotonic() - sent

        mid = tally(tokens, mock, jq, rdb, queued_ok=True)
        unsent = sum(e["notifications"] for e in first.events("returned_unsent"))
        returned = sum(e["notifications"] for e in first.events("returned_to_queue"))
        assert [] == mid.lost[:10]
        assert [] == mid.conflicts[:10]  # nothing both delivered and queued again
        assert 0 == mid.inflight
        assert mid.delivered < JOBS_PER_PROCESS_TEST  # it was stopped mid-stream
        assert [True] == [e["clean"] for e in first.events("stopped")]

        drain_with_a_new_worker(env, tmp_path / "second.log")
    finally:
        first.kill()

    t = tally(tokens, mock, jq, rdb)
    t.line(
        f"sigterm/{protocol}",
        delivered_before_stop=mid.delivered,
        queued_after_stop=mid.queued,
        returned_unsent=unsent,
        returned_unanswered_at_deadline=returned,
        stop_seconds=f"{took:.2f}",
    )
    assert_resolved(t)
    assert (JOBS_PER_PROCESS_TEST, 0) == (t.delivered, t.duplicates)


# --- 8. SIGKILL and restart ---------------------------------------------------------------------


CONFIRM_DELAY = 0.2  # what daemon_env configures
# The kill comes once the gateway has received the second number of the first: over a second into the stream for binary
# (which sends about 100,000/s here), so commits are under way and the rate is the steady one.
SIGKILL_RUN = {"binary": (200_000, 150_000), "http2": (50_000, 30_000)}  # protocol → (jobs, kill at)


def receipts_until(mock: MockGateway, count: int, timeout: float) -> list[tuple[float, int]]:
    """Wait until the gateway has received ``count``; returns (monotonic time, received so far) every ~2 ms."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while not samples or samples[-1][1] < count:
        assert time.monotonic() < deadline, f"fewer than {count} received within {timeout} s"
        samples.append((time.monotonic(), received(mock)))
        time.sleep(0.002)
    return samples


def received_since(samples: list[tuple[float, int]], since: float) -> int:
    """How many the gateway had received by ``since``, as the last sample at or before it saw."""
    return next((n for t, n in reversed(samples) if t <= since), 0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sigkill_then_a_new_worker_recovers_the_dead_ones_jobs(
    protocol, jq, rdb, redis_server, pki, binary_mock, http2_mock, tmp_path
):
    """After kill -9 a new worker recovers the dead worker's in-flight jobs once its heartbeat lapses: every
    job is delivered, duplicates only among what the dead worker held in flight. Of what the gateway had
    received at the kill, no more than it received in the last confirm_delay + COMMIT_SLICE (on binary plus one
    batch, committed whole) is delivered again; what was still in socket buffers
    reaches it after the kill and is counted apart (no sender can know whether it was read)."""
    jobs, kill_at = SIGKILL_RUN[protocol]
    tokens, _ = make_tokens(seed=808, n=jobs)
    mock = mock_for(protocol, binary_mock, http2_mock)
    push_all(jq, [job(t) for t in tokens])
    env = daemon_env(
        redis_server.url,
        mock.host,
        mock.port,
        protocol,
        pki,
        tmp_path / "state",
        WORKER_HEARTBEAT_TTL="2",
        WORKER_HEARTBEAT_INTERVAL="0.5",
        WORKER_RECOVER_INTERVAL="0.5",
    )
    first = DaemonProcess(env, tmp_path / "first.log")
    try:
        samples = receipts_until(mock, kill_at, 60)
        first.signal(signal.SIGKILL)
        at_kill, kill_t = received(mock), time.monotonic()
        assert -signal.SIGKILL == first.wait(10)
        # What was still in socket buffers reaches the gateway after the kill.
        wait_for(lambda: mock.open_connections == 0, 10, "the gateway to read what was on its way")
        in_transit = received(mock) - at_kill
        held = jq.inflight_count(QUEUE, first.worker_id)

        second = drain_with_a_new_worker(env, tmp_path / "second.log")
    finally:
        first.kill()

    t = tally(tokens, mock, jq, rdb)
    recovered = [e for e in second.events("recovered_dead_worker") if e["dead_worker"] == first.worker_id]
    # What the gateway received in the last confirm_delay + COMMIT_SLICE before the kill, counted (it reads in
    # bursts: a rate times that time over- or underestimates it by a burst).
    bound = at_kill - received_since(samples, kill_t - CONFIRM_DELAY - COMMIT_SLICE)
    rate = (at_kill - received_since(samples, kill_t - 1.0)) / 1.0
    if protocol == "binary":
        # A batch whose jobs the window holds by position is committed whole, not in 50 ms slices (its in-flight
        # list must stay as taken): the one batch straddling the confirmation point adds its confirmed part.
        bound += WorkerConfig().batch_size
    times = Counter(r.token for r in mock.record.received)
    # Of what the gateway had received when the worker died, what it received again (from the second worker).
    again = sum(1 for r in mock.record.received[:at_kill] if times[r.token] > 1)
    t.line(
        f"sigkill/{protocol}",
        held_in_flight_by_killed=held,
        recovered=sum(e["jobs"] for e in recovered),
        rate_before_kill=f"{rate:.0f}/s",
        bound_received_in_confirm_delay_plus_slice=bound,
        received_before_kill_and_again=again,
        received_after_kill=in_transit,
    )
    assert_resolved(t)
    assert jobs == t.delivered
    assert held > 0
    assert held == sum(e["jobs"] for e in recovered)
    assert t.duplicates <= held
    assert again <= bound


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_resolved_part_of_a_batch_is_committed_while_the_rest_waits(
    protocol, jq, rdb, pki, binary_mock, http2_mock, make_config
):
    """One batch for two apps, one of whose gateways is down: the delivered half is committed within a few
    slices and leaves in-flight storage, which keeps only the waiting half; a stop returns just that half."""
    mock = mock_for(protocol, binary_mock, http2_mock)
    tokens, _ = make_tokens(seed=810, n=400)
    jobs = [job(t, app="down" if i % 2 else "default") for i, t in enumerate(tokens)]
    waiting = {t for i, t in enumerate(tokens) if i % 2}
    push_all(jq, jobs)
    config = make_config(
        mock,
        WORKER_BATCH_SIZE="400",
        APP_DOWN_HOST="127.0.0.1",
        APP_DOWN_PORT=str(free_port()),
        APP_DOWN_PROTOCOL=protocol,
        APP_DOWN_CA_FILE=pki.ca_cert,
        APP_DOWN_CERT=pki.client_pem,
        WORKER_GRACE_PERIOD="0.5",
    )
    d = DaemonThread(config).start()

    wait_for(lambda: received(mock) >= 200, 30, "the reachable app's 200 deliveries")
    wait_for(lambda: jq.inflight_count(QUEUE, d.daemon.worker_id) == 200, 10, "the delivered half to be committed")
    delivered_counted = jq.counts()["total_delivered"]
    d.stop()
    assert 0 == d.join(15)

    line = (
        f"fault=gateway_down_for_half_a_batch/{protocol} jobs=400 delivered={received(mock)} "
        f"committed_while_waiting={delivered_counted}"
    )
    print(line)
    LINES.append(line)
    assert 200 == delivered_counted
    assert waiting == {msgspec.json.decode(raw)["token"] for raw in rdb.lrange(QUEUE, 0, -1)}
    assert (200, 0) == (rdb.llen(QUEUE), len(rdb.lrange("apnsd:dead", 0, -1)))


# --- 9. two workers racing to recover a dead one ------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_two_workers_recovering_the_same_dead_worker_deliver_each_job_once(
    protocol, jq, rdb, binary_mock, http2_mock, make_config
):
    """Two daemons starting together both try to recover a dead worker's batches; each job arrives once."""
    tokens, _ = make_tokens(seed=909, n=8000)
    mock = mock_for(protocol, binary_mock, http2_mock)
    push_all(jq, [job(t) for t in tokens])
    dead = JobQueue(rdb, "apnsd", "dead-worker")
    for _ in range(5):
        dead.take(QUEUE, 1000)
    rdb.sadd("apnsd:workers", "dead-worker")  # registered, but no heartbeat: it died
    tap = LogTap()

    daemons = [DaemonThread(make_config(mock, WORKER_ID=f"racer-{i}"), drain=True) for i in range(2)]
    for d in daemons:
        d.start()
    assert [0, 0] == [d.join(60) for d in daemons]

    t = tally(tokens, mock, jq, rdb)
    moved = [e["jobs"] for e in tap.events("recovered_dead_worker") if e["dead_worker"] == "dead-worker"]
    t.line(f"recovery_race/{protocol}", recovered="+".join(map(str, moved)))
    assert_resolved(t)
    assert (8000, 0) == (t.delivered, t.duplicates)
    assert 5000 == sum(moved)
    assert not rdb.sismember("apnsd:workers", "dead-worker")


# --- 10. an answer lost between daemon and Redis -----------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("step, seed", [("commit", 1010), ("take", 1111)])
def test_redis_answer_lost_after_the_command_ran_resolves_every_job_once(
    step, seed, jq, rdb, redis_server, http2_mock, make_config
):
    """The Redis connection drops right after a commit (or a take) ran and its answer never arrives: a
    retried commit must not write its dead letters twice, and a taken batch is still delivered once."""
    tokens, bad = make_tokens(seed=seed, n=3000, bad={"bad1": 600})
    mock = http2_mock(reject_prefixes=(("bad1", 400, "BadTopic"),))
    push_all(jq, [job(t) for t in tokens])
    marker = (jq._commit if step == "commit" else jq._take).sha.encode()
    cutter = RedisCutter(redis_server.port, marker, cut={2, 5, 9, 14})
    try:
        assert 0 == run_drained(make_config(mock, REDIS_URL=cutter.url, WORKER_BATCH_SIZE="100"))
    finally:
        cutter.close()

    t = tally(tokens, mock, jq, rdb)
    t.line(f"redis_{step}_answer_lost/http2", cut=cutter.cuts)
    assert 4 == cutter.cuts
    assert_resolved(t)
    assert (2400, 0) == (t.delivered, t.duplicates)
    assert (bad["bad1"], 600) == (set(t.dead_by_token), t.dead)


# --- 11. a worker that stops heartbeating while holding jobs ------------------------------------


@pytest.mark.timeout(60)
def test_drain_waits_for_a_stalled_worker_then_recovers_its_jobs(jq, rdb, http2_mock, make_config):
    """A worker holding jobs (one of them not even UTF-8) stops heartbeating: a draining worker waits for
    it instead of declaring itself done, recovers its jobs once the heartbeat lapses, and resolves each once."""
    tokens, _ = make_tokens(seed=1212, n=1000)
    garbage = b"\xff\xfe not json"
    mock = http2_mock()
    push_all(jq, [job(t) for t in tokens[:500]] + [garbage] + [job(t) for t in tokens[500:]])
    peer = JobQueue(rdb, "apnsd", "stalled-peer")
    peer.heartbeat(2.0, {"worker": "stalled-peer"})  # alive for two more seconds, then silent
    _, held = peer.take(QUEUE, 600)
    tap = LogTap()

    config = make_config(mock, WORKER_HEARTBEAT_INTERVAL="0.5", WORKER_HEARTBEAT_TTL="2", WORKER_RECOVER_INTERVAL="0.5")
    assert 0 == DaemonThread(config, drain=True).start().join(30)

    t = tally(tokens, mock, jq, rdb)
    recovered = [e["jobs"] for e in tap.events("recovered_dead_worker") if e["dead_worker"] == "stalled-peer"]
    t.line("stalled_worker/http2", held_by_stalled=len(held), recovered="+".join(map(str, recovered)))
    assert_resolved(t)
    assert (1000, 0) == (t.delivered, t.duplicates)
    assert [600] == recovered
    assert ["not_json"] == [e["reason"] for e in jq.dead_entries(10)]
