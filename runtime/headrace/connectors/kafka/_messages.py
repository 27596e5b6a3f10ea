"""The message types that flow through a dataflow reading or writing Kafka.

This module imports nothing from the client library but its error type, so
the messages stay plain, picklable data that can cross workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from confluent_kafka import KafkaError as ConfluentKafkaError

K = TypeVar("K")
"""Type of the key of a Kafka message."""

V = TypeVar("V")
"""Type of the value of a Kafka message."""

K_co = TypeVar("K_co", covariant=True)
"""Type of the key of a Kafka message (covariant)."""

V_co = TypeVar("V_co", covariant=True)
"""Type of the value of a Kafka message (covariant)."""

K2 = TypeVar("K2")
"""Type of the key of a modified Kafka message."""

V2 = TypeVar("V2")
"""Type of the value of a modified Kafka message."""


@dataclass(frozen=True)
class KafkaSourceMessage(Generic[K, V]):
    """A message read from Kafka, with where it came from.

    ``timestamp`` is the client library's ``(type, milliseconds)`` pair;
    ``headers`` is a list of ``(name, bytes)`` pairs (empty when none).

    >>> m = KafkaSourceMessage(b"k", b"v", topic="t", offset=3, partition=0)
    >>> m.value, m.offset, m.headers
    (b'v', 3, [])
    """

    key: K
    value: V

    topic: str | None = field(default=None)
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    latency: float | None = field(default=None)
    offset: int | None = field(default=None)
    partition: int | None = field(default=None)
    timestamp: tuple[int, int] | None = field(default=None)

    def to_sink(self) -> KafkaSinkMessage[K, V]:
        """Make a message to write: same key, value and headers.

        The topic, partition and timestamp are left for the sink to choose.

        >>> KafkaSourceMessage(b"k", b"v", headers=[("h", b"1")]).to_sink()
        KafkaSinkMessage(key=b'k', value=b'v', topic=None, headers=[('h', b'1')], partition=None, timestamp=0)
        """
        return KafkaSinkMessage(key=self.key, value=self.value, headers=self.headers)

    def _with_key(self, key: K2) -> KafkaSourceMessage[K2, V]:
        return _source_msg(key, self.value, self)

    def _with_value(self, value: V2) -> KafkaSourceMessage[K, V2]:
        return _source_msg(self.key, value, self)

    def _with_key_and_value(self, key: K2, value: V2) -> KafkaSourceMessage[K2, V2]:
        return _source_msg(key, value, self)

    def _where(self) -> str:
        return f"topic {self.topic!r} partition {self.partition} offset {self.offset}"


_new = object.__new__


def _source_msg(key: Any, value: Any, like: KafkaSourceMessage[Any, Any]) -> Any:
    # Bypasses the frozen dataclass __init__ (which sets each field through
    # object.__setattr__): this runs once per message on the hot path.
    msg = _new(KafkaSourceMessage)
    d = msg.__dict__
    d.update(like.__dict__)
    d["key"] = key
    d["value"] = value
    return msg


@dataclass(frozen=True)
class KafkaSinkMessage(Generic[K_co, V_co]):
    """A message to write to Kafka.

    ``topic`` overrides the sink's topic; ``partition`` picks a partition
    (``None``: the producer's partitioner, by key); ``timestamp`` is in
    milliseconds since the epoch (``0``: now).

    >>> KafkaSinkMessage(b"key", b"value", headers=[("trace", b"42")]).headers
    [('trace', b'42')]
    """

    key: K_co
    value: V_co

    topic: str | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int | None = None
    timestamp: int = 0

    def _with_key(self, key: K2) -> KafkaSinkMessage[K2, V_co]:
        return KafkaSinkMessage(key, self.value, self.topic, self.headers, self.partition, self.timestamp)

    def _with_value(self, value: V2) -> KafkaSinkMessage[K_co, V2]:
        return KafkaSinkMessage(self.key, value, self.topic, self.headers, self.partition, self.timestamp)

    def _with_key_and_value(self, key: K2, value: V2) -> KafkaSinkMessage[K2, V2]:
        return KafkaSinkMessage(key, value, self.topic, self.headers, self.partition, self.timestamp)


@dataclass(frozen=True)
class KafkaError(Generic[K, V]):
    """An error about one message: from the consumer, or a failed (de)serializer.

    ``msg`` is the message as it was read (``msg.topic``, ``msg.partition``
    and ``msg.offset`` say where it is).

    >>> from confluent_kafka import KafkaError as CKE
    >>> e = KafkaError(CKE(CKE._VALUE_DESERIALIZATION, "not JSON"),
    ...                KafkaSourceMessage(None, b"{", topic="t", partition=1, offset=7))
    >>> print(e)
    _VALUE_DESERIALIZATION at topic 't' partition 1 offset 7: not JSON
    """

    err: ConfluentKafkaError
    """The error from the client library (``err.code()``, ``err.str()``)."""

    msg: KafkaSourceMessage[K, V]
    """The message the error is about."""

    def __str__(self) -> str:
        return f"{self.err.name()} at {self.msg._where()}: {self.err.str()}"
