"""Word count over a Kafka topic: lines in, ``word -> count`` messages out.

Reads every partition of KAFKA_IN_TOPIC up to the end it has when the
dataflow starts, counts the words, and writes one message per word to
KAFKA_OUT_TOPIC, keyed by the word (so a compacted topic keeps the latest
count, and a repeat after a crash replaces rather than adds). With
KAFKA_TAIL=1 it keeps reading new lines and writes a word's running count
each time it changes.

    KAFKA_BROKERS=localhost:9092 KAFKA_IN_TOPIC=lines KAFKA_OUT_TOPIC=word-counts \\
        python -m headrace.run examples/kafka_wordcount.py:flow -w 2

Needs the kafka extra: pip install 'headrace[kafka]'.
"""

from __future__ import annotations

import os
import re

import headrace.operators as op
from headrace.connectors.kafka import KafkaSinkMessage
from headrace.connectors.kafka import operators as kop
from headrace.dataflow import Dataflow

BROKERS = os.environ.get("KAFKA_BROKERS", "localhost:9092").split(",")
IN_TOPIC = os.environ.get("KAFKA_IN_TOPIC", "lines")
OUT_TOPIC = os.environ.get("KAFKA_OUT_TOPIC", "word-counts")
TAIL = os.environ.get("KAFKA_TAIL", "0") == "1"

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")

flow = Dataflow("kafka_wordcount")
lines = kop.input("lines", flow, brokers=BROKERS, topics=[IN_TOPIC], tail=TAIL)
# A message that can't be read stops the run, naming its partition and offset.
op.raises("no_errors", lines.errs)
words = op.flat_map("words", lines.oks, lambda m: WORD.findall(m.value.decode().lower()))
if TAIL:
    keyed = op.key_on("key", words, lambda w: w)
    counts = op.stateful_map("count", keyed, lambda n, _w: ((n or 0) + 1, (n or 0) + 1))
else:
    counts = op.count_final("count", words, lambda w: w)
out = op.map("to_kafka", counts, lambda kv: KafkaSinkMessage(kv[0].encode(), str(kv[1]).encode()))
kop.output("out", out, brokers=BROKERS, topic=OUT_TOPIC)
