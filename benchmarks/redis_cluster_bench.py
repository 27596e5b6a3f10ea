"""Recovery on one Redis node vs a Redis Cluster: snapshot time, restore time, write rate.

    python benchmarks/redis_cluster_bench.py [--quick] [--keys N] [--changed N] [--epochs N]
                                             [--workers N] [--json out.json]

The recovery store itself, without a dataflow around it: ``--workers``
processes (default 4) each own an equal share of 256 key groups, as the
workers of a run do, and each writes its share of an epoch with
``Store.write_epoch`` on its own connection, all at once (a barrier per
epoch); then worker 0 commits (``Store.commit``, which checks the
manifest first). Epoch 1 writes every key (``--keys``, default 1,000,000,
values of 8 bytes); each of the next ``--epochs`` (default 5) changes
``--changed`` keys (default 100,000) spread over every group. *Snapshot*
is the time of one of those epochs from the barrier to the commit: the
slowest worker's write plus the commit. *Restore* is a fresh handle per
worker loading its key groups (``Store.load``) of the committed state, all
at once, slowest worker. *Write rate* is changed entries per second of
snapshot time.

Stores (all ``redis-server`` processes on loopback, append-only file,
``appendfsync everysec``): one node (``redis://``, every key under one
hash tag), and a cluster (``redis+cluster://``, a hash tag per key group)
of 1, 2 and 3 primaries, and of 3 primaries with a replica each; the
clusters are made with ``CLUSTER ADDSLOTSRANGE``/``MEET``/``REPLICATE``.
One run measures every store, so the table compares like with like.
The machine's cores bound the gain from more primaries: every Redis
process and every writer share them (``cores`` in the output).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

KEY_GROUPS = 256


def _free_ports(n: int) -> list[int]:
    """``n`` free loopback ports below 55000 (a cluster node's bus port is port + 10000)."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = int(s.getsockname()[1])
        if p < 55000 and p not in out:
            out.append(p)
    return out


class Servers:
    """``n`` redis-server processes; ``cluster`` makes them a Redis Cluster with ``primaries``."""

    def __init__(self, n: int, cluster: bool, primaries: int = 0) -> None:
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="bench-cluster-")
        self.ports = _free_ports(n)
        self.procs = []
        for port in self.ports:
            d = Path(self.dir) / str(port)
            d.mkdir()
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"] if cluster else []
            self.procs.append(
                subprocess.Popen(
                    [
                        *(exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d)),
                        *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
                        *("--protected-mode", "no", *extra),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self.clients = [redis.Redis(port=p) for p in self.ports]
        self._wait(lambda: all(self._ping(c) for c in self.clients))
        if cluster:
            self._form(primaries)

    @staticmethod
    def _ping(c: Any) -> bool:
        try:
            return bool(c.ping())
        except Exception:
            return False

    def _wait(self, cond: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("the Redis servers did not come up")
            time.sleep(0.05)

    def _form(self, primaries: int) -> None:
        first = self.clients[0]
        for port in self.ports[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        per = 16384 // primaries
        for i, c in enumerate(self.clients[:primaries]):
            hi = 16383 if i == primaries - 1 else (i + 1) * per - 1
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, hi)
        self._wait(
            lambda: all(
                len(c.execute_command("CLUSTER", "NODES").splitlines()) == len(self.ports)
                for c in self.clients
            )
        )
        ids = [c.execute_command("CLUSTER", "MYID").decode() for c in self.clients]
        for i, c in enumerate(self.clients[primaries:]):
            c.execute_command("CLUSTER", "REPLICATE", ids[i % primaries])
        self._wait(
            lambda: all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for c in self.clients)
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def cluster_url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _worker(
    i: int,
    n: int,
    url: str,
    execution: str,
    keys: int,
    changed: int,
    epochs: int,
    start: Any,
    done: Any,
    out: Any,
) -> None:
    """Worker ``i`` of ``n``: write its key groups' share of each epoch when told; then restore."""
    from headrace._engine import open_store

    mine = range(i * KEY_GROUPS // n, (i + 1) * KEY_GROUPS // n)
    store = open_store(url, "bench", retry_for=30.0)
    store.join_execution(execution)
    for e in range(1, epochs + 2):
        # epoch 1: every key; then `changed` distinct keys spread over every group
        picked = range(keys) if e == 1 else ((j * 7919) % keys for j in range(changed))
        entries = [
            ("st", k % KEY_GROUPS, f"k{k}", (e * 10_000_000 + k).to_bytes(8, "big"))
            for k in picked
            if k % KEY_GROUPS in mine
        ]
        start.wait()
        t = time.perf_counter()
        store.write_epoch(e, entries)
        out.put(("write", i, e, time.perf_counter() - t))
        done.wait()
    start.wait()  # restore: a fresh handle, as a restarted worker has
    fresh = open_store(url, "bench", retry_for=30.0)
    t = time.perf_counter()
    state = fresh.load("st", mine)
    out.put(("restore", i, sum(len(v) for v in state.values()), time.perf_counter() - t))
    fresh.close()
    store.close()


@dataclass
class Row:
    """One store's figures (see the module docstring).

    >>> Row("one node", 1, 0, 1.0, 0.5, 0.1, 2.0, 10, 20).write_rate
    20
    """

    store: str
    primaries: int
    replicas: int
    fill_s: float
    snapshot_s: float
    commit_s: float
    restore_s: float
    restored_keys: int
    write_rate: float


def measure(label: str, url: str, primaries: int, replicas: int, a: argparse.Namespace) -> Row:
    """Run the epochs and the restore on the store at ``url``; its figures."""
    from headrace._engine import open_store

    s = open_store(url, "bench", retry_for=30.0)
    s.delete_all()
    execution = s.start_execution(a.workers, KEY_GROUPS).execution_id
    ctx = mp.get_context("fork")
    start, done, out = ctx.Barrier(a.workers + 1), ctx.Barrier(a.workers + 1), ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker, args=(i, a.workers, url, execution, a.keys, a.changed, a.epochs, start, done, out)
        )
        for i in range(a.workers)
    ]
    for p in procs:
        p.start()
    times: list[tuple[float, float]] = []  # (snapshot, commit) per epoch
    for e in range(1, a.epochs + 2):
        start.wait()
        writes = [out.get() for _ in range(a.workers)]
        t1 = time.perf_counter()
        s.commit(e, 0)
        t2 = time.perf_counter()
        slowest = max(w[3] for w in writes)
        times.append((slowest + (t2 - t1), t2 - t1))
        done.wait()
    start.wait()
    restores = [out.get() for _ in range(a.workers)]
    for p in procs:
        p.join(60)
    s.delete_all()
    s.release()
    s.close()
    snap = sorted(t for t, _ in times[1:])[len(times[1:]) // 2]
    commit = sorted(c for _, c in times[1:])[len(times[1:]) // 2]
    return Row(
        store=label,
        primaries=primaries,
        replicas=replicas,
        fill_s=round(times[0][0], 3),
        snapshot_s=round(snap, 3),
        commit_s=round(commit, 3),
        restore_s=round(max(r[3] for r in restores), 3),
        restored_keys=sum(r[2] for r in restores),
        write_rate=round(a.changed / snap),
    )


def main(argv: list[str] | None = None) -> int:
    """Measure every store and print the table (``--json``: also the rows)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="100k keys, 10k changed, 3 epochs")
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--changed", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.quick:
        a.keys, a.changed, a.epochs = 100_000, 10_000, 3
    configs = [
        ("one node", 1, False, 1, 0),
        *[("cluster", n, True, n, 0) for n in (1, 2, 3)],
        ("cluster", 6, True, 3, 3),
    ]
    rows: list[Row] = []
    for label, nodes, cluster, primaries, replicas in configs:
        servers = Servers(nodes, cluster, primaries)
        try:
            url = servers.cluster_url if cluster else servers.url
            rows.append(measure(label, url, primaries if cluster else 1, replicas, a))
        finally:
            servers.stop()
        print(f"  measured {label} {primaries}+{replicas}", file=sys.stderr, flush=True)
    print(
        f"\n{a.keys:,} keys in {KEY_GROUPS} key groups, {a.changed:,} changed per epoch, "
        f"{a.workers} writers, median of {a.epochs} epochs; cores: {os.cpu_count()}\n"
    )
    print(
        "| store | primaries | replicas | first epoch (all keys) s | snapshot s/epoch | of it commit s "
        "| restore s | restored keys | write rate (entries/s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.store} | {r.primaries} | {r.replicas} | {r.fill_s} | {r.snapshot_s} | {r.commit_s} "
            f"| {r.restore_s} | {r.restored_keys:,} | {r.write_rate:,} |"
        )
    if a.json:
        a.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
