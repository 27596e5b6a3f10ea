"""`map_async` against blocking calls in `map`, on a local HTTP service with 20 ms latency.

    python benchmarks/async_bench.py [--latency 0.02] [--concurrency 100]
                                     [--sync-items 200] [--async-items 10000] [--json out.json]

A stdlib asyncio HTTP/1.1 server (``--serve``, a process of its own so it
never competes with the dataflow for the GIL) answers ``GET /item/N`` after
``--latency`` seconds with ``N`` doubled, on keep-alive connections. Two
single-worker dataflows call it once per item, from
``TestingSource(range(n), batch_size=100)`` to a sink that counts:

- *sync*: ``op.map`` with a blocking ``http.client`` call (one keep-alive
  connection): a worker is capped at 1/latency items per second;
- *async*: ``op.map_async(concurrency=C)`` with an asyncio-streams client
  (a pool of up to C keep-alive connections on the worker's event loop).

Each run checks every answer. The speedup is async items/s over sync
items/s; the target (issue 23) is >= 50x at ``concurrency=100``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# `benchmarks/` must not be on sys.path: its profile.py would shadow the stdlib's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

TARGET = 50.0


# ------------------------------------------------------------------ the service


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            n = int(path.rsplit(b"/", 1)[1])
            await asyncio.sleep(latency)
            body = str(2 * n).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve(port: int, latency: float) -> None:
    server = await asyncio.start_server(lambda r, w: _handle(r, w, latency), "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(latency: float) -> tuple[subprocess.Popen[bytes], int]:
    """Start the service in a process of its own; wait until it accepts connections."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--latency", str(latency)])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


# ------------------------------------------------------------------ the clients


class _Pool:
    """Keep-alive connections of one event loop, at most ``size`` at once."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(size)

    async def get(self, n: int) -> int:
        async with self.slots:
            conn = self.idle.pop() if self.idle else await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = conn
            writer.write(b"GET /item/%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % n)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            body = await reader.readexactly(length)
            self.idle.append(conn)
            return int(body)


def async_client(port: int, size: int) -> Any:
    """An ``async def`` call of the service, with a connection pool per event loop."""
    pools: dict[int, _Pool] = {}

    async def call(n: int) -> int:
        loop = id(asyncio.get_running_loop())
        pool = pools.get(loop)
        if pool is None:
            pool = pools[loop] = _Pool(port, size)
        return await pool.get(n)

    return call


def sync_client(port: int) -> Any:
    """A blocking call of the service on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port)

    def call(n: int) -> int:
        conn.request("GET", f"/item/{n}")
        return int(conn.getresponse().read())

    return call


# ------------------------------------------------------------------ the runs


def run_flow(kind: str, port: int, items: int, concurrency: int) -> dict[str, Any]:
    """One single-worker run; items/s, and whether every answer was right."""
    import headrace.operators as op
    from headrace.dataflow import Dataflow
    from headrace.testing import TestingSink, TestingSource, run_main

    flow = Dataflow(f"bench_{kind}")
    s = op.input("inp", flow, TestingSource(range(items), batch_size=100))
    if kind == "sync":
        s = op.map("call", s, sync_client(port))
    else:
        s = op.map_async("call", s, async_client(port, concurrency), concurrency=concurrency)
    out: list[int] = []
    op.output("out", s, TestingSink(out))
    t0 = time.perf_counter()
    run_main(flow)
    dt = time.perf_counter() - t0
    return {
        "kind": kind,
        "items": items,
        "seconds": round(dt, 3),
        "items_per_s": round(items / dt, 1),
        "correct": out == [2 * n for n in range(items)],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--sync-items", type=int, default=200)
    ap.add_argument("--async-items", type=int, default=10_000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve, args.latency))
        return 0
    proc, port = start_server(args.latency)
    try:
        sync = run_flow("sync", port, args.sync_items, args.concurrency)
        asyn = run_flow("async", port, args.async_items, args.concurrency)
    finally:
        proc.terminate()
        proc.wait()
    speedup = asyn["items_per_s"] / sync["items_per_s"]
    ceiling = args.concurrency / args.latency
    result = {
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "sync": sync,
        "async": asyn,
        "speedup": round(speedup, 1),
        "async_share_of_ceiling": round(asyn["items_per_s"] / ceiling, 3),
        "target": TARGET,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    print(f"service latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}")
    for r in (sync, asyn):
        ok = "ok" if r["correct"] else "WRONG OUTPUT"
        rate = f"{r['items_per_s']:>8.1f}/s"
        print(f"  {r['kind']:<5} {r['items']:>6} items in {r['seconds']:>6.2f} s: {rate} ({ok})")
    print(
        f"  speedup {speedup:.1f}x (target >= {TARGET:.0f}x); async at "
        f"{100 * result['async_share_of_ceiling']:.0f}% of concurrency/latency = {ceiling:.0f}/s"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if sync["correct"] and asyn["correct"] and speedup >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
