"""Redis deployments users run: a unix socket, Sentinel with a failover mid-stream, and a sharded Cluster,
each a set of real redis-server processes started here."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
import redis
from redis.crc import key_slot

from apnsd.config import load_config
from apnsd.errors import ConfigError, QueueError
from apnsd.store.queue import Commit, JobQueue, Keys, client_for, connect
from apnsd.worker.daemon import Daemon
from tests.support.jobs import good_tokens, inflight_keys, job, push_all, run_drained
from tests.support.redis_topologies import REDIS_ERRORS, ClusterSetup, Node, SentinelSetup
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def sentinel_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A master, a replica and three sentinels for this module."""
    setup = SentinelSetup(tmp_path_factory.mktemp("sentinel")).start()
    yield setup
    setup.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    """Three cluster masters for this module."""
    setup = ClusterSetup(tmp_path_factory.mktemp("cluster")).start()
    yield setup
    setup.stop()


def sentinel_env(setup: SentinelSetup) -> dict[str, str]:
    """The APNSD_* settings that point apnsd at the sentinels."""
    return {"REDIS_SENTINELS": ",".join(setup.addrs), "REDIS_SERVICE": "mymaster", "REDIS_URL": "redis://sentinel/0"}


# --- configuration -------------------------------------------------------------------------------


def test_sentinels_come_from_a_comma_separated_environment_variable():
    """APNSD_REDIS_SENTINELS="h:p,h:p" becomes the list of sentinel addresses."""
    config = load_config(
        None, {"APNSD_REDIS_SENTINELS": "127.0.0.1:26379, 127.0.0.1:26380", "APNSD_REDIS_SERVICE": "pushes"}
    )

    assert (("127.0.0.1:26379", "127.0.0.1:26380"), "pushes") == (config.redis.sentinels, config.redis.service)


def test_cluster_mode_wraps_the_prefix_as_a_hash_tag():
    """With cluster = true the shared keys and the default queue live in the slot of {apnsd}."""
    config = load_config(None, {"APNSD_REDIS_CLUSTER": "true"})

    assert {"{apnsd}:queue": ["default"]} == config.queues()


def test_shards_give_each_queue_its_own_hash_tag():
    """shards = N gives N queues apnsd:{0}:queue … apnsd:{N-1}:queue, and a token always picks the same one."""
    config = load_config(None, {"APNSD_REDIS_CLUSTER": "true", "APNSD_REDIS_SHARDS": "3"})
    app = config.apps["default"]

    assert ["apnsd:{0}:queue", "apnsd:{1}:queue", "apnsd:{2}:queue"] == list(config.queues())
    assert config.queue_key(app, "ab" * 32) == config.queue_key(app, "ab" * 32)
    assert 3 == len({config.queue_key(app, t) for t in good_tokens(50)})


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"APNSD_REDIS_SENTINELS": "127.0.0.1"}, "redis.sentinels"),
        ({"APNSD_REDIS_SENTINELS": "127.0.0.1:1", "APNSD_REDIS_CLUSTER": "true"}, "redis.cluster"),
        ({"APNSD_REDIS_SENTINELS": "127.0.0.1:1", "APNSD_REDIS_URL": "unix:///tmp/r.sock"}, "redis.url"),
        ({"APNSD_REDIS_CLUSTER": "true", "APNSD_REDIS_URL": "redis://127.0.0.1:7000/3"}, "redis.url"),
        ({"APNSD_REDIS_CLUSTER": "true", "APNSD_APP_DEFAULT_QUEUE": "pushes"}, "apps.default.queue"),
        ({"APNSD_REDIS_SSL_CA_FILE": "/ca.pem"}, "redis.ssl_ca_file"),
        ({"APNSD_REDIS_SHARDS": "-1"}, "redis.shards"),
    ],
)
def test_impossible_redis_settings_fail_naming_the_key(env, key):
    """Sentinel, cluster and TLS settings that cannot work are refused at start with the key's name."""
    with pytest.raises(ConfigError) as err:
        load_config(None, env)

    assert key == err.value.key


# --- queue behaviour any deployment relies on ------------------------------------------------------


def test_a_repeated_take_into_the_same_field_returns_that_batch_and_takes_nothing_more(jq):
    """A take resent after a lost answer gives back the batch it took, instead of overwriting it."""
    jq.push("apnsd:queue", [job(t) for t in good_tokens(6)])
    w = JobQueue(jq.client, "apnsd", "w1")

    first = w.take("apnsd:queue", 3, "42")[1]
    again = w.take("apnsd:queue", 3, "42")[1]

    assert first == again
    assert (3, 3) == (jq.depth("apnsd:queue"), w.inflight_count("apnsd:queue", "w1"))


def test_batches_the_process_no_longer_holds_go_back_to_the_queue(jq):
    """requeue_orphans returns in-flight batches missing from the held set, oldest first, and keeps held ones."""
    items = [job(t) for t in good_tokens(6)]
    jq.push("apnsd:queue", items)
    w = JobQueue(jq.client, "apnsd", "w1")
    w.take("apnsd:queue", 2, "1")
    w.take("apnsd:queue", 2, "2")
    w.take("apnsd:queue", 2, "3")

    moved = w.requeue_orphans("apnsd:queue", lambda: {"2"})

    assert 4 == moved
    assert items[:2] + items[4:] == jq.take("apnsd:queue", 10)[1]
    assert 2 == w.inflight_count("apnsd:queue", "w1")


# --- unix socket ---------------------------------------------------------------------------------


def test_unix_socket_url_delivers_end_to_end(tmp_path, jq, rdb, http2_mock, make_config):
    """A unix:// URL works for the daemon and for applications pushing jobs."""
    server = Node(tmp_path / "unix", [], unix=True).start()
    try:
        url = f"unix://{server.socket}?db=0"
        tokens = good_tokens(500, seed=11)
        push_all(JobQueue(connect(url), "apnsd", "app"), [job(t) for t in tokens])
        mock = http2_mock()

        assert 0 == run_drained(make_config(mock, REDIS_URL=url))

        assert dict.fromkeys(tokens, 1) == dict(mock.record.accepted_tokens())
        assert 0 == server.client().llen("apnsd:queue")
        assert [] == inflight_keys(server.client())
        assert 0 == rdb.dbsize()  # nothing went to the TCP test server
    finally:
        server.stop()


def test_rediss_url_with_client_certificate_delivers_end_to_end(tmp_path, pki, http2_mock, make_config):
    """rediss:// with redis.ssl_ca_file, ssl_cert_file and ssl_key_file reaches a TLS-only server that
    requires client certificates."""
    tls = {
        "server_cert": pki.server_cert,
        "server_key": pki.server_key,
        "ca_cert": pki.ca_cert,
        "client_cert": pki.client_cert,
        "client_key": pki.client_key,
    }
    server = Node(tmp_path / "tls", [], tls=tls).start()
    try:
        mock = http2_mock()
        config = make_config(
            mock,
            REDIS_URL=f"rediss://127.0.0.1:{server.port}/0",
            REDIS_SSL_CA_FILE=pki.ca_cert,
            REDIS_SSL_CERT_FILE=pki.client_cert,
            REDIS_SSL_KEY_FILE=pki.client_key,
        )
        tokens = good_tokens(300, seed=17)
        push_all(JobQueue(client_for(config.redis), "apnsd", "app"), [job(t) for t in tokens])

        assert 0 == run_drained(config)

        assert dict.fromkeys(tokens, 1) == dict(mock.record.accepted_tokens())
        assert (0, []) == (server.client().llen("apnsd:queue"), inflight_keys(server.client()))
    finally:
        server.stop()


# --- Sentinel ------------------------------------------------------------------------------------


def test_sentinel_master_delivers_end_to_end(sentinel_setup, http2_mock, make_config):
    """With redis.sentinels the daemon finds the master through the sentinels and delivers everything once."""
    mock = http2_mock()
    config = make_config(mock, **sentinel_env(sentinel_setup))
    q = JobQueue(client_for(config.redis), "apnsd", "app")
    q.client.flushall()
    tokens = good_tokens(1000, seed=12)
    push_all(q, [job(t) for t in tokens])

    assert 0 == run_drained(config)

    assert dict.fromkeys(tokens, 1) == dict(mock.record.accepted_tokens())
    master = sentinel_setup.current_master().client()
    assert (0, []) == (master.llen("apnsd:queue"), inflight_keys(master))


def deliver_through(
    setup: SentinelSetup, mock: Any, make_config: Any, seed: int, fail_over: Callable[[], Node]
) -> tuple[Counter[str], list[str], int, Node]:
    """Stream 1,500 jobs through a draining daemon and call ``fail_over`` once a third is delivered;
    returns (accepted per token, the tokens, deliveries before the failover, the new master)."""
    config = make_config(
        mock,
        **sentinel_env(setup),
        WORKER_BATCH_SIZE="50",
        WORKER_MAX_IN_FLIGHT="50",
        WORKER_HEARTBEAT_INTERVAL="0.5",
        WORKER_HEARTBEAT_TTL="5",
        WORKER_RECOVER_INTERVAL="0.5",
        REDIS_SOCKET_TIMEOUT="2",
    )
    q = JobQueue(client_for(config.redis), "apnsd", "app")
    q.client.flushall()
    tokens = good_tokens(1500, seed=seed)
    push_all(q, [job(t) for t in tokens])
    assert 1 <= q.client.wait(1, 5000)  # the replica holds every job before the failover starts
    daemon, result = Daemon(config, drain=True), []
    runner = threading.Thread(target=lambda: result.append(daemon.run()), daemon=True)
    runner.start()
    try:
        wait_for(
            lambda: sum(mock.record.accepted_tokens().values()) >= 500, 30, "a third delivered", ignore=REDIS_ERRORS
        )
        new = fail_over()
        at_failover = sum(mock.record.accepted_tokens().values())
        runner.join(60)
        assert not runner.is_alive(), "daemon did not drain within 60 s of the failover"
    finally:
        daemon.request_stop()
        runner.join(30)
    accepted = mock.record.accepted_tokens()
    print(
        f"failover after {at_failover} deliveries; {len(accepted)} tokens delivered, "
        f"{sum(n - 1 for n in accepted.values())} duplicates"
    )
    assert [0] == result
    assert sum(accepted.values()) > at_failover
    return accepted, tokens, at_failover, new


def assert_nothing_left(master: Node) -> None:
    """The node is the master and holds no queued, scheduled or in-flight job."""
    c = master.client()
    assert "master" == c.info("replication")["role"]
    assert (0, 0, []) == (c.llen("apnsd:queue"), c.zcard("apnsd:scheduled"), inflight_keys(c))


def test_sentinel_failover_mid_stream_loses_no_job(sentinel_setup, binary_mock, make_config):
    """SENTINEL FAILOVER while jobs stream (the old master stays up and writable for a while) is followed to
    the new master; every job is delivered at least once and nothing is left queued or in flight."""
    mock = binary_mock()

    accepted, tokens, _, new = deliver_through(
        sentinel_setup, mock, make_config, 13, lambda: sentinel_setup.failover()[1]
    )

    assert set(tokens) == set(accepted)
    assert_nothing_left(new)


def test_sentinel_master_killed_mid_stream_loses_no_job(sentinel_setup, binary_mock, make_config):
    """The master killed by SIGKILL while jobs stream: the sentinels promote the replica, the daemon rides out
    the outage and follows; every job is delivered at least once and nothing is left queued or in flight."""
    sentinel_setup.wait_demoted()  # a previous failover's old master must be an in-sync replica again
    mock = binary_mock()

    def kill_master() -> Node:
        old = sentinel_setup.current_master()
        old.kill()
        new = sentinel_setup.replica if old is sentinel_setup.master else sentinel_setup.master
        wait_for(
            lambda: sentinel_setup.master_port() == new.port,
            30,
            "the sentinels promote the replica",
            ignore=REDIS_ERRORS,
        )
        return new

    accepted, tokens, _, new = deliver_through(sentinel_setup, mock, make_config, 16, kill_master)

    assert set(tokens) == set(accepted)
    assert_nothing_left(new)


# --- Cluster -------------------------------------------------------------------------------------


def cluster_env(cluster: ClusterSetup, shards: int) -> dict[str, str]:
    """The APNSD_* settings for the test cluster with ``shards`` queues."""
    return {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true", "REDIS_SHARDS": str(shards)}


def test_sharded_queues_spread_over_the_cluster_deliver_every_job_exactly_once(cluster, http2_mock, make_config):
    """Jobs pushed to shard queues on different masters, with retries, unregistered tokens and bad jobs,
    each get exactly one outcome: in-flight, scheduled and outcome keys each stay within one slot."""
    cluster.flush()
    mock = http2_mock(reject_prefixes=(("bad0", 410, "Unregistered"),), burst_status=(503, "ServiceUnavailable", 30))
    config = make_config(mock, **cluster_env(cluster, 4), APP_DEFAULT_MAX_ATTEMPTS="10")
    shards = list(config.queues())
    assert 3 == len({cluster.node_of_slot(key_slot(s.encode())) for s in shards})
    q = JobQueue(client_for(config.redis), "apnsd", "app")
    tokens = good_tokens(2000, seed=14)
    gone = ["bad0" + t[4:] for t in good_tokens(5, seed=15)]
    bad = [b"{not json", job("zz" * 32)]
    app = config.apps["default"]
    for t in tokens + gone:
        q.push(config.queue_key(app, t), [job(t)])
    q.push(shards[0], bad)

    assert 0 == run_drained(config)

    assert dict.fromkeys(tokens, 1) == dict(mock.record.accepted_tokens())
    assert set(gone) == set(q.unregistered())
    assert ["bad_token", "not_json"] == sorted(e["reason"] for e in q.dead_entries(10))
    assert {
        "dead": 2,
        "unregistered": 5,
        "total_delivered": 2000,
        "total_dead": 2,
        "total_unregistered": 5,
        "total_retry": 30,
    } == q.counts()
    assert all(0 == q.depth(s) == q.scheduled_count(s) for s in shards)
    assert [] == cluster.keys("*:inflight*")


def test_a_dead_workers_batches_on_every_shard_are_recovered_once(cluster):
    """requeue_from_dead_workers checks the heartbeat (prefix slot), then moves each shard's in-flight jobs in
    its own slot; two racing rescuers together move every job exactly once."""
    cluster.flush()
    config = load_config(
        None, {"APNSD_REDIS_URL": cluster.url, "APNSD_REDIS_CLUSTER": "true", "APNSD_REDIS_SHARDS": "3"}
    )
    shards = list(config.queues())
    dead = JobQueue(client_for(config.redis), "apnsd", "dead-worker")
    for i, s in enumerate(shards):
        dead.push(s, [job(t) for t in good_tokens(20, seed=20 + i)])
        dead.take(s, 15)
    dead.heartbeat(0.2, {"worker": "dead-worker"})
    wait_for(lambda: dead.heartbeat_of("dead-worker") is None, 15.0, "heartbeat lapsed", ignore=REDIS_ERRORS)
    rescuers = [JobQueue(client_for(config.redis), "apnsd", f"rescuer{i}") for i in range(2)]
    moved: list[dict[str, int]] = []
    threads = [threading.Thread(target=lambda r=r: moved.append(r.requeue_from_dead_workers(shards))) for r in rescuers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert 45 == sum(m.get("dead-worker", 0) for m in moved)
    assert [20, 20, 20] == [dead.depth(s) for s in shards]
    assert [] == cluster.keys("*:inflight*")
    assert [] == [w for w, _ in dead.workers()]


def connection_lost(*_: Any, **__: Any) -> None:
    """Stands in for a write whose connection dropped."""
    raise redis.exceptions.ConnectionError("connection lost (injected)")


def test_a_commit_across_slots_that_fails_halfway_is_finished_without_repeating_outcomes(cluster, monkeypatch):
    """In cluster mode outcomes are written first, with a marker; a retry after the queue-slot half failed
    skips them, even when the answer to the outcome half was lost too."""
    cluster.flush()
    config = load_config(
        None, {"APNSD_REDIS_URL": cluster.url, "APNSD_REDIS_CLUSTER": "true", "APNSD_REDIS_SHARDS": "2"}
    )
    shard = list(config.queues())[1]
    q = JobQueue(client_for(config.redis), "apnsd", "w1")
    q.push(shard, [job(t) for t in good_tokens(2)])
    field, _ = q.take(shard, 2)
    c = Commit(
        shard, field, dead=[b'{"reason":"x"}'], scheduled={job("cd" * 32): 1e10}, counts={"delivered": 1, "dead": 1}
    )
    monkeypatch.setattr(q, "_commit_queue", connection_lost)  # the link drops between the two transactions
    with pytest.raises(QueueError):
        q.commit(c)
    monkeypatch.undo()
    c.outcomes_written = False  # as if the answer to the outcome transaction had been lost too

    q.commit(c)

    assert {"dead": 1, "unregistered": 0, "total_delivered": 1, "total_dead": 1} == q.counts()
    assert (1, 0) == (q.scheduled_count(shard), q.inflight_count(shard, "w1"))


def test_dead_letters_go_back_to_a_shard_in_another_slot(cluster):
    """apnsd dead requeue moves an entry from {apnsd}:dead to a shard queue in another slot, once."""
    cluster.flush()
    config = load_config(None, {f"APNSD_{k}": v for k, v in cluster_env(cluster, 2).items()})
    q = JobQueue(client_for(config.redis), "apnsd", "cli")
    raw = job("ab" * 32)
    q.client.lpush(q.keys.dead, msgspec.json.encode({"reason": "app_disabled", "app": "default", "job": raw.decode()}))
    target = config.queue_key(config.apps["default"])

    moved = q.requeue_dead({"default": target}, target, 10, None)

    assert (1, 0, [raw]) == (moved, q.counts()["dead"], q.client.lrange(target, 0, -1))


def test_a_cluster_without_a_reachable_node_is_a_retryable_queue_error(tmp_path):
    """redis-py's cluster errors that are not RedisErrors ("no reachable node") still become QueueError,
    which the loops retry with backoff, instead of ending a delivery thread."""
    down = ClusterSetup(tmp_path / "down").start()
    q = JobQueue(
        client_for(load_config(None, {"APNSD_REDIS_URL": down.url, "APNSD_REDIS_CLUSTER": "true"}).redis), "apnsd", "w1"
    )
    down.stop()

    with pytest.raises(QueueError) as err:
        q.take("{apnsd}:queue", 10)

    assert err.value.retryable


def test_queue_keys_and_scripts_stay_in_one_slot():
    """Each shard's in-flight and scheduled keys share its slot; the shared keys share the prefix's slot."""
    config = load_config(None, {"APNSD_REDIS_CLUSTER": "true", "APNSD_REDIS_SHARDS": "4"})
    keys = Keys(config.redis.key_prefix)

    for shard in config.queues():
        assert {key_slot(shard.encode())} == {
            key_slot(k.encode()) for k in (keys.inflight(shard, "w"), keys.scheduled(shard))
        }
    shared = [
        keys.dead,
        keys.unregistered,
        keys.results,
        keys.stats,
        keys.workers,
        keys.heartbeat("w"),
        keys.default_queue,
        keys.scheduled(keys.default_queue),
        keys.inflight(keys.default_queue, "w"),
    ]
    assert 1 == len({key_slot(k.encode()) for k in shared})


def test_python_client_from_config_pushes_onto_the_tokens_shard(cluster):
    """apnsd.client.Client.from_config talks to the cluster and puts each job on its token's shard."""
    from apnsd.client import Client

    cluster.flush()
    config = load_config(
        None, {"APNSD_REDIS_URL": cluster.url, "APNSD_REDIS_CLUSTER": "true", "APNSD_REDIS_SHARDS": "3"}
    )
    client = Client.from_config(config)
    tokens = good_tokens(30, seed=31)
    for t in tokens:
        client.enqueue(t, {"aps": {"alert": "hi"}})

    q = JobQueue(client_for(config.redis), "apnsd", "inspector")
    app = config.apps["default"]
    expected = Counter(config.queue_key(app, t) for t in tokens)
    assert expected == Counter({s: q.depth(s) for s in config.queues() if q.depth(s)})


def test_lanes_and_throttles_on_a_sharded_cluster_deliver_every_job_once(cluster, http2_mock, make_config):
    """Each shard's lanes and token buckets share its slot: one script takes them, and every job is delivered once."""
    cluster.flush()
    mock = http2_mock()
    lanes = {"APP_DEFAULT_LANES": "urgent,default,bulk", "APP_DEFAULT_MAX_RATE": "100000"}
    config = make_config(mock, **cluster_env(cluster, 3), **lanes)
    q = JobQueue(client_for(config.redis), "apnsd", "app")
    tokens = good_tokens(300, seed=16)
    app = config.apps["default"]
    for i, t in enumerate(tokens):
        lane = ("urgent", "default", "bulk")[i % 3]
        q.push(f"{config.queue_key(app, t)}:{lane}" if lane != "default" else config.queue_key(app, t), [job(t)])

    assert 0 == run_drained(config)

    assert dict.fromkeys(tokens, 1) == dict(mock.record.accepted_tokens())
    for shard in config.queues():
        keys = [*config.lanes(shard), q.keys.throttle(shard), *map(q.keys.lane_throttle, config.lanes(shard))]
        assert {key_slot(shard.encode())} == {key_slot(k.encode()) for k in keys}
        assert all(0 == q.depth(lane) for lane in config.lanes(shard))
    assert [] == cluster.keys("*:inflight*")
