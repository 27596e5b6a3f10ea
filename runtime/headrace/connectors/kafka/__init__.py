"""Read from and write to [Kafka](https://kafka.apache.org) topics.

Needs the ``kafka`` extra (``pip install 'headrace[kafka]'``, which installs
``confluent-kafka``).

`KafkaSource` emits `KafkaSourceMessage` items (key and value as bytes, or
`KafkaError` items for errors when ``raise_on_errors=False``); `KafkaSink`
writes `KafkaSinkMessage` items. Each topic partition is a source partition,
assigned to a worker by index like every partitioned source; its snapshot is
the next offset to read, so a resumed (or rescaled) dataflow continues at
exactly the committed epoch's offsets. No consumer group is used and no
offset is committed to Kafka.

The sink is **at-least-once** across crashes by default: a batch is
acknowledged by the brokers before the epoch that wrote it can commit, and a
resumed dataflow writes again what came after the last commit. Give messages
a key that identifies them (see docs/connectors.md) so that consumers can drop
repeats. With ``exactly_once=True`` (needs recovery) each worker writes an
epoch's messages in one Kafka transaction, committed after the epoch is
committed in the recovery store: a ``read_committed`` consumer sees every
message once, across crashes and rescaling (see `_eos`).

>>> import headrace.operators as op
>>> from headrace.dataflow import Dataflow
>>> flow = Dataflow("copy")
>>> msgs = op.input("in", flow, KafkaSource(["localhost:9092"], ["in-topic"]))
>>> out = op.map("to_sink", msgs, lambda m: KafkaSinkMessage(m.key, m.value.upper()))
>>> op.output("out", out, KafkaSink(["localhost:9092"], "out-topic"))

The `operators` submodule wraps both in operators that split errors into
their own stream and (de)serialize keys and values; `serde` has Avro
(de)serializers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

try:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END
    from confluent_kafka.admin import AdminClient
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "headrace.connectors.kafka needs confluent-kafka: pip install 'headrace[kafka]'"
    ) from _exc

from headrace.connectors.kafka import _client
from headrace.connectors.kafka._eos import ExactlyOnceSinkPartition
from headrace.connectors.kafka._messages import (
    K2,
    V2,
    K,
    K_co,
    KafkaError,
    KafkaSinkMessage,
    KafkaSourceMessage,
    V,
    V_co,
)
from headrace.connectors.kafka._sink import KafkaSinkPartition
from headrace.connectors.kafka._source import HighWatermarks, KafkaSourcePartition
from headrace.inputs import FixedPartitionedSource
from headrace.outputs import DynamicSink

__all__ = [
    "K2",
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "V2",
    "K",
    "K_co",
    "KafkaError",
    "KafkaSink",
    "KafkaSinkMessage",
    "KafkaSource",
    "KafkaSourceMessage",
    "V",
    "V_co",
]

# The consumer never joins this group (partitions are assigned, not
# subscribed) and commits nothing; librdkafka just wants a group id.
_GROUP_ID = "headrace-unused"

# Long enough to ride out a broker restart, short enough that a dataflow
# whose brokers are gone fails instead of waiting librdkafka's 5 minutes.
_DEFAULT_MESSAGE_TIMEOUT_MS = 60_000


class KafkaSource(FixedPartitionedSource[Any, int]):
    """Read Kafka topics; every topic partition is a source partition.

    - ``brokers``: ``host:port`` strings; ``topics``: topic names.
    - ``tail``: keep waiting for new messages (``True``), or end each
      partition at the end offset it had when the dataflow started.
    - ``starting_offset``: where to start without a snapshot:
      ``OFFSET_BEGINNING``, ``OFFSET_END`` or an absolute offset.
    - ``add_config``: more librdkafka settings for the consumers
      (``socket.timeout.ms`` also bounds the start-up metadata requests).
    - ``batch_size``: most messages per batch.
    - ``raise_on_errors``: stop the dataflow on a consumer error (naming the
      topic, partition and offset) or emit `KafkaError` items instead.

    Partitions are named ``"{partition}-{topic}"``; each reports its lag
    (high watermark minus position) to the ``headrace_source_lag`` metric.

    >>> src = KafkaSource(["localhost:9092"], ["events"], tail=False)
    >>> src.batch_size
    1000
    """

    def __init__(
        self,
        brokers: Iterable[str],
        topics: Iterable[str],
        tail: bool = True,
        starting_offset: int = OFFSET_BEGINNING,
        add_config: dict[str, Any] | None = None,
        batch_size: int = 1000,
        raise_on_errors: bool = True,
    ) -> None:
        self._brokers = _client.brokers_str("KafkaSource", brokers)
        self._topics = _client.topics_list("KafkaSource", topics)
        if not isinstance(batch_size, int) or batch_size < 1:
            msg = f"KafkaSource: batch_size must be an int >= 1; got {batch_size!r}"
            raise ValueError(msg)
        if starting_offset not in (OFFSET_BEGINNING, OFFSET_END) and not (
            isinstance(starting_offset, int) and starting_offset >= 0
        ):
            msg = (
                "KafkaSource: starting_offset must be OFFSET_BEGINNING, OFFSET_END or an "
                f"offset >= 0; got {starting_offset!r}"
            )
            raise ValueError(msg)
        self._tail = tail
        self._starting_offset = starting_offset
        self._add_config = dict(add_config or {})
        self.batch_size = batch_size
        self._raise_on_errors = raise_on_errors
        self._marks: HighWatermarks | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_marks"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def list_parts(self) -> list[str]:
        """One part per topic partition, ``"{partition}-{topic}"``; checks the topics exist.

        >>> KafkaSource(["127.0.0.1:1"], ["t"], add_config={"socket.timeout.ms": 500}
        ...             ).list_parts()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ConnectionError: KafkaSource: Kafka brokers '127.0.0.1:1' did not answer within 0.5 s ...
        """
        config = _client.base_config(self._brokers, self._add_config)
        admin = AdminClient(config)
        timeout = _client.metadata_timeout(config)
        parts = _client.check_topics(admin, "KafkaSource", self._brokers, self._topics, timeout)
        return [f"{i}-{topic}" for topic in self._topics for i in parts[topic]]

    def _consumer_config(self) -> dict[str, Any]:
        config = _client.base_config(self._brokers, None)
        config.update(
            {
                "group.id": _GROUP_ID,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": not self._tail,
                # A snapshot's offset that retention has deleted since: read on
                # from the oldest message kept, rather than skip to the end.
                "auto.offset.reset": "earliest",
            }
        )
        config.update(self._add_config)
        return config

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> KafkaSourcePartition:
        """Start a consumer on partition ``for_part`` at its snapshot's offset (or the start).

        >>> KafkaSource(["localhost:9092"], ["t"]).build_part("s", "0-other", None)
        Traceback (most recent call last):
        ...
        ValueError: step 's': partition '0-other' is not of this KafkaSource's topics ['t']; ...
        """
        idx, _, topic = for_part.partition("-")
        if not idx.isdigit() or topic not in self._topics:
            msg = (
                f"step {step_id!r}: partition {for_part!r} is not of this KafkaSource's topics "
                f"{self._topics!r}; did the topics change since the recovery snapshot?"
            )
            raise ValueError(msg)
        with self._lock:
            if self._marks is None:
                self._marks = HighWatermarks(_client.base_config(self._brokers, self._add_config))
            marks = self._marks
        return KafkaSourcePartition(
            step_id,
            self._consumer_config(),
            self._brokers,
            topic,
            int(idx),
            self._starting_offset,
            resume_state,
            self._tail,
            self.batch_size,
            self._raise_on_errors,
            marks,
        )


class KafkaSink(DynamicSink[KafkaSinkMessage[Any, Any]]):
    """Write `KafkaSinkMessage` items to a topic; one producer per worker.

    ``topic=None`` means every message names its own topic. By default
    at-least-once: each batch is acknowledged before it counts as written,
    and after a crash the messages since the last committed epoch are
    written again. ``add_config`` takes librdkafka producer settings (the
    default ``message.timeout.ms`` here is 60 s).

    ``exactly_once=True`` writes each worker's epoch in a Kafka transaction
    committed right after the epoch's snapshot (consumers must read with
    ``isolation.level=read_committed``; they see an epoch's output once it
    is committed). It needs recovery and a ``topic`` (its partition 0
    holds the commit markers); ``add_config={"transactional.id": P}``
    sets the transactional ids' prefix (default ``headrace-eos.{step_id}``),
    which must be unique among the dataflows writing to the cluster.

    >>> sink = KafkaSink(["localhost:9092"], "out-topic", add_config={"linger.ms": 20})
    >>> sink.topic, sink.commits_with_epochs
    ('out-topic', False)
    >>> KafkaSink(["localhost:9092"], "out-topic", exactly_once=True).commits_with_epochs
    True
    """

    def __init__(
        self,
        brokers: Iterable[str],
        topic: str | None,
        add_config: dict[str, Any] | None = None,
        *,
        exactly_once: bool = False,
    ) -> None:
        self._brokers = _client.brokers_str("KafkaSink", brokers)
        self.topic = topic
        self._add_config = dict(add_config or {})
        if exactly_once and topic is None:
            msg = (
                "KafkaSink: exactly_once=True needs a topic (its partition 0 holds the "
                "transactions' commit markers); messages may still name other topics"
            )
            raise ValueError(msg)
        # Read by the engine: an exactly-once sink commits with the epochs.
        self.commits_with_epochs = bool(exactly_once)

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> KafkaSinkPartition | ExactlyOnceSinkPartition:
        """Start this worker's producer; checks the brokers answer and the topic exists.

        >>> KafkaSink(["127.0.0.1:1"], "t", add_config={"socket.timeout.ms": 500}
        ...           ).build("s", 0, 1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ConnectionError: step 's': KafkaSink: Kafka brokers '127.0.0.1:1' did not answer ...
        """
        config = _client.base_config(self._brokers, None)
        config["message.timeout.ms"] = _DEFAULT_MESSAGE_TIMEOUT_MS
        config.update(self._add_config)
        part: KafkaSinkPartition | ExactlyOnceSinkPartition
        if self.commits_with_epochs:
            assert self.topic is not None
            prefix = str(config.pop("transactional.id", f"headrace-eos.{step_id}"))
            part = ExactlyOnceSinkPartition(step_id, config, self.topic, prefix, worker_index)
        else:
            part = KafkaSinkPartition(step_id, config, self.topic)
        if self.topic is not None:
            try:
                _client.check_topics(
                    part.producer,
                    f"step {step_id!r}: KafkaSink",
                    self._brokers,
                    [self.topic],
                    _client.metadata_timeout(config),
                )
            except BaseException:
                part.producer.purge()
                raise
        return part
