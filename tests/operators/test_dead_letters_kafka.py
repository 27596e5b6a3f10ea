"""Dead letters into Kafka: a real broker, Kafka in, JSON parsed with ``on_error``, Kafka out.

The messages that parse go to one topic, the dead letters (as JSON, with
the offset of the message) to another; both are read back whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("confluent_kafka", reason="the kafka extra is not installed")

import headrace.operators as op
from headrace.connectors.kafka import KafkaSinkMessage
from headrace.connectors.kafka import operators as kop
from headrace.dataflow import Dataflow
from headrace.errors import DeadLetter
from headrace.testing import run_main
from tests.support.kafka_broker import KafkaBroker, session_broker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One real broker for the module."""
    yield from session_broker(tmp_path_factory)


def _parse(msg: Any) -> Any:
    return msg._with_value(json.dumps({"n": json.loads(msg.value)["n"] * 2}).encode())


def _letter(d: DeadLetter) -> KafkaSinkMessage[bytes, bytes]:
    body = {
        "step_id": d.step_id,
        "offset": d.item.offset,
        "partition": d.item.partition,
        "value": d.item.value.decode(errors="replace"),
        "exc_type": d.exc_type,
        "message": d.message,
    }
    return KafkaSinkMessage(d.step_id.encode(), json.dumps(body).encode())


def test_dead_letters_reach_a_kafka_topic(kafka_broker: KafkaBroker) -> None:
    b = kafka_broker
    src, good, dlq = b.create_topic(partitions=1), b.create_topic(), b.create_topic()
    values = [b'{"n": 1}', b"{oops", b'{"n": 3}', b'{"m": 4}', b'{"n": 5}']
    b.produce(src, [(None, v) for v in values], partition=0)
    flow = Dataflow("dl_kafka_e2e")
    kin = kop.input("in", flow, brokers=b.brokers, topics=[src], tail=False)
    parsed = op.map("parse", kin.oks, _parse, on_error="dead_letter")
    kop.output("out", parsed, brokers=b.brokers, topic=good)
    letters = op.map("letter", op.dead_letters("dead_letters", flow), _letter)
    kop.output("dlq", letters, brokers=b.brokers, topic=dlq)
    run_main(flow)
    assert sorted(json.loads(m.value())["n"] for m in b.consume_all(good)) == [2, 6, 10]
    dead = sorted((json.loads(m.value()) for m in b.consume_all(dlq)), key=lambda d: d["offset"])
    assert [(d["step_id"], d["offset"], d["partition"], d["value"], d["exc_type"]) for d in dead] == [
        ("dl_kafka_e2e.parse", 1, 0, "{oops", "json.decoder.JSONDecodeError"),
        ("dl_kafka_e2e.parse", 3, 0, '{"m": 4}', "KeyError"),
    ]
    assert [d["message"] for d in dead] == [
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        "'n'",
    ]
