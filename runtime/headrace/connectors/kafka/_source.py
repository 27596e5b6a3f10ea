"""The Kafka source: one source partition per topic partition.

Each partition owns one consumer, assigned (never subscribed: no consumer
group, no rebalances) to its topic partition at an absolute offset. That
offset, the next one to read, is the partition's snapshot; a resumed or
rescaled dataflow continues at the committed epoch's offsets.

Lag is the high watermark minus the position. The high watermark comes from
two places that never block the worker: what the consumer's fetches last
saw, and an asynchronous ListOffsets request sent at most every few seconds
(fetches stop while a partition's local queue is full, which is exactly
when the lag matters).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaException,
    TopicPartition,
)
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client import Gauge

from headrace.connectors.kafka import _client
from headrace.connectors.kafka._messages import KafkaError, KafkaSourceMessage
from headrace.inputs import StatefulSourcePartition

log = logging.getLogger("headrace.connectors.kafka")

# The name Bytewax's Kafka source exports, so dashboards built on it keep
# working; `headrace_source_lag` (set by the engine from `lag()`) is the
# one the autoscaler reads.
CONSUMER_LAG = Gauge(
    "bytewax_kafka_consumer_lag",
    "Difference between last offset on the broker and the currently consumed offset.",
    ["step_id", "topic", "partition"],
)

_PARTITION_EOF = ConfluentKafkaError._PARTITION_EOF
_MIN_IDLE = 0.001
_MAX_IDLE = 0.005
_WATERMARK_EVERY = 2.0
_UTC = UTC
_new = object.__new__


class HighWatermarks:
    """Asks the brokers for high watermarks in the background, at most every few seconds.

    Shared by the partitions of one source in one process (one admin client).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._admin: AdminClient | None = None
        self._pending: dict[tuple[str, int], Future[Any]] = {}
        self._asked: dict[tuple[str, int], float] = {}
        self._high: dict[tuple[str, int], int] = {}

    def high(self, topic: str, part: int) -> int | None:
        """The last high watermark heard for a partition; asks again if stale."""
        key = (topic, part)
        with self._lock:
            fut = self._pending.get(key)
            if fut is not None and fut.done():
                del self._pending[key]
                try:
                    self._high[key] = int(fut.result().offset)
                except Exception:
                    log.debug("ListOffsets for %s[%d] failed", topic, part, exc_info=True)
                fut = None
            now = time.monotonic()
            if fut is None and now - self._asked.get(key, -1e9) >= _WATERMARK_EVERY:
                self._asked[key] = now
                try:
                    if self._admin is None:
                        self._admin = AdminClient(self._config)
                    tp = TopicPartition(topic, part)
                    futs = self._admin.list_offsets(
                        {tp: OffsetSpec.latest()}, request_timeout=_WATERMARK_EVERY * 2
                    )
                    self._pending[key] = next(iter(futs.values()))
                except Exception:
                    log.debug("can't ask for %s[%d]'s high watermark", topic, part, exc_info=True)
            return self._high.get(key)


class KafkaSourcePartition(StatefulSourcePartition[Any, int]):
    """Reads one topic partition from an absolute offset; snapshots the next offset."""

    def __init__(
        self,
        step_id: str,
        config: dict[str, Any],
        brokers: str,
        topic: str,
        part: int,
        starting_offset: int,
        resume_state: int | None,
        tail: bool,
        batch_size: int,
        raise_on_errors: bool,
        marks: HighWatermarks,
    ) -> None:
        self._step_id = step_id
        self._topic = topic
        self._part = part
        self._batch_size = batch_size
        self._raise = raise_on_errors
        self._marks = marks
        self._tp = TopicPartition(topic, part)
        self._idle = 0.0
        self._awake: datetime | None = None
        self._done = False
        self._eof_at: int | None = None
        consumer = Consumer(config)
        try:
            timeout = _client.metadata_timeout(config)
            try:
                low, high = consumer.get_watermark_offsets(self._tp, timeout=timeout)
            except KafkaException as exc:
                what = f"step {step_id!r}: KafkaSource ({topic!r} partition {part})"
                raise _client.unreachable(what, brokers, timeout, exc) from exc
            if resume_state is not None:
                pos = int(resume_state)
            elif starting_offset == OFFSET_BEGINNING:
                pos = low
            elif starting_offset == OFFSET_END:
                pos = high
            else:
                pos = int(starting_offset)
            # Absolute from here on: a snapshot taken before the first
            # message still names the exact place to resume.
            self._pos = pos
            self._high = high
            self._end = None if tail else high
            if self._end is not None and pos >= self._end:
                self._done = True
            else:
                consumer.assign([TopicPartition(topic, part, pos)])
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        self._consume = consumer.consume
        self._gauge = CONSUMER_LAG.labels(step_id, topic, str(part))

    def next_batch(self) -> list[Any]:
        if self._done:
            raise StopIteration()
        msgs = self._consume(self._batch_size, 0)
        if not msgs:
            # Nothing buffered locally: back off a little instead of spinning.
            self._idle = min(_MAX_IDLE, max(_MIN_IDLE, self._idle * 2))
            self._awake = datetime.now(_UTC) + timedelta(seconds=self._idle)
            return []
        self._idle = 0.0
        self._awake = None
        out: list[Any] = []
        append = out.append
        topic = self._topic
        end = self._end
        pos = self._pos
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == _PARTITION_EOF:
                    if end is not None:
                        self._eof_at = m.offset()
                    continue
                self._on_error(err, m, out)
                continue
            off: int = m.offset()  # type: ignore[assignment] # a message has one
            if end is not None and off >= end:
                break
            km = _new(KafkaSourceMessage)
            km.__dict__.update(
                key=m.key(),
                value=m.value(),
                topic=topic,
                headers=m.headers() or [],
                latency=None,
                offset=off,
                partition=self._part,
                timestamp=m.timestamp(),
            )
            append(km)
            pos = off + 1
        self._pos = pos
        if end is not None and (pos >= end or (self._eof_at is not None and self._eof_at >= end)):
            self._done = True
        return out

    def _on_error(self, err: Any, m: Any, out: list[Any]) -> None:
        off = m.offset()
        where = f"topic {self._topic!r} partition {self._part} offset " + (
            str(off) if off is not None and off >= 0 else f"{self._pos} (the next to read)"
        )
        if self._raise:
            msg = (
                f"step {self._step_id!r}: error consuming from Kafka at {where}: {err.str()} "
                f"({err.name()}); pass raise_on_errors=False to get errors as KafkaError items"
            )
            raise RuntimeError(msg)
        km = KafkaSourceMessage(
            key=m.key(),
            value=m.value(),
            topic=self._topic,
            headers=m.headers() or [],
            offset=off if off is not None and off >= 0 else self._pos,
            partition=self._part,
            timestamp=m.timestamp(),
        )
        out.append(KafkaError(err, km))

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._pos

    def lag(self) -> int | None:
        """Messages on the broker not read yet: high watermark minus position."""
        high = self._high
        try:
            _low, cached = self._consumer.get_watermark_offsets(self._tp, cached=True)
        except (KafkaException, RuntimeError):
            cached = -1
        if cached is not None and cached > high:
            high = cached
        asked = self._marks.high(self._topic, self._part)
        if asked is not None and asked > high:
            high = asked
        self._high = high
        lag = max(0, high - self._pos)
        self._gauge.set(lag)
        return lag

    def close(self) -> None:
        self._consumer.close()
