"""Real Redis deployments for tests: a unix-socket server, Sentinel (master, replica, sentinels) and a
three-master Cluster, each made of redis-server child processes on loopback, stopped by their PIDs."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
from pathlib import Path

import redis

from apnsd.testing.redis_server import free_port, kill_process, stop_process
from tests.support.wait import wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_ERRORS = (redis.RedisError, OSError)
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
SERVICE = "mymaster"


def free_cluster_port() -> int:
    """A free port P below 55536 whose cluster bus port P + 10000 is free too."""
    for _ in range(200):
        port = random.randrange(20_000, 45_000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
            return port
        except OSError:
            continue
    raise AssertionError("no free port pair for a cluster node")


class Node:
    """One redis-server (or sentinel) process with its own config file and folder."""

    def __init__(
        self,
        folder: Path,
        lines: list[str],
        *,
        port: int = 0,
        unix: bool = False,
        sentinel: bool = False,
        tls: dict[str, str] | None = None,
    ) -> None:
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port if port or unix else free_port()
        self.socket = str(self.dir / "redis.sock") if unix else ""
        self.sentinel = sentinel
        self.tls = (
            tls  # server_cert, server_key, ca_cert, client_cert, client_key: TLS only, client certificates required
        )
        base = [
            f"port {0 if tls else self.port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            "loglevel warning",
            f"logfile {self.dir / 'redis.log'}",
        ]
        if tls:
            base += [
                f"tls-port {self.port}",
                f"tls-cert-file {tls['server_cert']}",
                f"tls-key-file {tls['server_key']}",
                f"tls-ca-cert-file {tls['ca_cert']}",
                "tls-auth-clients yes",
            ]
        if not sentinel:
            base += ['save ""', "appendonly no"]
        if unix:
            base += [f"unixsocket {self.socket}", "unixsocketperm 700"]
        self.conf = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        self.conf.write_text("\n".join(base + lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        """host:port"""
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        """A plain client on this very node (no Sentinel or Cluster routing)."""
        if self.socket:
            return redis.Redis(unix_socket_path=self.socket, socket_timeout=2)
        if self.tls:
            return redis.Redis(
                host="127.0.0.1",
                port=self.port,
                socket_timeout=2,
                ssl=True,
                ssl_ca_certs=self.tls["ca_cert"],
                ssl_certfile=self.tls["client_cert"],
                ssl_keyfile=self.tls["client_key"],
            )
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> Node:
        """Start and wait until it answers PING."""
        args = [REDIS_SERVER, str(self.conf)] + (["--sentinel"] if self.sentinel else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(
            lambda: self._alive() and self.client().info("server")["process_id"] == self.proc.pid,  # type: ignore[union-attr]
            15.0,
            f"redis node {self.addr or self.socket} up",
            ignore=REDIS_ERRORS,
        )
        return self

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"redis-server {self.conf} exited: see {self.dir / 'redis.log'}")
        return True

    def kill(self) -> None:
        """SIGKILL by PID: a crash."""
        kill_process(self.proc)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it does not go."""
        stop_process(self.proc)
        self.proc = None


class SentinelSetup:
    """A master, one replica and three sentinels (quorum 2) monitoring it as ``mymaster``."""

    def __init__(self, folder: Path) -> None:
        self.master = Node(folder / "master", [])
        self.replica = Node(folder / "replica", [f"replicaof 127.0.0.1 {self.master.port}"])
        self.sentinels = [
            Node(
                folder / f"sentinel{i}",
                [
                    f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2",
                    f"sentinel down-after-milliseconds {SERVICE} 1000",
                    f"sentinel failover-timeout {SERVICE} 10000",
                    f"sentinel parallel-syncs {SERVICE} 1",
                ],
                sentinel=True,
            )
            for i in range(3)
        ]

    @property
    def addrs(self) -> list[str]:
        """The sentinels as host:port, the way apnsd's config lists them."""
        return [s.addr for s in self.sentinels]

    def start(self) -> SentinelSetup:
        """Start everything and wait until the sentinels see the replica and each other."""
        self.master.start()
        self.replica.start()
        wait_for(
            lambda: self.replica.client().info("replication")["master_link_status"] == "up",
            15.0,
            "replica in sync",
            ignore=REDIS_ERRORS,
        )
        for s in self.sentinels:
            s.start()
        for s in self.sentinels:
            wait_for(lambda s=s: self._sees_replica(s.client()), 30, "sentinel sees the replica", ignore=REDIS_ERRORS)
        return self

    @staticmethod
    def _sees_replica(c: redis.Redis) -> bool:
        replicas = c.sentinel_slaves(SERVICE)
        return len(replicas) == 1 and replicas[0]["is_slave"] and not replicas[0]["is_disconnected"]

    def master_port(self, sentinel: int = 0) -> int:
        """The master's port as one sentinel reports it."""
        return int(self.sentinels[sentinel].client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1])

    def current_master(self) -> Node:
        """The node the sentinels name as master."""
        port = self.master_port()
        return self.master if port == self.master.port else self.replica

    def failover(self, timeout: float = 30.0) -> tuple[Node, Node]:
        """SENTINEL FAILOVER (the old master stays up); returns (old, new) once every sentinel names the new one."""
        old = self.current_master()
        new = self.replica if old is self.master else self.master
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", SERVICE)
        wait_for(
            lambda: all(self.master_port(i) == new.port for i in range(len(self.sentinels))),
            timeout,
            "every sentinel names the new master",
            ignore=REDIS_ERRORS,
        )
        return old, new

    def wait_demoted(self, timeout: float = 30.0) -> None:
        """Until the node the sentinels do not name as master is an in-sync replica (after a failover)."""
        other = self.replica if self.current_master() is self.master else self.master
        wait_for(
            lambda: other.client().info("replication").get("master_link_status") == "up",
            timeout,
            "old master demoted and in sync",
            ignore=REDIS_ERRORS,
        )

    def stop(self) -> None:
        """Stop every process by PID."""
        for n in [*self.sentinels, self.replica, self.master]:
            n.stop()


class ClusterSetup:
    """Three cluster-enabled masters on loopback, slots split by ``redis-cli --cluster create``."""

    def __init__(self, folder: Path, masters: int = 3) -> None:
        self.nodes = [
            Node(
                folder / f"node{i}",
                port=free_cluster_port(),
                lines=["cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 5000"],
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        """A URL of one node: apnsd discovers the rest."""
        return f"redis://{self.nodes[0].addr}/0"

    def start(self) -> ClusterSetup:
        """Start the nodes, create the cluster and wait until every node reports it healthy."""
        for n in self.nodes:
            n.start()
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(n.addr for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for n in self.nodes:
            wait_for(
                lambda n=n: n.client().cluster("info")["cluster_state"] == "ok",
                30,
                "cluster_state:ok",
                ignore=REDIS_ERRORS,
            )
        return self

    def node_of_slot(self, slot: int) -> str:
        """host:port of the master serving a slot."""
        for lo, hi, master, *_ in self.nodes[0].client().cluster("slots"):
            if lo <= slot <= hi:
                return f"{master[0].decode() if isinstance(master[0], bytes) else master[0]}:{master[1]}"
        raise AssertionError(f"slot {slot} is not served")

    def keys(self, pattern: str) -> list[bytes]:
        """Matching keys on every node."""
        return [k for n in self.nodes for k in n.client().scan_iter(match=pattern)]

    def flush(self) -> None:
        """Empty every node."""
        for n in self.nodes:
            n.client().flushall()

    def stop(self) -> None:
        """Stop every node by PID."""
        for n in self.nodes:
            n.stop()
