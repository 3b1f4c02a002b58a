"""`apnsd demo`: starts a throwaway local redis-server and the mock gateway, enqueues sample jobs and
delivers them, so a fresh machine shows the whole path working without touching Apple or real data."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import msgspec

from apnsd import logs
from apnsd.config import load_config
from apnsd.store.queue import JobQueue, connect
from apnsd.testing.daemon_env import mock_app_env
from apnsd.testing.devpki import make_dev_pki
from apnsd.testing.mock import MockGateway
from apnsd.testing.redis_server import RedisServer, free_port
from apnsd.worker.daemon import Daemon

UNREGISTERED_PREFIX = "dead"


def sample_jobs(count: int) -> list[bytes]:
    """``count`` valid jobs plus three that show the other outcomes (dead letter, unregistered)."""
    jobs = [
        msgspec.json.encode(
            {
                "token": os.urandom(32).hex(),
                "id": f"demo-{i}",
                "payload": {"aps": {"alert": f"Server {i % 7} is down", "badge": 1, "sound": "default"}},
            }
        )
        for i in range(count)
    ]
    jobs.append(b'{"token": "not json')
    jobs.append(
        msgspec.json.encode(
            {"token": "{length = 32, bytes = 0x965b251e ... 376eab7c }", "payload": {"aps": {"alert": "x"}}}
        )
    )
    jobs.append(
        msgspec.json.encode(
            {"token": UNREGISTERED_PREFIX + os.urandom(30).hex(), "payload": {"aps": {"alert": "gone"}}}
        )
    )
    return jobs


def run_demo(count: int, drain: bool) -> int:
    """Run the daemon against throwaway local Redis and mock gateway; with ``drain``, stop when done."""
    from apnsd.testing.http2_mock import Http2Faults

    logs.configure("auto", "info", sys.stderr)
    home = Path(tempfile.gettempdir()) / "apnsd-demo"
    pki = make_dev_pki(str(home / "pki"))
    with (
        RedisServer() as redis,
        MockGateway(
            "http2",
            pki.server_cert,
            pki.server_key,
            pki.ca_cert,
            http2_faults=Http2Faults(reject_prefixes=((UNREGISTERED_PREFIX, 410, "Unregistered"),)),
        ) as mock,
    ):
        env = mock_app_env(
            redis.url,
            mock,
            pki,
            str(home / "state"),
            APNSD_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
            APNSD_WORKER_GRACE_PERIOD="5",
        )
        config = load_config(None, env)
        q = JobQueue(connect(redis.url), config.redis.prefix, "demo")
        jobs = sample_jobs(count)
        q.push(config.queue_key(config.apps["default"]), jobs)
        print(
            f"apnsd demo: local redis-server on {redis.url}, mock HTTP/2 gateway on {mock.host}:{mock.port}; "
            f"enqueued {len(jobs)} sample jobs (3 of them deliberately bad).",
            file=sys.stderr,
        )
        if not drain:
            print(
                f"Push more from another shell: APNSD_REDIS_URL={redis.url} apnsd push --token {'ab' * 32} "
                "--alert hello   (Ctrl-C stops the demo)",
                file=sys.stderr,
            )
        rc = Daemon(config, drain=drain).run()
        counts = q.counts()
        summary = mock.record.summary()
    print(
        f"\napnsd demo summary: gateway accepted {summary['accepted']} notifications over {summary['connections']} "
        f"TLS connection(s); delivered {counts.get('total_delivered', 0)}, dead-lettered {counts['dead']}, "
        f"unregistered {counts['unregistered']}."
    )
    return rc
