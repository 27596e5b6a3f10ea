"""Dataflows for the exactly-once Kafka tests, run with ``python -m headrace.run``.

Settings come from the environment: HR_BROKERS (comma-separated), HR_IN (the
input topic), HR_OUT (the output topic), HR_SLOW (seconds to sleep per
batch, so a kill lands mid-run), HR_EOS (``0``: at-least-once) and HR_TXN
(the transactional ids' prefix).
"""

from __future__ import annotations

import os

import headrace.operators as op
from headrace.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from headrace.dataflow import Dataflow
from tests.support.flows._steps import slow


def copy_upper() -> Dataflow:
    """HR_IN -> value.upper(), key kept -> HR_OUT, exactly once unless HR_EOS=0 (tail=False)."""
    brokers = os.environ["HR_BROKERS"].split(",")
    flow = Dataflow("kafka_eos")
    msgs = op.input("in", flow, KafkaSource(brokers, [os.environ["HR_IN"]], tail=False, batch_size=20))
    msgs = op.flat_map_batch("slow", msgs, slow)
    # Spread the messages over the workers, so every worker's sink writes.
    msgs = op.redistribute("spread", msgs)
    out = op.map("upper", msgs, lambda m: KafkaSinkMessage(m.key, m.value.upper()))
    eos = os.environ.get("HR_EOS", "1") == "1"
    config = {"transactional.id": os.environ["HR_TXN"]} if eos else {}
    op.output("out", out, KafkaSink(brokers, os.environ["HR_OUT"], config, exactly_once=eos))
    return flow
