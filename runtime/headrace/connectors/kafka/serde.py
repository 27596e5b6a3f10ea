"""Serializers and deserializers for Kafka keys and values.

- `PlainAvroSerializer` / `PlainAvroDeserializer`: raw Avro with a schema you
  give, no framing (needs ``fastavro``: ``pip install 'headrace[avro]'``).
- `SchemaRegistryAvroSerializer` / `SchemaRegistryAvroDeserializer`: Avro in
  the schema registry's wire format (a magic byte and the schema id, then
  the Avro body), registering or looking up schemas in a Confluent-compatible
  schema registry (``pip install 'headrace[schema-registry]'``).

Use them with the operators in `headrace.connectors.kafka.operators`:

>>> schema = '{"type": "record", "name": "Click", "fields": [{"name": "page", "type": "string"}]}'
>>> ser, de = PlainAvroSerializer(schema), PlainAvroDeserializer(schema)
>>> de(ser({"page": "/home"}))
{'page': '/home'}
"""

from __future__ import annotations

import io
import json
from typing import Any

from confluent_kafka.serialization import Deserializer, SerializationContext, Serializer

try:
    from fastavro import parse_schema, schemaless_reader, schemaless_writer
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "headrace.connectors.kafka.serde needs fastavro: pip install 'headrace[avro]'"
    ) from _exc

__all__ = [
    "PlainAvroDeserializer",
    "PlainAvroSerializer",
    "SchemaRegistryAvroDeserializer",
    "SchemaRegistryAvroSerializer",
]


def _schema_str(schema: Any) -> str:
    # A schema-registry `Schema` object carries its text in `schema_str`.
    text = getattr(schema, "schema_str", schema)
    if not isinstance(text, str):
        msg = f"an Avro schema must be a JSON string (or a registry Schema); got {schema!r}"
        raise TypeError(msg)
    return text


class PlainAvroSerializer(Serializer):
    """Encode objects as raw Avro (no magic byte, no schema id).

    ``schema`` is the Avro schema as a JSON string (or a registry ``Schema``);
    ``named_schemas`` holds the named types it refers to.

    >>> PlainAvroSerializer('"long"')(3)
    b'\\x06'
    """

    def __init__(self, schema: Any, named_schemas: dict[str, Any] | None = None) -> None:
        self.schema = parse_schema(json.loads(_schema_str(schema)), named_schemas=named_schemas)

    def __call__(self, obj: Any, ctx: SerializationContext | None = None) -> bytes | None:
        """Encode ``obj``.

        >>> PlainAvroSerializer('"string"')("hi")
        b'\\x04hi'
        """
        out = io.BytesIO()
        schemaless_writer(out, self.schema, obj)
        return out.getvalue()


class PlainAvroDeserializer(Deserializer):
    """Decode raw Avro with the schema you give.

    It can't read the registry's framed format (use
    `SchemaRegistryAvroDeserializer` for that); ``None`` raises ``ValueError``.

    >>> PlainAvroDeserializer('"long"')(b'\\x06')
    3
    """

    def __init__(self, schema: Any, named_schemas: dict[str, Any] | None = None) -> None:
        self.schema = parse_schema(json.loads(_schema_str(schema)), named_schemas=named_schemas)

    def __call__(self, value: bytes | None, ctx: SerializationContext | None = None) -> Any:
        """Decode ``value``.

        >>> PlainAvroDeserializer('"string"')(b'\\x04hi')
        'hi'
        """
        if value is None:
            msg = "can't deserialize None (a message without this field) as Avro"
            raise ValueError(msg)
        if isinstance(value, str):
            value = value.encode()
        return schemaless_reader(io.BytesIO(value), self.schema, None)


def _registry(registry: Any) -> Any:
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
    except ImportError as exc:
        msg = (
            "schema-registry serializers need confluent-kafka's schema registry client: "
            "pip install 'headrace[schema-registry]'"
        )
        raise ImportError(msg) from exc
    if isinstance(registry, str):
        registry = {"url": registry}
    if isinstance(registry, dict):
        # `new_client` also understands the library's in-memory "mock://" URLs.
        make = getattr(SchemaRegistryClient, "new_client", SchemaRegistryClient)
        return make(registry)
    return registry


class SchemaRegistryAvroSerializer(Serializer):
    """Encode objects as Avro in the schema registry's wire format.

    ``registry`` is the registry's URL, a client config dict (``{"url": ...,
    "basic.auth.user.info": ...}``) or a ``SchemaRegistryClient``. The schema
    is registered under the subject ``{topic}-key`` / ``{topic}-value`` on
    first use (``conf`` is passed to confluent-kafka's ``AvroSerializer``).

    >>> ser = SchemaRegistryAvroSerializer("mock://doc", '"string"')
    >>> from confluent_kafka.serialization import MessageField
    >>> ser("hi", SerializationContext("t", MessageField.VALUE))[:1]
    b'\\x00'
    """

    def __init__(self, registry: Any, schema: Any, conf: dict[str, Any] | None = None) -> None:
        from confluent_kafka.schema_registry.avro import AvroSerializer

        self.registry = _registry(registry)
        self._inner = AvroSerializer(self.registry, _schema_str(schema), conf=conf)

    def __call__(self, obj: Any, ctx: SerializationContext | None = None) -> bytes | None:
        """Encode ``obj``; ``ctx`` names the topic and field (key or value).

        >>> from confluent_kafka.serialization import MessageField
        >>> ser = SchemaRegistryAvroSerializer("mock://doc2", '"long"')
        >>> len(ser(3, SerializationContext("t", MessageField.VALUE)))
        6
        """
        return self._inner(obj, ctx)


class SchemaRegistryAvroDeserializer(Deserializer):
    """Decode the schema registry's Avro wire format, fetching writer schemas by id.

    ``schema`` (optional) is the reader schema to resolve to.

    >>> from confluent_kafka.serialization import MessageField
    >>> ctx = SerializationContext("t", MessageField.VALUE)
    >>> ser = SchemaRegistryAvroSerializer("mock://doc3", '"string"')
    >>> SchemaRegistryAvroDeserializer(ser.registry)(ser("hi", ctx), ctx)
    'hi'
    """

    def __init__(self, registry: Any, schema: Any = None, conf: dict[str, Any] | None = None) -> None:
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        self.registry = _registry(registry)
        self._inner = AvroDeserializer(
            self.registry, None if schema is None else _schema_str(schema), conf=conf
        )

    def __call__(self, value: bytes | None, ctx: SerializationContext | None = None) -> Any:
        """Decode ``value``; raises on data not in the registry's format.

        >>> from confluent_kafka.serialization import MessageField
        >>> SchemaRegistryAvroDeserializer("mock://doc4")(b"xx", SerializationContext(
        ...     "t", MessageField.VALUE))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        confluent_kafka.serialization.SerializationError: ...
        """
        return self._inner(value, ctx)
