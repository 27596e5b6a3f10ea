"""State with a time to live: RSS and Redis memory stay flat with a new key every item.

    python benchmarks/ttl_bench.py [--seconds 120] [--rate 2000] [--ttl 30] [--control] [--json out.json]
    python benchmarks/ttl_bench.py --long              # the 10-minute run (issue 23)

A dataflow (a process of its own: this script with ``--child``) reads a
paced source that makes a new key every item (``("k<n>", n)``, ``--rate``
items per second), keeps a per-key count with
``op.stateful_map(..., ttl=timedelta(seconds=--ttl))`` and snapshots to a
fresh redis-server every second (epochs of 1 s, the store compacting every
10 epochs, as by default). This script samples the child's RSS
(``/proc/<pid>/status``) and Redis's ``used_memory`` every 2 s.

Live keys grow for ``ttl`` seconds, then each second expires as many keys as
it makes: from then on memory must stay flat. The verdict compares the
samples of the second half of the run with those of the first (both past
the warm-up of 2 x ttl), by their medians: growth above 5% or 2 MB fails. ``--control``
also runs the same flow without a ttl, which grows for the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# `benchmarks/` must not be on sys.path: its profile.py would shadow the stdlib's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

SAMPLE_EVERY = 2.0
# Growth allowed in the second half of the run past the warm-up.
TOLERANCE = 0.05
TOLERANCE_MB = 2.0


# ------------------------------------------------------------------ the dataflow (child)


def build(seconds: float, rate: int, ttl: float | None) -> Any:
    """The flow: paced new keys -> stateful_map count (with ``ttl``) -> a counting sink.

    >>> from headrace.testing import run_main
    >>> flow = build(0.3, 100, 10.0); run_main(flow)
    >>> 0 < _Count.n <= 30
    True
    """
    import headrace.operators as op
    from headrace.dataflow import Dataflow
    from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition
    from headrace.outputs import DynamicSink, StatelessSinkPartition

    tick = 0.05

    class Part(StatefulSourcePartition[tuple[str, int], int]):
        def __init__(self, resume: int | None) -> None:
            self.n = self.first = resume or 0
            self.start = time.monotonic()
            self.next_at = datetime.now(UTC)

        def next_batch(self) -> list[tuple[str, int]]:
            # Every item due by now (rate x elapsed), so a late poll catches up.
            elapsed = time.monotonic() - self.start
            if elapsed >= seconds:
                raise StopIteration
            first = self.n
            self.n = self.first + int(elapsed * rate)
            self.next_at = datetime.now(UTC) + timedelta(seconds=tick)
            return [(f"k{i}", i) for i in range(first, self.n)]

        def next_awake(self) -> datetime:
            return self.next_at

        def snapshot(self) -> int:
            return self.n

    class Source(FixedPartitionedSource[tuple[str, int], int]):
        def list_parts(self) -> list[str]:
            return ["p0"]

        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Part:
            return Part(resume_state)

    class CountPart(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            _Count.n += len(items)

    class Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> CountPart:
            return CountPart()

    _Count.n = 0
    flow = Dataflow("ttl_bench")
    s = op.input("inp", flow, Source())
    counts = op.stateful_map(
        "count",
        s,
        lambda st, v: ((st or 0) + 1,) * 2,
        ttl=None if ttl is None else timedelta(seconds=ttl),
    )
    op.output("out", counts, Sink())
    return flow


class _Count:
    n = 0


def child(args: argparse.Namespace) -> int:
    from headrace.recovery import RecoveryConfig
    from headrace.testing import run_main

    ttl = None if args.no_ttl else args.ttl
    run_main(
        build(args.seconds, args.rate, ttl),
        epoch_interval=timedelta(seconds=1),
        recovery_config=RecoveryConfig(args.redis),
    )
    print(json.dumps({"items": _Count.n}))
    return 0


# ------------------------------------------------------------------ measuring (parent)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_one(args: argparse.Namespace, ttl: bool) -> dict[str, Any]:
    """Start redis-server and the child; sample until the child ends."""
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH")
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="ttl-bench-")
    server = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.05)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--seconds",
        str(args.seconds),
        "--rate",
        str(args.rate),
        "--ttl",
        str(args.ttl),
        "--redis",
        url,
    ]
    if not ttl:
        cmd.append("--no-ttl")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    samples: list[dict[str, float]] = []
    try:
        while proc.poll() is None:
            rss = _rss_mb(proc.pid)
            info = client.info("memory")
            if rss is not None:
                samples.append(
                    {
                        "t": round(time.monotonic() - t0, 1),
                        "rss_mb": round(rss, 1),
                        "redis_mb": round(int(info["used_memory"]) / 2**20, 1),
                    }
                )
            time.sleep(SAMPLE_EVERY)
        out, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    items = json.loads(out.strip().splitlines()[-1])["items"] if out.strip() else None
    return {
        "ttl_s": args.ttl if ttl else None,
        "items": items,
        "returncode": proc.returncode,
        "samples": samples,
    }


def verdict(samples: list[dict[str, float]], warmup: float) -> dict[str, Any]:
    """Past the warm-up: the median of the second half of the samples against the first half's.

    Medians, because single samples catch transients (the store's
    compaction reads ten epochs of deltas at once); the peak is reported too.

    >>> s = [{"t": t, "rss_mb": 50.0, "redis_mb": 5.0} for t in range(0, 100, 2)]
    >>> s[-3]["redis_mb"] = 9.0  # one transient
    >>> verdict(s, 20)["flat"]
    True
    >>> for x in s[-15:]: x["rss_mb"] = 60.0
    >>> verdict(s, 20)["flat"]
    False
    """
    steady = [s for s in samples if s["t"] >= warmup]
    if len(steady) < 4:
        return {"flat": None, "why": "the run is too short past the warm-up (2 x ttl)"}
    mid = len(steady) // 2
    first, second = steady[:mid], steady[mid:]
    out: dict[str, Any] = {"flat": True}
    for what in ("rss_mb", "redis_mb"):
        before = statistics.median(s[what] for s in first)
        after = statistics.median(s[what] for s in second)
        grew = after - before
        out[what] = {
            "median_first_half": before,
            "median_second_half": after,
            "growth_mb": round(grew, 1),
            "peak": max(s[what] for s in steady),
        }
        if grew > max(TOLERANCE * before, TOLERANCE_MB):
            out["flat"] = False
    return out


def _table(samples: list[dict[str, float]], every: float = 10.0) -> list[str]:
    rows = ["     t   RSS MB  Redis MB"]
    next_t = 0.0
    for s in samples:
        if s["t"] >= next_t:
            rows.append(f"{s['t']:>6.0f} {s['rss_mb']:>8.1f} {s['redis_mb']:>9.1f}")
            next_t = s["t"] + every
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--rate", type=int, default=2000, help="items (new keys) per second")
    ap.add_argument("--ttl", type=float, default=30.0)
    ap.add_argument("--long", action="store_true", help="the 10-minute run")
    ap.add_argument("--control", action="store_true", help="also run without a ttl")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-ttl", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--redis", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if args.long:
        args.seconds = 600.0
    runs = [("ttl", run_one(args, True))]
    if args.control:
        runs.append(("no ttl", run_one(args, False)))
    result: dict[str, Any] = {
        "seconds": args.seconds,
        "rate": args.rate,
        "ttl_s": args.ttl,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "runs": {},
    }
    ok = True
    for name, run in runs:
        v = verdict(run["samples"], 2 * args.ttl)
        run["verdict"] = v
        result["runs"][name] = run
        print(f"{name}: {run['items']} items (new keys) in {args.seconds:.0f} s at {args.rate}/s")
        print("\n".join(_table(run["samples"])))
        if v["flat"] is None:
            print(f"  {v['why']}")
        else:
            for what in ("rss_mb", "redis_mb"):
                d = v[what]
                halves = f"{d['median_first_half']} MB then {d['median_second_half']} MB"
                print(
                    f"  {what}: median {halves} (halves of the run past {2 * args.ttl:.0f} s: "
                    f"{d['growth_mb']:+} MB), peak {d['peak']} MB"
                )
            print(f"  flat: {v['flat']}")
        if name == "ttl":
            ok = bool(v["flat"]) and run["returncode"] == 0
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
