"""Kafka -> map -> Kafka: Headrace vs Bytewax 0.21.1 vs Quix Streams vs a bare confluent-kafka loop.

One real broker (Apache Kafka's jars from Maven Central, see
tests/support/kafka_broker.py) serves every run. Each system runs as its own
process with one worker:

- **throughput**: N messages are preloaded into a 3-partition topic; the
  pipeline reads them to the end (``tail=False``), upper-cases each value
  and writes it to another topic. messages/s = N / wall time of the run,
  from before the clients connect to the last message flushed, for every
  system alike (the engines' ``run_main`` connects inside the timed call;
  the floor is timed from before it creates its consumer and producer).
  Best of ``--repeat`` runs, systems alternating.
- **latency**: a producer writes R messages/s for S seconds, each value
  carrying its send time; the pipeline tails the topic; a consumer of the
  output topic records now - send time. Reported as p50/p90/p99/max.

The floor is a plain consume / produce / poll loop with confluent-kafka in
Python: what any Python pipeline on this client costs at least.

Exactly-once: ``headrace-eos`` is the same pipeline with
``KafkaSink(..., exactly_once=True)`` and a SQLite recovery directory;
``quix`` and ``quix-eos`` are Quix Streams (3.28.1, from PyPI, in a venv
made once next to the bytewax venv, ``quix-venv``) with
``processing_guarantee`` at-least-once and exactly-once. Headrace's epoch
and Quix's commit interval are both ``--commit-interval`` seconds. These
three are timed for throughput only.

Bytewax runs from benchmarks/.bytewax-venv when it has bytewax 0.21.1 and
confluent-kafka, else from a venv made once under
~/.cache/headrace-kafka/bytewax-venv.

    python benchmarks/kafka_bench.py [--messages 1000000] [--repeat 2] [--rate 5000] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.kafka_broker import KafkaBroker, cache_dir, running_broker  # noqa: E402

PIPELINE = """
import json, os, sys, time
from {pkg}.dataflow import Dataflow
import {pkg}.operators as op
from {pkg}.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from {pkg}.testing import run_main

brokers = [os.environ["B_BROKERS"]]
tail = os.environ["B_TAIL"] == "1"
flow = Dataflow("bench")
s = op.input("in", flow, KafkaSource(brokers, [os.environ["B_IN"]], tail=tail))
s = op.map("upper", s, lambda m: KafkaSinkMessage(m.key, m.value.upper()))
op.output("out", s, KafkaSink(brokers, os.environ["B_OUT"]))
print("ready", flush=True)
t0 = time.perf_counter()
run_main(flow)
print(json.dumps({{"seconds": time.perf_counter() - t0}}), flush=True)
"""

PIPELINE_EOS = """
import json, os, sys, tempfile, time
from datetime import timedelta
from headrace.dataflow import Dataflow
import headrace.operators as op
from headrace.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from headrace.recovery import RecoveryConfig, init_db_dir
from headrace.testing import run_main

brokers = [os.environ["B_BROKERS"]]
flow = Dataflow("bench_eos")
s = op.input("in", flow, KafkaSource(brokers, [os.environ["B_IN"]], tail=os.environ["B_TAIL"] == "1"))
s = op.map("upper", s, lambda m: KafkaSinkMessage(m.key, m.value.upper()))
config = {"transactional.id": "bench-" + os.environ["B_OUT"]}
op.output("out", s, KafkaSink(brokers, os.environ["B_OUT"], config, exactly_once=True))
rec = tempfile.mkdtemp(prefix="bench-eos-")
init_db_dir(rec, 1)
interval = timedelta(seconds=float(os.environ["B_COMMIT"]))
print("ready", flush=True)
t0 = time.perf_counter()
run_main(flow, epoch_interval=interval, recovery_config=RecoveryConfig(rec))
print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
"""

QUIX = """
import json, os, time
from quixstreams import Application

print("ready", flush=True)
t0 = time.perf_counter()
app = Application(
    broker_address=os.environ["B_BROKERS"],
    consumer_group="bench-" + os.environ["B_OUT"],
    auto_offset_reset="earliest",
    commit_interval=float(os.environ["B_COMMIT"]),
    processing_guarantee=os.environ["B_GUARANTEE"],
)
src = app.topic(os.environ["B_IN"], key_deserializer="bytes", value_deserializer="bytes")
out = app.topic(os.environ["B_OUT"], key_serializer="bytes", value_serializer="bytes")
sdf = app.dataframe(src)
sdf = sdf.apply(lambda v: v.upper())
sdf.to_topic(out)
app.run(count=int(os.environ["B_COUNT"]), collect=False)
print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
"""

FLOOR = """
import json, os, time
from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING

brokers = os.environ["B_BROKERS"]
tail = os.environ["B_TAIL"] == "1"
topic, out = os.environ["B_IN"], os.environ["B_OUT"]
print("ready", flush=True)
# Timed from before the clients exist, as the engines' runs are: connecting,
# finding the partitions' end offsets, reading, writing and flushing.
t0 = time.perf_counter()
c = Consumer({"bootstrap.servers": brokers, "group.id": "floor", "enable.auto.commit": False})
p = Producer({"bootstrap.servers": brokers})
parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
ends = {i: c.get_watermark_offsets(TopicPartition(topic, i), timeout=10)[1] for i in parts}
c.assign([TopicPartition(topic, i, OFFSET_BEGINNING) for i in parts])
pos = dict.fromkeys(parts, 0)
produce, poll = p.produce, p.poll
while tail or any(pos[i] < ends[i] for i in parts):
    for m in c.consume(1000, 0.001):
        if m.error() is not None:
            continue
        while True:
            try:
                produce(out, m.value().upper(), m.key())
                break
            except BufferError:
                poll(0.05)
        pos[m.partition()] = m.offset() + 1
    poll(0)
p.flush()
print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
"""


def bytewax_python() -> str:
    """A Python with bytewax 0.21.1 and confluent-kafka, made once if needed."""
    check = (
        "import bytewax, confluent_kafka, importlib.metadata as m; assert m.version('bytewax') == '0.21.1'"
    )
    local = ROOT / "benchmarks" / ".bytewax-venv" / "bin" / "python"
    if local.exists() and subprocess.run([str(local), "-c", check], capture_output=True).returncode == 0:
        return str(local)
    venv = cache_dir().parent / "bytewax-venv"
    py = venv / "bin" / "python"
    if not py.exists() or subprocess.run([str(py), "-c", check], capture_output=True).returncode != 0:
        print(f"making {venv} (bytewax==0.21.1, confluent-kafka) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "bytewax==0.21.1", "confluent-kafka"], check=True
        )
    return str(py)


def quix_python() -> str:
    """A Python with quixstreams 3.28.1, made once if needed."""
    check = "import quixstreams, importlib.metadata as m; assert m.version('quixstreams') == '3.28.1'"
    venv = cache_dir().parent / "quix-venv"
    py = venv / "bin" / "python"
    if not py.exists() or subprocess.run([str(py), "-c", check], capture_output=True).returncode != 0:
        print(f"making {venv} (quixstreams==3.28.1) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "quixstreams==3.28.1"], check=True)
    return str(py)


def _preload(b: KafkaBroker, topic: str, n: int, size: int) -> None:
    p = b.producer(**{"linger.ms": 20, "batch.num.messages": 10000})
    body = b"x" * max(0, size - 12)
    for i in range(n):
        while True:
            try:
                p.produce(topic, b"%011d " % i + body, b"k%d" % (i % 1000))
                break
            except BufferError:
                p.poll(0.05)
    p.flush(60)


def warm_transactions(b: KafkaBroker) -> float:
    """Commit one transaction with a consumer-group offset; the seconds it took.

    The first transactional client of a fresh broker waits for Kafka to
    create and load its internal topics (``__transaction_state``,
    ``__consumer_offsets``: 2-3 s here), a cost a running cluster paid long
    ago. Paying it once, before anything is timed, keeps it out of whichever
    exactly-once system happens to run first.
    """
    from confluent_kafka import Consumer, TopicPartition

    topic = b.create_topic(partitions=1)
    t0 = time.perf_counter()
    p = b.producer(**{"transactional.id": f"bench-warm-{topic}"})
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": f"bench-warm-{topic}"})
    p.init_transactions(60)
    p.begin_transaction()
    p.produce(topic, b"warm")
    p.send_offsets_to_transaction([TopicPartition(topic, 0, 1)], c.consumer_group_metadata(), 60)
    p.commit_transaction(60)
    c.committed([TopicPartition(topic, 0)], 60)
    c.close()
    return time.perf_counter() - t0


def _command(system: str, bw_python: str) -> list[str]:
    system = system.removesuffix("-base")
    if system == "headrace":
        return [sys.executable, "-c", PIPELINE.format(pkg="headrace")]
    if system == "headrace-eos":
        return [sys.executable, "-c", PIPELINE_EOS]
    if system in ("quix", "quix-eos"):
        return [quix_python(), "-c", QUIX]
    if system == "bytewax":
        return [bw_python, "-c", PIPELINE.format(pkg="bytewax")]
    return [sys.executable, "-c", FLOOR]


# Seconds between commits (Headrace's epoch, Quix's commit interval) for
# the exactly-once systems and Quix.
COMMIT_INTERVAL = 1.0
# Another checkout of Headrace: ``headrace-base`` and ``headrace-eos-base``
# run it (``--base-tree``), for before/after figures from the same run.
BASE_TREE = ROOT


def _env(b: KafkaBroker, src: str, dst: str, tail: bool, system: str = "", n: int = 0) -> dict[str, str]:
    env = dict(os.environ)
    tree = BASE_TREE if system.endswith("-base") else ROOT
    env.update(
        {
            "B_BROKERS": b.bootstrap,
            "B_IN": src,
            "B_OUT": dst,
            "B_TAIL": "1" if tail else "0",
            "B_COMMIT": str(COMMIT_INTERVAL),
            "B_COUNT": str(n),
            "B_GUARANTEE": "exactly-once" if system == "quix-eos" else "at-least-once",
            "PYTHONPATH": os.pathsep.join([str(tree / "runtime"), str(tree)]),
            "HEADRACE_METRICS_PORT": "0",
        }
    )
    return env


def throughput(b: KafkaBroker, system: str, bw_python: str, n: int, size: int) -> float:
    src, dst = b.create_topic(partitions=3), b.create_topic(partitions=3)
    _preload(b, src, n, size)
    proc = subprocess.run(
        _command(system, bw_python),
        env=_env(b, src, dst, False, system, n),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{system} failed:\n{proc.stderr[-3000:]}")
    seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
    # Transactional output holds a commit marker per partition and transaction.
    got = sum(b.end_offsets(dst).values())
    if got < n:
        raise RuntimeError(f"{system} wrote {got} of {n} messages")
    return n / seconds


# Systems also timed for latency (exactly-once output is visible once per commit).
LATENCY_SYSTEMS = ("floor", "headrace", "bytewax")


def latency(b: KafkaBroker, system: str, bw_python: str, rate: int, seconds: float) -> dict[str, float]:
    from confluent_kafka import Consumer, TopicPartition

    src, dst = b.create_topic(partitions=3), b.create_topic(partitions=3)
    lat: list[float] = []
    stop = threading.Event()
    c = Consumer(
        {
            "bootstrap.servers": b.bootstrap,
            "group.id": "lat",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    c.assign([TopicPartition(dst, i, 0) for i in range(3)])

    def collect() -> None:
        while not stop.is_set():
            for m in c.consume(1000, 0.05):
                if m.error() is None:
                    sent = int((m.value() or b"0")[:19])
                    lat.append((time.time_ns() - sent) / 1e6)

    proc = subprocess.Popen(
        _command(system, bw_python),
        env=_env(b, src, dst, True),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t = threading.Thread(target=collect, daemon=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready": the dataflow is built
        time.sleep(2.0)  # let consumers and producers connect
        t.start()
        p = b.producer(**{"linger.ms": 0})
        total = int(rate * seconds)
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        start = time.monotonic()
        sent = 0
        while sent < total:
            for _ in range(per_tick):
                p.produce(src, b"%019d" % time.time_ns() + b" payload", b"k%d" % (sent % 100))
                sent += 1
            p.poll(0)
            delay = start + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        p.flush(30)
        deadline = time.monotonic() + 30
        while len(lat) < total and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        proc.kill()
        proc.communicate()
        if t.is_alive():
            t.join(5)
        c.close()
    lat.sort()
    if not lat:
        raise RuntimeError(f"{system}: no output within the latency run")

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    return {
        "p50_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "max_ms": lat[-1],
        "received": len(lat),
        "sent": total,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2, help="throughput runs per system (best counts)")
    ap.add_argument("--size", type=int, default=100, help="value bytes")
    ap.add_argument("--rate", type=int, default=5000, help="latency run: messages/s")
    ap.add_argument("--seconds", type=float, default=6.0, help="latency run length")
    ap.add_argument("--systems", default="floor,headrace,bytewax,headrace-eos,quix,quix-eos")
    ap.add_argument("--commit-interval", type=float, default=1.0, help="seconds per epoch / Quix commit")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument(
        "--base-tree",
        type=Path,
        default=ROOT,
        help="a checkout run as the systems headrace-base and headrace-eos-base",
    )
    args = ap.parse_args(argv)
    global COMMIT_INTERVAL, BASE_TREE
    COMMIT_INTERVAL = args.commit_interval
    BASE_TREE = args.base_tree.resolve()
    systems = args.systems.split(",")
    bw_python = bytewax_python() if "bytewax" in systems else ""
    results: dict[str, Any] = {
        "messages": args.messages,
        "value_bytes": args.size,
        "rate": args.rate,
        "seconds": args.seconds,
    }
    rates: dict[str, list[float]] = {s: [] for s in systems}
    with running_broker() as b:
        if any(s in ("headrace-eos", "quix", "quix-eos") for s in systems):
            print(f"  transactions warmed up in {warm_transactions(b):.1f} s", file=sys.stderr)
        # Systems alternate, so drift on a shared machine hits all alike.
        for rep in range(args.repeat):
            for system in systems if rep % 2 == 0 else systems[::-1]:
                rates[system].append(throughput(b, system, bw_python, args.messages, args.size))
                print(
                    f"  [{rep + 1}/{args.repeat}] {system}: {rates[system][-1]:,.0f} msg/s",
                    file=sys.stderr,
                    flush=True,
                )
        for system in systems:
            mps = max(rates[system])
            med = statistics.median(rates[system])
            if system not in LATENCY_SYSTEMS:
                results[system] = {"msgs_per_s": round(mps), "msgs_per_s_median": round(med)}
                print(f"{system:12s} {mps:10,.0f} msg/s (median {med:,.0f})", flush=True)
                continue
            lat = latency(b, system, bw_python, args.rate, args.seconds)
            results[system] = {
                "msgs_per_s": round(mps),
                "msgs_per_s_median": round(med),
                **{k: round(v, 2) for k, v in lat.items()},
            }
            print(
                f"{system:9s} {mps:10,.0f} msg/s (median {med:,.0f})   latency p50 "
                f"{lat['p50_ms']:7.1f} ms  p90 {lat['p90_ms']:7.1f}  p99 {lat['p99_ms']:7.1f}  "
                f"max {lat['max_ms']:7.1f}  ({lat['received']}/{lat['sent']})",
                flush=True,
            )
    if "headrace" in results and "bytewax" in results:
        results["headrace_vs_bytewax"] = round(
            results["headrace"]["msgs_per_s"] / results["bytewax"]["msgs_per_s"], 2
        )
        print(f"Headrace / Bytewax throughput: {results['headrace_vs_bytewax']:.2f}x (target >= 1.2x)")
    if "headrace" in results and "floor" in results:
        results["headrace_vs_floor"] = round(
            results["headrace"]["msgs_per_s"] / results["floor"]["msgs_per_s"], 2
        )
        print(f"Headrace / floor throughput: {results['headrace_vs_floor']:.0%} (target >= 70%)")
    for a, b_, name, target in [
        ("headrace-eos", "headrace", "headrace_eos_vs_alo", ">= 0.8x"),
        ("headrace-eos", "quix-eos", "headrace_eos_vs_quix_eos", ">= 3x"),
        ("headrace", "quix", "headrace_vs_quix", ""),
        ("headrace-eos-base", "headrace", "base_eos_vs_alo", ">= 0.8x"),
        ("headrace-eos-base", "quix-eos", "base_eos_vs_quix_eos", ">= 3x"),
    ]:
        if a in results and b_ in results:
            results[name] = round(results[a]["msgs_per_s"] / results[b_]["msgs_per_s"], 2)
            # Run by run (the two ran next to each other): steadier on a busy machine.
            paired = [round(x / y, 2) for x, y in zip(rates[a], rates[b_], strict=True)]
            results[name + "_per_run"] = paired
            print(
                f"{a} / {b_} throughput: {results[name]:.2f}x"
                + (f" (target {target})" if target else "")
                + f"; run by run {', '.join(f'{r:.2f}x' for r in paired)}"
            )
    results["commit_interval_s"] = COMMIT_INTERVAL
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
