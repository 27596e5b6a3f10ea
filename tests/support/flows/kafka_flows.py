"""Dataflows for the Kafka tests, run with ``python -m headrace.run``.

Settings come from the environment: HR_BROKERS (comma-separated), HR_IN (the
input topic), HR_OUT (output topic), HR_OUT_DIR (output directory) and
HR_SLOW (seconds to sleep per batch, so a kill lands mid-run).
"""

from __future__ import annotations

import os
from pathlib import Path

import headrace.operators as op
from headrace.connectors.files import DirSink
from headrace.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from headrace.dataflow import Dataflow
from tests.support.flows._steps import count, slow


def _brokers() -> list[str]:
    return os.environ["HR_BROKERS"].split(",")


def copy_upper() -> Dataflow:
    """HR_IN -> value.upper(), key, headers and worker tag kept -> HR_OUT (tail=False)."""
    flow = Dataflow("kafka_copy")
    msgs = op.input("in", flow, KafkaSource(_brokers(), [os.environ["HR_IN"]], tail=False, batch_size=100))
    msgs = op.flat_map_batch("slow", msgs, slow)
    out = op.map(
        "upper",
        msgs,
        lambda m: KafkaSinkMessage(
            m.key, m.value.upper(), headers=[*m.headers, ("src", f"{m.partition}:{m.offset}".encode())]
        ),
    )
    op.output("out", out, KafkaSink(_brokers(), os.environ["HR_OUT"]))
    return flow


def running_counts() -> Dataflow:
    """Running word counts from HR_IN to files in HR_OUT_DIR and to topic HR_OUT.

    Every output line ``word n`` is unique, so a lost or repeated line shows.
    The Kafka messages are keyed ``word:n``: a consumer can drop repeats.
    """
    flow = Dataflow("kafka_counts")
    msgs = op.input("in", flow, KafkaSource(_brokers(), [os.environ["HR_IN"]], tail=False, batch_size=20))
    msgs = op.flat_map_batch("slow", msgs, slow)
    words = op.flat_map("split", msgs, lambda m: m.value.decode().split())
    counts = op.stateful_map("count", op.key_on("key", words, lambda w: w), count)
    lines = op.map("line", counts, lambda kv: (kv[0], f"{kv[0]} {kv[1]}"))
    op.output("files", lines, DirSink(Path(os.environ["HR_OUT_DIR"]), 3))
    to_kafka = op.map(
        "msg", lines, lambda kv: KafkaSinkMessage(f"{kv[1].replace(' ', ':')}".encode(), kv[1].encode())
    )
    op.output("kafka", to_kafka, KafkaSink(_brokers(), os.environ["HR_OUT"]))
    return flow
