"""Redis Streams in and out: readings from ``sensors``, hot ones to ``alerts``.

Each entry of the ``sensors`` stream has ``sensor`` and ``celsius`` fields;
entries at or above 75 F go to the ``alerts`` stream (trimmed to about
10,000 entries) with the temperature in Fahrenheit. The dataflow reads the
stream up to the last entry it has at start.

    redis-cli XADD sensors '*' sensor boiler celsius 31
    REDIS_URL=redis://localhost:6379/0 python -m headrace.run examples/redis_streams.py:flow
    redis-cli XRANGE alerts - +

Add ``-r redis://localhost:6379/0`` and a crash resumes after the last
committed entry; set ``tail=True`` to keep reading new entries.
"""

from __future__ import annotations

import os

import headrace.operators as op
from headrace.connectors.redis import RedisStreamEntry, RedisStreamSink, RedisStreamSource
from headrace.dataflow import Dataflow

URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")


def to_fahrenheit(e: RedisStreamEntry) -> dict[str, str]:
    f = round(float(e.fields["celsius"]) * 9 / 5 + 32, 1)
    return {"sensor": e.fields["sensor"], "fahrenheit": str(f)}


flow = Dataflow("redis_streams")
readings = op.input("sensors", flow, RedisStreamSource(URL, ["sensors"], tail=False, decode=True))
hot = op.filter("hot", op.map("fahrenheit", readings, to_fahrenheit), lambda r: float(r["fahrenheit"]) >= 75)
op.output("alerts", hot, RedisStreamSink(URL, "alerts", maxlen=10_000))
