"""Client settings and metadata look-ups shared by the Kafka source and sink.

Everything that talks to a broker before a dataflow starts lives here, with
a bounded timeout and an error that names the brokers and the topic, so a
wrong address or a missing topic fails in seconds with a message that says
what to fix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import KafkaException

# librdkafka logs to stderr unless it is given a logger; route it through
# logging so a run's output stays readable and log levels apply.
client_log = logging.getLogger("headrace.connectors.kafka.client")

# Seconds to wait for metadata when a source or sink starts, unless the
# user's `socket.timeout.ms` says otherwise.
DEFAULT_METADATA_TIMEOUT = 10.0


def brokers_str(what: str, brokers: Iterable[str]) -> str:
    """Join broker addresses for `bootstrap.servers`; reject a bare string.

    >>> brokers_str("KafkaSource", ["a:9092", "b:9092"])
    'a:9092,b:9092'
    >>> brokers_str("KafkaSource", "a:9092")
    Traceback (most recent call last):
    ...
    TypeError: brokers must be an iterable and not a string; KafkaSource: write ['a:9092']
    """
    # Bytewax's words first (tests match on them), then which connector and a fix.
    if isinstance(brokers, str | bytes):
        msg = f"brokers must be an iterable and not a string; {what}: write [{brokers!r}]"
        raise TypeError(msg)
    if not isinstance(brokers, Iterable):
        msg = (
            f"brokers must be an iterable of 'host:port' strings; {what} got "
            f"{type(brokers).__name__} {brokers!r}"
        )
        raise TypeError(msg)
    out = [str(b).strip() for b in brokers]
    if not out or not all(out):
        msg = f"{what}: brokers must name at least one 'host:port'; got {out!r}"
        raise ValueError(msg)
    return ",".join(out)


def topics_list(what: str, topics: Iterable[str]) -> list[str]:
    """Check the topic names a source reads.

    >>> topics_list("KafkaSource", ["a", "b"])
    ['a', 'b']
    >>> topics_list("KafkaSource", "a")
    Traceback (most recent call last):
    ...
    TypeError: topics must be an iterable and not a string; KafkaSource: write ['a']
    """
    if isinstance(topics, str | bytes):
        msg = f"topics must be an iterable and not a string; {what}: write [{topics!r}]"
        raise TypeError(msg)
    if not isinstance(topics, Iterable):
        msg = f"topics must be an iterable of names; {what} got {type(topics).__name__} {topics!r}"
        raise TypeError(msg)
    out = list(topics)
    if not out:
        msg = f"{what}: topics is empty; name at least one topic to read"
        raise ValueError(msg)
    return out


def metadata_timeout(config: dict[str, Any]) -> float:
    """Seconds to wait for a broker when starting: `socket.timeout.ms` if set.

    >>> metadata_timeout({"socket.timeout.ms": "2500"})
    2.5
    >>> metadata_timeout({})
    10.0
    """
    ms = config.get("socket.timeout.ms")
    return DEFAULT_METADATA_TIMEOUT if ms is None else float(ms) / 1000.0


def base_config(brokers: str, add_config: dict[str, Any] | None) -> dict[str, Any]:
    """Client settings: the brokers, our logger, then the user's settings.

    >>> base_config("a:1", {"client.id": "me"})["client.id"]
    'me'
    """
    config: dict[str, Any] = {"bootstrap.servers": brokers, "logger": client_log}
    if add_config:
        config.update(add_config)
    return config


def unreachable(what: str, brokers: str, timeout: float, exc: BaseException) -> ConnectionError:
    """The error for brokers that did not answer in time.

    >>> str(unreachable("KafkaSource", "h:1", 2.0, TimeoutError("x")))  # doctest: +ELLIPSIS
    "KafkaSource: Kafka brokers 'h:1' did not answer within 2 s (x); check the addresses ..."
    """
    detail = exc.args[0].str() if isinstance(exc, KafkaException) and exc.args else str(exc)
    msg = (
        f"{what}: Kafka brokers {brokers!r} did not answer within {timeout:g} s ({detail}); "
        "check the addresses and that the brokers are running and reachable from here"
    )
    return ConnectionError(msg)


def check_topics(
    client: Any, what: str, brokers: str, topics: list[str], timeout: float
) -> dict[str, list[int]]:
    """Partition ids of each topic; a clear error for a missing topic or broker.

    ``client`` is anything with ``list_topics`` (an admin client, producer or
    consumer).
    """
    out: dict[str, list[int]] = {}
    for topic in topics:
        try:
            md = client.list_topics(topic, timeout=timeout)
        except KafkaException as exc:
            raise unreachable(what, brokers, timeout, exc) from exc
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None:
            code = None if tmd is None or tmd.error is None else tmd.error.code()
            if code in (None, ConfluentKafkaError.UNKNOWN_TOPIC_OR_PART):
                msg = (
                    f"{what}: Kafka topic {topic!r} does not exist on brokers {brokers!r}; "
                    "create it (e.g. with kafka-topics.sh --create) or fix the topic name"
                )
                raise LookupError(msg)
            msg = f"{what}: can't read metadata of Kafka topic {topic!r}: {tmd.error.str()}"
            raise RuntimeError(msg)
        out[topic] = sorted(tmd.partitions)
    return out
