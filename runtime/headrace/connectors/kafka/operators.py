"""Kafka operators: input and output, and (de)serialization with an error stream.

Import them as ``kop``:

>>> from headrace.connectors.kafka import operators as kop
>>> from headrace.dataflow import Dataflow
>>> flow = Dataflow("kafka-in-out")
>>> kinp = kop.input("kafka_inp", flow, brokers=["localhost:9092"], topics=["in"])
>>> kop.output("kafka-out", kinp.oks, brokers=["localhost:9092"], topic="out")

`input` and the ``deserialize*`` operators return `KafkaOpOut`: ``oks`` (the
messages) and ``errs`` (`KafkaError` items, which say the topic, partition
and offset of the message they are about). Route ``errs`` somewhere, or
stop the dataflow on the first one with ``op.raises``. The ``deserialize*``
operators also take the operators' ``on_error=`` policy: ``"skip"`` drops a
message that fails (counted and logged), ``"dead_letter"`` sends it to
`headrace.operators.dead_letters` (``errs`` then stays empty), ``"fail"``
stops the run, naming the message's offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from confluent_kafka import OFFSET_BEGINNING
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.serialization import (
    Deserializer,
    MessageField,
    SerializationContext,
    Serializer,
)

import headrace.operators as op
from headrace.connectors.kafka import (
    KafkaError,
    KafkaSink,
    KafkaSinkMessage,
    KafkaSource,
    KafkaSourceMessage,
)
from headrace.dataflow import Dataflow, Stream, operator
from headrace.errors import ErrorPolicy
from headrace.operators._dead_letters import check_policy, guarded_stateless

__all__ = [
    "KafkaOpOut",
    "deserialize",
    "deserialize_key",
    "deserialize_value",
    "input",
    "output",
    "serialize",
    "serialize_key",
    "serialize_value",
]

X = TypeVar("X")
"""Type of the items that were processed fine."""

E = TypeVar("E")
"""Type of the errors."""

_KEY_ERR = ConfluentKafkaError._KEY_DESERIALIZATION
_VAL_ERR = ConfluentKafkaError._VALUE_DESERIALIZATION


@dataclass(frozen=True)
class KafkaOpOut(Generic[X, E]):
    """The two streams a Kafka operator returns.

    >>> from headrace.dataflow import Dataflow
    >>> out = input("in", Dataflow("f"), brokers=["localhost:9092"], topics=["t"])
    >>> sorted(vars(out))
    ['errs', 'oks']
    """

    oks: Stream[X]
    """Messages processed fine."""

    errs: Stream[E]
    """`KafkaError` items."""


def _ctx(topic: str | None, field: MessageField) -> SerializationContext:
    # Like the compatible API, a message without a topic passes None along.
    return SerializationContext(cast(str, topic), field)


def _is_ok(item: Any) -> bool:
    return not isinstance(item, KafkaError)


@operator
def _kafka_error_split(step_id: str, up: Stream[Any]) -> KafkaOpOut[Any, Any]:
    """Split a stream into messages and `KafkaError` items."""
    b = op.branch("branch", up, _is_ok)
    return KafkaOpOut(b.trues, b.falses)


def _as_sink(msg: Any) -> Any:
    if isinstance(msg, KafkaSourceMessage):
        return msg.to_sink()
    return msg


@operator
def _to_sink(step_id: str, up: Stream[Any]) -> Stream[KafkaSinkMessage[Any, Any]]:
    """Turn source messages into sink messages; leave sink messages as they are."""
    return op.map("map", up, _as_sink)


@operator
def input(
    step_id: str,
    flow: Dataflow,
    *,
    brokers: list[str],
    topics: list[str],
    tail: bool = True,
    starting_offset: int = OFFSET_BEGINNING,
    add_config: dict[str, Any] | None = None,
    batch_size: int = 1000,
) -> KafkaOpOut[KafkaSourceMessage[bytes | None, bytes | None], KafkaError[Any, Any]]:
    """Read Kafka topics (see `KafkaSource`); consumer errors go to ``errs``.

    >>> from headrace.dataflow import Dataflow
    >>> out = input("in", Dataflow("f"), brokers=["localhost:9092"], topics=["t"], tail=False)
    >>> type(out).__name__
    'KafkaOpOut'
    """
    src = KafkaSource(brokers, topics, tail, starting_offset, add_config, batch_size, raise_on_errors=False)
    return op.input("kafka_input", flow, src).then(_kafka_error_split, "split_err")


@operator
def output(
    step_id: str,
    up: Stream[Any],
    *,
    brokers: list[str],
    topic: str,
    add_config: dict[str, Any] | None = None,
    exactly_once: bool = False,
) -> None:
    """Write messages to Kafka (see `KafkaSink`, also for ``exactly_once``); source messages are converted.

    >>> from headrace.dataflow import Dataflow
    >>> msgs = input("in", Dataflow("f"), brokers=["localhost:9092"], topics=["t"])
    >>> output("out", msgs.oks, brokers=["localhost:9092"], topic="copy")
    """
    _to_sink("to_sink", up).then(
        op.output, "kafka_output", KafkaSink(brokers, topic, add_config, exactly_once=exactly_once)
    )


def _fail(step_id: str, what: str, msg: Any, exc: Exception) -> ValueError:
    return ValueError(
        f"step {step_id!r}: can't deserialize the {what} of the message at {msg._where()}: "
        f"{type(exc).__name__}: {exc}"
    )


def _policy(step_id: str, on_error: object, raise_on_errors: bool) -> str | None:
    """The error policy of a ``deserialize*`` step: None for Bytewax's (``errs`` or raise)."""
    if on_error is None:
        return None
    if raise_on_errors:
        msg = f"step {step_id!r}: give `raise_on_errors` or `on_error`, not both"
        raise ValueError(msg)
    return check_policy(step_id, on_error)


def _deserialized(
    up: Stream[Any], mapper: Any, policy: str | None, split: str = "split_err"
) -> KafkaOpOut[KafkaSourceMessage[Any, Any], KafkaError[Any, Any]]:
    """``mapper`` over ``up`` (under ``policy``: skip or dead letters), split into messages and errors."""
    if policy is None or policy == "fail":
        return op.map("map", up, mapper).then(_kafka_error_split, split)
    # Guarded in this operator's own scope: its failures are this step's.
    return guarded_stateless(up, "map", mapper, policy).then(_kafka_error_split, split)


@operator
def deserialize_key(
    step_id: str,
    up: Stream[KafkaSourceMessage[Any, Any]],
    deserializer: Deserializer,
    *,
    raise_on_errors: bool = False,
    on_error: ErrorPolicy | None = None,
) -> KafkaOpOut[KafkaSourceMessage[Any, Any], KafkaError[Any, Any]]:
    """Deserialize keys; a key that fails goes to ``errs`` (or raises, with its offset).

    ``on_error`` (instead of ``raise_on_errors``): see the module's docstring.

    >>> from confluent_kafka.serialization import StringDeserializer
    >>> from headrace.dataflow import Dataflow
    >>> msgs = input("in", Dataflow("f"), brokers=["localhost:9092"], topics=["t"])
    >>> keys = deserialize_key("key", msgs.oks, StringDeserializer())
    """

    policy = _policy(up._scope.parent_id, on_error, raise_on_errors)
    raises = raise_on_errors or policy is not None

    def mapper(msg: KafkaSourceMessage[Any, Any]) -> Any:
        try:
            key = deserializer(msg.key, _ctx(msg.topic, MessageField.KEY))
        except Exception as exc:
            if raises:
                raise _fail(step_id, "key", msg, exc) from exc
            return KafkaError(ConfluentKafkaError(_KEY_ERR, str(exc)), msg)
        return msg._with_key(key)

    return _deserialized(up, mapper, policy, "split")


@operator
def deserialize_value(
    step_id: str,
    up: Stream[KafkaSourceMessage[Any, Any]],
    deserializer: Deserializer,
    *,
    raise_on_errors: bool = False,
    on_error: ErrorPolicy | None = None,
) -> KafkaOpOut[KafkaSourceMessage[Any, Any], KafkaError[Any, Any]]:
    """Deserialize values; a value that fails goes to ``errs`` (or raises, with its offset).

    ``on_error`` (instead of ``raise_on_errors``): see the module's docstring.

    >>> from confluent_kafka.serialization import StringDeserializer
    >>> from headrace.dataflow import Dataflow
    >>> msgs = input("in", Dataflow("f"), brokers=["localhost:9092"], topics=["t"])
    >>> vals = deserialize_value("val", msgs.oks, StringDeserializer())
    """

    policy = _policy(up._scope.parent_id, on_error, raise_on_errors)
    raises = raise_on_errors or policy is not None

    def mapper(msg: KafkaSourceMessage[Any, Any]) -> Any:
        try:
            value = deserializer(msg.value, _ctx(msg.topic, MessageField.VALUE))
        except Exception as exc:
            if raises:
                raise _fail(step_id, "value", msg, exc) from exc
            return KafkaError(ConfluentKafkaError(_VAL_ERR, str(exc)), msg)
        return msg._with_value(value)

    return _deserialized(up, mapper, policy)


@operator
def deserialize(
    step_id: str,
    up: Stream[KafkaSourceMessage[Any, Any]],
    *,
    key_deserializer: Deserializer,
    val_deserializer: Deserializer,
    raise_on_errors: bool = False,
    on_error: ErrorPolicy | None = None,
) -> KafkaOpOut[KafkaSourceMessage[Any, Any], KafkaError[Any, Any]]:
    """Deserialize keys and values; the error keeps the original message.

    ``on_error`` (instead of ``raise_on_errors``): see the module's docstring.

    >>> from confluent_kafka.serialization import StringDeserializer
    >>> from headrace.dataflow import Dataflow
    >>> msgs = input("in", Dataflow("f"), brokers=["localhost:9092"], topics=["t"])
    >>> out = deserialize("de", msgs.oks, key_deserializer=StringDeserializer(),
    ...                   val_deserializer=StringDeserializer())
    """

    policy = _policy(up._scope.parent_id, on_error, raise_on_errors)
    raises = raise_on_errors or policy is not None

    def mapper(msg: KafkaSourceMessage[Any, Any]) -> Any:
        try:
            key = key_deserializer(msg.key, _ctx(msg.topic, MessageField.KEY))
        except Exception as exc:
            if raises:
                raise _fail(step_id, "key", msg, exc) from exc
            return KafkaError(ConfluentKafkaError(_KEY_ERR, str(exc)), msg)
        try:
            value = val_deserializer(msg.value, _ctx(msg.topic, MessageField.VALUE))
        except Exception as exc:
            if raises:
                raise _fail(step_id, "value", msg, exc) from exc
            return KafkaError(ConfluentKafkaError(_VAL_ERR, str(exc)), msg)
        return msg._with_key_and_value(key, value)

    return _deserialized(up, mapper, policy)


@operator
def serialize_key(
    step_id: str,
    up: Stream[Any],
    serializer: Serializer,
) -> Stream[KafkaSinkMessage[bytes, Any]]:
    """Serialize keys (source messages become sink messages); a failure raises.

    >>> from confluent_kafka.serialization import StringSerializer
    >>> from headrace.dataflow import Dataflow
    >>> msgs = input("in", Dataflow("f"), brokers=["localhost:9092"], topics=["t"])
    >>> out = serialize_key("key", msgs.oks, StringSerializer())
    """

    def mapper(msg: KafkaSinkMessage[Any, Any]) -> KafkaSinkMessage[bytes, Any]:
        key = serializer(msg.key, _ctx(msg.topic, MessageField.KEY))
        return msg._with_key(cast(bytes, key))

    return _to_sink("to_sink", up).then(op.map, "map", mapper)


@operator
def serialize_value(
    step_id: str,
    up: Stream[Any],
    serializer: Serializer,
) -> Stream[KafkaSinkMessage[Any, bytes]]:
    """Serialize values (source messages become sink messages); a failure raises.

    >>> from confluent_kafka.serialization import StringSerializer
    >>> from headrace.dataflow import Dataflow
    >>> msgs = input("in", Dataflow("f"), brokers=["localhost:9092"], topics=["t"])
    >>> out = serialize_value("val", msgs.oks, StringSerializer())
    """

    def mapper(msg: KafkaSinkMessage[Any, Any]) -> KafkaSinkMessage[Any, bytes]:
        value = serializer(msg.value, _ctx(msg.topic, MessageField.VALUE))
        return msg._with_value(cast(bytes, value))

    return _to_sink("to_sink", up).then(op.map, "map", mapper)


@operator
def serialize(
    step_id: str,
    up: Stream[Any],
    *,
    key_serializer: Serializer,
    val_serializer: Serializer,
) -> Stream[KafkaSinkMessage[bytes, bytes]]:
    """Serialize keys and values (source messages become sink messages); a failure raises.

    >>> from confluent_kafka.serialization import StringSerializer
    >>> from headrace.dataflow import Dataflow
    >>> msgs = input("in", Dataflow("f"), brokers=["localhost:9092"], topics=["t"])
    >>> out = serialize("ser", msgs.oks, key_serializer=StringSerializer(),
    ...                 val_serializer=StringSerializer())
    """

    def mapper(msg: KafkaSinkMessage[Any, Any]) -> KafkaSinkMessage[bytes, bytes]:
        key = key_serializer(msg.key, _ctx(msg.topic, MessageField.KEY))
        value = val_serializer(msg.value, _ctx(msg.topic, MessageField.VALUE))
        return msg._with_key_and_value(cast(bytes, key), cast(bytes, value))

    return _to_sink("to_sink", up).then(op.map, "map", mapper)
