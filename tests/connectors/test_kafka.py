"""Kafka connectors against a real Apache Kafka broker (KRaft, one node, loopback).

One broker serves the whole module (the ``kafka_broker`` session fixture);
every test makes its own topics. Multi-process runs use the real runner
(``python -m headrace.run ... -p 2 -w 2``); the crash test kills a worker
process with SIGKILL and resumes from a real redis-server.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pickle
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("confluent_kafka", reason="the kafka extra is not installed")

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END
from confluent_kafka import KafkaError as CKafkaError
from confluent_kafka.serialization import (
    MessageField,
    SerializationContext,
    StringDeserializer,
    StringSerializer,
)

import headrace.connectors.kafka as hk
import headrace.operators as op
from headrace._engine import execute, request_stop
from headrace._engine._store import PARTS, open_store
from headrace.connectors.kafka import (
    KafkaError,
    KafkaSink,
    KafkaSinkMessage,
    KafkaSource,
    KafkaSourceMessage,
    serde,
)
from headrace.connectors.kafka import operators as kop
from headrace.dataflow import Dataflow
from headrace.testing import TestingSink, run_main
from tests.support.errors import causes_text
from tests.support.kafka_broker import KafkaBroker, session_broker
from tests.support.runs import check_output, run_with_kills
from tests.support.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
ZERO = timedelta(0)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One real broker for the whole module; each test makes its own topics."""
    yield from session_broker(tmp_path_factory)


def _json_value(m: Any) -> Any:
    return m.value


# ------------------------------------------------------------------ surface


def test_every_public_name_is_there() -> None:
    for name in [
        "KafkaSource",
        "KafkaSink",
        "KafkaSourceMessage",
        "KafkaSinkMessage",
        "KafkaError",
        "K",
        "V",
        "K2",
        "V2",
        "K_co",
        "V_co",
    ]:
        assert hasattr(hk, name), name
    for name in [
        "input",
        "output",
        "deserialize_key",
        "deserialize_value",
        "deserialize",
        "serialize_key",
        "serialize_value",
        "serialize",
        "KafkaOpOut",
    ]:
        assert callable(getattr(kop, name)), name
    for name in ["PlainAvroSerializer", "PlainAvroDeserializer"]:
        assert hasattr(serde, name), name
    src_fields = [f.name for f in dataclasses.fields(KafkaSourceMessage)]
    assert src_fields == ["key", "value", "topic", "headers", "latency", "offset", "partition", "timestamp"]
    assert [f.name for f in dataclasses.fields(KafkaSinkMessage)] == [
        "key",
        "value",
        "topic",
        "headers",
        "partition",
        "timestamp",
    ]
    assert [f.name for f in dataclasses.fields(KafkaError)] == ["err", "msg"]
    import inspect

    assert list(inspect.signature(KafkaSource).parameters) == [
        "brokers",
        "topics",
        "tail",
        "starting_offset",
        "add_config",
        "batch_size",
        "raise_on_errors",
    ]
    assert inspect.signature(KafkaSource).parameters["starting_offset"].default == (OFFSET_BEGINNING)
    assert list(inspect.signature(KafkaSink).parameters) == ["brokers", "topic", "add_config", "exactly_once"]


def test_arguments_are_checked_up_front() -> None:
    with pytest.raises(TypeError, match="not a string"):
        KafkaSource("localhost:9092", ["t"])
    with pytest.raises(TypeError, match=r"^topics must be an iterable and not a string"):
        KafkaSource(["localhost:9092"], "t")
    with pytest.raises(ValueError, match="starting_offset"):
        KafkaSource(["localhost:9092"], ["t"], starting_offset=-7)
    with pytest.raises(ValueError, match="batch_size"):
        KafkaSource(["localhost:9092"], ["t"], batch_size=0)


def test_messages_pickle_and_convert() -> None:
    m = KafkaSourceMessage(b"k", b"v", topic="t", headers=[("h", b"1")], offset=4, partition=2)
    assert pickle.loads(pickle.dumps(m)) == m
    assert m.to_sink() == KafkaSinkMessage(b"k", b"v", headers=[("h", b"1")])
    err = KafkaError(CKafkaError(CKafkaError._VALUE_DESERIALIZATION, "bad"), m)
    assert "partition 2 offset 4" in str(err)
    assert pickle.loads(pickle.dumps(err)).msg == m


# ------------------------------------------------------------------ round trips


def test_source_to_sink_keeps_keys_values_headers(kafka_broker: KafkaBroker) -> None:
    b = kafka_broker
    src, dst = b.create_topic(partitions=3), b.create_topic(partitions=2)
    b.produce(
        src,
        [(f"k{i}".encode(), f"v{i}".encode()) for i in range(300)],
        headers=[("trace", b"abc"), ("n", b"")],
    )
    b.produce(src, [(None, b"no-key")], partition=1)
    flow = Dataflow("rt")
    seen: list[Any] = []
    msgs = op.input("in", flow, KafkaSource(b.brokers, [src], tail=False, batch_size=64))
    op.output("tap", msgs, TestingSink(seen))
    op.output("out", op.map("fwd", msgs, KafkaSourceMessage.to_sink), KafkaSink(b.brokers, dst))
    run_main(flow)
    assert len(seen) == 301
    assert {m.topic for m in seen} == {src}
    by_part: dict[int, list[int]] = collections.defaultdict(list)
    for m in seen:
        by_part[m.partition].append(m.offset)
        assert isinstance(m.timestamp, tuple) and m.timestamp[1] > 0
    assert sorted(by_part) == [0, 1, 2]
    ends = b.end_offsets(src)
    assert {p: sorted(o) for p, o in by_part.items()} == {p: list(range(e)) for p, e in ends.items()}
    got = b.consume_all(dst)
    assert sorted((m.key() or b"", m.value()) for m in got) == sorted(
        [(f"k{i}".encode(), f"v{i}".encode()) for i in range(300)] + [(b"", b"no-key")]
    )
    assert [m.key() for m in got if m.value() == b"no-key"] == [None]
    keyed = [m for m in got if m.key() is not None]
    assert all(m.headers() == [("trace", b"abc"), ("n", b"")] for m in keyed)
    # The default partitioner keys: one key always lands in one partition.
    assert len({m.partition() for m in got if m.key() == b"k7"}) == 1


def test_sink_honours_message_topic_partition_and_timestamp(kafka_broker: KafkaBroker) -> None:
    b = kafka_broker
    default, other = b.create_topic(partitions=1), b.create_topic(partitions=3)
    flow = Dataflow("sinkfields")
    from headrace.testing import TestingSource

    items = [
        KafkaSinkMessage(b"a", b"1"),
        KafkaSinkMessage(b"b", b"2", topic=other, partition=2, timestamp=1_700_000_000_000),
    ]
    op.output("out", op.input("in", flow, TestingSource(items)), KafkaSink(b.brokers, default))
    run_main(flow)
    [d] = b.consume_all(default)
    assert (d.key(), d.value()) == (b"a", b"1")
    [o] = b.consume_all(other)
    assert (o.value(), o.partition(), o.timestamp()[1]) == (b"2", 2, 1_700_000_000_000)


def test_sink_rejects_items_that_are_not_sink_messages(kafka_broker: KafkaBroker) -> None:
    from headrace.testing import TestingSource

    t = kafka_broker.create_topic(partitions=1)
    flow = Dataflow("badsink")
    op.output("out", op.input("in", flow, TestingSource([b"raw"])), KafkaSink(kafka_broker.brokers, t))
    with pytest.raises(Exception) as info:
        run_main(flow)
    assert "KafkaSinkMessage" in causes_text(info.value) and "badsink.out" in causes_text(info.value)


def test_tail_false_ends_at_the_end_offsets_seen_at_start(kafka_broker: KafkaBroker) -> None:
    b = kafka_broker
    t = b.create_topic(partitions=3)
    b.produce(t, [(None, f"old{i}".encode()) for i in range(90)])
    flow = Dataflow("tailfalse")
    out: list[Any] = []
    produced_more = threading.Event()

    def produce_more_once(batch: list[Any]) -> list[Any]:
        # The source parts exist by now (they read their end offsets when
        # built): these messages come after the end each part stops at.
        if not produced_more.is_set():
            produced_more.set()
            b.produce(t, [(None, f"new{i}".encode()) for i in range(30)])
        return batch

    msgs = op.input("in", flow, KafkaSource(b.brokers, [t], tail=False, batch_size=5))
    msgs = op.flat_map_batch("more", msgs, produce_more_once)
    op.output("out", op.map("v", msgs, lambda m: m.value.decode()), TestingSink(out))
    run_main(flow)
    assert produced_more.is_set()
    assert sorted(out) == sorted(f"old{i}" for i in range(90))
    assert sum(b.end_offsets(t).values()) == 120


def test_tail_false_on_an_empty_topic_ends_at_once(kafka_broker: KafkaBroker) -> None:
    t = kafka_broker.create_topic(partitions=2)
    flow = Dataflow("empty")
    out: list[Any] = []
    op.output(
        "out", op.input("in", flow, KafkaSource(kafka_broker.brokers, [t], tail=False)), TestingSink(out)
    )
    run_main(flow)
    assert out == []


def test_starting_offset_end_and_absolute(kafka_broker: KafkaBroker) -> None:
    b = kafka_broker
    t = b.create_topic(partitions=1)
    b.produce(t, [(None, str(i).encode()) for i in range(10)])

    def read(**kw: Any) -> list[int]:
        flow = Dataflow("start")
        out: list[Any] = []
        op.output(
            "out", op.input("in", flow, KafkaSource(b.brokers, [t], tail=False, **kw)), TestingSink(out)
        )
        run_main(flow)
        return [int(m.value) for m in out]

    assert read() == list(range(10))
    assert read(starting_offset=OFFSET_END) == []
    assert read(starting_offset=6) == [6, 7, 8, 9]


def _run_in_thread(flow: Dataflow, **kw: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            execute(flow, **kw)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


def _wait_for(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_tail_true_with_offset_end_reads_only_new_messages(kafka_broker: KafkaBroker) -> None:
    b = kafka_broker
    t = b.create_topic(partitions=2)
    b.produce(t, [(None, b"before")] * 5)
    flow = Dataflow("tailing")
    out: list[Any] = []
    src = KafkaSource(b.brokers, [t], starting_offset=OFFSET_END)
    op.output("out", op.map("v", op.input("in", flow, src), lambda m: m.value), TestingSink(out))
    thread, errors = _run_in_thread(flow, epoch_interval=timedelta(milliseconds=50))
    try:
        # The parts are built (and have read their end offsets) once an
        # epoch has passed; give it a moment, then produce.
        time.sleep(1.0)
        b.produce(t, [(None, f"after{i}".encode()) for i in range(20)])
        _wait_for(lambda: len(out) >= 20, "the new messages")
    finally:
        request_stop()
        thread.join(30)
    assert not errors, errors
    assert sorted(out) == sorted(f"after{i}".encode() for i in range(20))


# ------------------------------------------------------------------ operators, serde


def test_operators_split_undecodable_messages_into_errs(kafka_broker: KafkaBroker) -> None:
    b = kafka_broker
    t = b.create_topic(partitions=1)
    values = [b'{"n": 1}', b"\xff\xfe not utf-8", b'{"n": 3}']
    b.produce(t, [(b"k", v) for v in values])

    def json_de(data: bytes | None, ctx: SerializationContext) -> Any:
        return json.loads(data.decode("utf-8"))  # type: ignore[union-attr]

    flow = Dataflow("ops")
    kin = kop.input("in", flow, brokers=b.brokers, topics=[t], tail=False)
    de = kop.deserialize("de", kin.oks, key_deserializer=StringDeserializer(), val_deserializer=json_de)
    oks: list[Any] = []
    errs: list[Any] = []
    op.output("oks", de.oks, TestingSink(oks))
    op.output("errs", de.errs, TestingSink(errs))
    op.output("kin_errs", kin.errs, TestingSink(errs))
    run_main(flow)
    assert [(m.key, m.value) for m in oks] == [("k", {"n": 1}), ("k", {"n": 3})]
    [e] = errs
    assert isinstance(e, KafkaError) and e.err.code() == CKafkaError._VALUE_DESERIALIZATION
    assert (e.msg.partition, e.msg.offset, e.msg.value) == (0, 1, values[1])
    assert "partition 0 offset 1" in str(e)

    flow = Dataflow("ops_raise")
    kin = kop.input("in", flow, brokers=b.brokers, topics=[t], tail=False)
    de2 = kop.deserialize_value("de", kin.oks, json_de, raise_on_errors=True)
    op.output("oks", de2.oks, TestingSink([]))
    with pytest.raises(Exception) as info:
        run_main(flow)
    text = causes_text(info.value)
    assert f"topic {t!r} partition 0 offset 1" in text and "ops_raise.de" in text


def test_serialize_operators_and_plain_avro_round_trip(kafka_broker: KafkaBroker) -> None:
    b = kafka_broker
    t_out = b.create_topic(partitions=1)
    schema = json.dumps(
        {
            "type": "record",
            "name": "Reading",
            "fields": [{"name": "sensor", "type": "string"}, {"name": "value", "type": "double"}],
        }
    )
    from headrace.testing import TestingSource

    readings = [{"sensor": f"s{i}", "value": i / 2} for i in range(5)]
    flow = Dataflow("avro_out")
    msgs = op.map(
        "msg", op.input("in", flow, TestingSource(readings)), lambda r: KafkaSinkMessage(r["sensor"], r)
    )
    ser = kop.serialize(
        "ser", msgs, key_serializer=StringSerializer(), val_serializer=serde.PlainAvroSerializer(schema)
    )
    kop.output("out", ser, brokers=b.brokers, topic=t_out)
    run_main(flow)

    flow = Dataflow("avro_in")
    kin = kop.input("in", flow, brokers=b.brokers, topics=[t_out], tail=False)
    keys = kop.deserialize_key("k", kin.oks, StringDeserializer())
    vals = kop.deserialize_value("v", keys.oks, serde.PlainAvroDeserializer(schema))
    out: list[Any] = []
    op.output("o", op.map("kv", vals.oks, lambda m: (m.key, m.value)), TestingSink(out))
    run_main(flow)
    assert out == [(r["sensor"], r) for r in readings]


def test_serialize_key_and_value_separately() -> None:
    from headrace.testing import TestingSource

    flow = Dataflow("ser_sep")
    out: list[Any] = []
    src = [KafkaSourceMessage("k", "v", topic="t")]
    s = kop.serialize_key("k", op.input("in", flow, TestingSource(src)), StringSerializer())
    s = kop.serialize_value("v", s, StringSerializer())
    op.output("o", s, TestingSink(out))
    run_main(flow)
    assert out == [KafkaSinkMessage(b"k", b"v")]


def test_schema_registry_avro_wire_format() -> None:
    pytest.importorskip("confluent_kafka.schema_registry.avro")
    ctx = SerializationContext("clicks", MessageField.VALUE)
    schema = '{"type": "record", "name": "C", "fields": [{"name": "page", "type": "string"}]}'
    ser = serde.SchemaRegistryAvroSerializer("mock://wire", schema)
    data = ser({"page": "/a"}, ctx)
    assert data is not None
    schema_id = int.from_bytes(data[1:5], "big")
    assert data[0] == 0 and schema_id == ser.registry.get_latest_version("clicks-value").schema_id
    assert serde.PlainAvroDeserializer(schema)(data[5:]) == {"page": "/a"}
    assert serde.SchemaRegistryAvroDeserializer(ser.registry)(data, ctx) == {"page": "/a"}


# ------------------------------------------------------------------ bad input


@pytest.mark.slow
def test_unreachable_brokers_fail_fast_naming_them() -> None:
    addr = f"127.0.0.1:{free_port()}"
    conf = {"socket.timeout.ms": 2000}
    flow = Dataflow("nobroker")
    op.output("out", op.input("in", flow, KafkaSource([addr], ["t"], add_config=conf)), TestingSink([]))
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:
        run_main(flow)
    assert time.monotonic() - t0 < 20
    assert addr in causes_text(info.value) and "did not answer" in causes_text(info.value)

    from headrace.testing import TestingSource

    flow = Dataflow("nobroker_sink")
    op.output(
        "out",
        op.input("in", flow, TestingSource([KafkaSinkMessage(b"k", b"v")])),
        KafkaSink([addr], "t", add_config=conf),
    )
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:
        run_main(flow)
    assert time.monotonic() - t0 < 20
    assert addr in causes_text(info.value) and "nobroker_sink.out" in causes_text(info.value)


def test_missing_topic_is_named(kafka_broker: KafkaBroker) -> None:
    flow = Dataflow("notopic")
    op.output(
        "out", op.input("in", flow, KafkaSource(kafka_broker.brokers, ["no-such-topic"])), TestingSink([])
    )
    with pytest.raises(Exception) as info:
        run_main(flow)
    assert "'no-such-topic' does not exist" in causes_text(info.value)

    from headrace.testing import TestingSource

    flow = Dataflow("notopic_sink")
    op.output(
        "out",
        op.input("in", flow, TestingSource([KafkaSinkMessage(b"k", b"v")])),
        KafkaSink(kafka_broker.brokers, "no-such-out-topic"),
    )
    with pytest.raises(Exception) as info:
        run_main(flow)
    assert "'no-such-out-topic' does not exist" in causes_text(info.value)


def test_consumer_errors_raise_with_offset_or_go_to_errs(kafka_broker: KafkaBroker) -> None:
    b = kafka_broker
    t = b.create_topic(partitions=1)
    b.produce(t, [(None, b"x")] * 3)
    # An offset past the end with auto.offset.reset=error is a real consumer
    # error (OFFSET_OUT_OF_RANGE) from the broker.
    conf = {"auto.offset.reset": "error"}
    flow = Dataflow("cerr")
    op.output(
        "out",
        op.input("in", flow, KafkaSource(b.brokers, [t], starting_offset=50, add_config=conf)),
        TestingSink([]),
    )
    with pytest.raises(Exception) as info:
        run_main(flow)
    text = causes_text(info.value)
    assert f"topic {t!r} partition 0 offset" in text and "raise_on_errors=False" in text

    flow = Dataflow("cerr_items")
    src = KafkaSource(b.brokers, [t], starting_offset=50, add_config=conf, raise_on_errors=False)
    kin = op.input("in", flow, src)
    op.raises("stop_on_error", kin)
    with pytest.raises(Exception) as info:
        run_main(flow)
    assert "KafkaError(" in causes_text(info.value) and "partition=0" in causes_text(info.value)


# ------------------------------------------------------------------ multi-process


def _env(broker: KafkaBroker, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HR_BROKERS": broker.bootstrap, "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def _launch(flow: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "headrace.run", f"tests.support.flows.kafka_flows:{flow}", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_three_partitions_on_two_processes_of_two_workers(kafka_broker: KafkaBroker) -> None:
    b = kafka_broker
    src, dst = b.create_topic(partitions=3), b.create_topic(partitions=3)
    sent = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(900)]
    b.produce(src, sent, headers=[("h", b"x")])
    p = _launch("copy_upper()", ["-p", "2", "-w", "2", "--metrics-port", "0"], _env(b, HR_IN=src, HR_OUT=dst))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    got = b.consume_all(dst)
    assert sorted((m.key(), m.value()) for m in got) == sorted((k, v.upper()) for k, v in sent)
    srcs = {dict(m.headers())["src"] for m in got}
    assert len(srcs) == 900  # each input message written once
    assert all(dict(m.headers())["h"] == b"x" for m in got)
    assert {s.split(b":")[0] for s in srcs} == {b"0", b"1", b"2"}


@pytest.mark.timeout(240)
def test_kill_9_mid_run_resumes_at_committed_offsets(
    kafka_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path
) -> None:
    b = kafka_broker
    src, dst = b.create_topic(partitions=3), b.create_topic(partitions=3)
    rng = random.Random(11)
    counts: collections.Counter[str] = collections.Counter()
    lines = []
    for _ in range(1200):
        words = [f"w{rng.randrange(40)}" for _ in range(rng.randrange(1, 5))]
        counts.update(words)
        lines.append((None, " ".join(words).encode()))
    b.produce(src, lines)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = _env(b, HR_IN=src, HR_OUT=dst, HR_OUT_DIR=str(out_dir), HR_SLOW="0.1")
    args = ["-p", "2", "-w", "2", "-r", redis_server.url, "--epoch-interval", "0.1", "--metrics-port", "0"]
    # A kill that lands as the run finishes leaves nothing to report (-9, 247).
    kills = run_with_kills(
        lambda: _launch("running_counts()", args, env), out_dir, rng, (20, 120), ok_codes=(-9, 247)
    )
    assert kills >= 1
    # File output: every running count exactly once (no line lost or repeated).
    check_output(out_dir, counts)
    # Kafka output: at-least-once, so nothing missing (repeats carry the same key).
    keys = {m.key() for m in b.consume_all(dst)}
    want = {f"{w}:{n}".encode() for w, c in counts.items() for n in range(1, c + 1)}
    assert want <= keys and keys <= want
    # The committed source snapshots are the partitions' end offsets.
    store = open_store(redis_server.url, "kafka_counts")
    parts = {
        name: pickle.loads(blob)
        for name, blob in store.load("kafka_counts.in", [PARTS]).get(PARTS, {}).items()
    }
    assert parts == {f"{p}-{src}": end for p, end in b.end_offsets(src).items()}


# ------------------------------------------------------------------ lag metric


def _lag(port: int, step_id: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "headrace_source_lag":
            for s in fam.samples:
                if s.labels["step_id"] == step_id:
                    out[s.labels["partition"]] = s.value
    return out


def test_lag_metric_follows_a_producer_that_outruns_the_dataflow(
    kafka_broker: KafkaBroker,
) -> None:
    b = kafka_broker
    t = b.create_topic(partitions=1)
    b.produce(t, [(None, b"x")] * 500)  # the producer is far ahead of the dataflow
    gate = threading.Semaphore(0)
    out: list[Any] = []

    def gated(batch: list[Any]) -> list[Any]:
        # One batch per permit: the test decides how far the dataflow gets.
        assert gate.acquire(timeout=60)
        return batch

    flow = Dataflow("lagged")
    msgs = op.input("in", flow, KafkaSource(b.brokers, [t], batch_size=50))
    op.output("out", op.flat_map_batch("gate", msgs, gated), TestingSink(out))
    port = free_port()
    thread, errors = _run_in_thread(flow, epoch_interval=ZERO, metrics_port=port, metrics_host="127.0.0.1")
    part = f"0-{t}"

    def step() -> float | None:
        # Let one more batch through; the worker reports the lag at the end
        # of that batch's epoch, then blocks on the next batch.
        n = len(out)
        gate.release()
        _wait_for(lambda: len(out) == n + 50, "a batch")
        return _lag_or_none(port, part)

    try:
        for done in (1, 2, 3):
            step()
            _wait_for(
                lambda d=done: _lag_or_none(port, part) == 500 - d * 50,
                f"lag {500 - done * 50} (got {_lag_or_none(port, part)})",
            )
        b.produce(t, [(None, b"y")] * 300)  # ...and it produces more meanwhile
        seen = [step() or 0.0 for _ in range(13)]
        assert len(out) == 800
        assert max(seen) > 0 and all(0 <= lag <= 800 - 150 for lag in seen), seen
        for _ in range(5):
            gate.release()
        _wait_for(lambda: _lag_or_none(port, part) == 0, "lag back to 0 once caught up")
    finally:
        request_stop()
        for _ in range(100):
            gate.release()
        thread.join(30)
    assert not errors, errors


def _lag_or_none(port: int, part: str) -> float | None:
    try:
        return _lag(port, "lagged.in").get(part)
    except OSError:
        return None


# ------------------------------------------------------------------ example


def test_kafka_wordcount_example(kafka_broker: KafkaBroker) -> None:
    b = kafka_broker
    src, dst = b.create_topic(partitions=3), b.create_topic(partitions=1)
    b.produce(src, [(None, b"the cat and the hat"), (None, b"The end")])
    env = _env(
        b, KAFKA_BROKERS=b.bootstrap, KAFKA_IN_TOPIC=src, KAFKA_OUT_TOPIC=dst, HEADRACE_METRICS_PORT="0"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "headrace.run", "examples/kafka_wordcount.py:flow", "-w", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {m.key().decode(): int(m.value()) for m in b.consume_all(dst)}
    assert got == {"the": 3, "cat": 1, "and": 1, "hat": 1, "end": 1}
