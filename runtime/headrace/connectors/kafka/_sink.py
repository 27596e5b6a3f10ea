"""The Kafka sink: one producer per worker.

A batch is acknowledged by the brokers before `write_batch` returns, so
everything written in an epoch is on the brokers before that epoch commits:
after a crash, a resumed dataflow re-sends what came after the last commit
(at-least-once), and never loses a message.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import Producer

from headrace.connectors.kafka._messages import KafkaSinkMessage, KafkaSourceMessage
from headrace.outputs import StatelessSinkPartition


class KafkaSinkPartition(StatelessSinkPartition[KafkaSinkMessage[Any, Any]]):
    """Produces a worker's messages; waits for their acknowledgements per batch."""

    def __init__(self, step_id: str, config: dict[str, Any], topic: str | None) -> None:
        self._step_id = step_id
        self._topic = topic
        self._failed: list[tuple[Any, Any]] = []
        self._flush_timeout = float(config.get("message.timeout.ms", 300_000)) / 1000.0 + 5.0
        # Successes are not reported (a Python call per message is costly);
        # a failure is, and fails the batch.
        self._producer = Producer(
            {"delivery.report.only.error": True, **config, "on_delivery": self.on_delivery}
        )

    @property
    def producer(self) -> Producer:
        """The underlying producer."""
        return self._producer

    def on_delivery(self, err: Any, msg: Any) -> None:
        """Record a message the brokers did not take (only failures are reported)."""
        if err is not None:
            self._failed.append((err, msg))

    def write_batch(self, items: list[KafkaSinkMessage[Any, Any]]) -> None:
        producer = self._producer
        produce = producer.produce
        default_topic = self._topic
        for item in items:
            cls = item.__class__
            if cls is not KafkaSinkMessage and not isinstance(item, KafkaSinkMessage):
                raise self._not_a_message(item)
            topic = item.topic or default_topic
            if topic is None:
                msg = (
                    f"step {self._step_id!r}: KafkaSink was built with topic=None, and this "
                    f"message names no topic either: {item!r}; set KafkaSinkMessage.topic"
                )
                raise ValueError(msg)
            part = item.partition
            while True:
                try:
                    produce(
                        topic,
                        item.value,
                        item.key,
                        partition=-1 if part is None else part,
                        timestamp=item.timestamp,
                        headers=item.headers or None,  # type: ignore[arg-type]
                    )
                    break
                except BufferError:
                    # The local queue is full: let deliveries drain it.
                    producer.poll(0.05)
        remaining = producer.flush(self._flush_timeout)
        if self._failed or remaining:
            self._raise_failures(remaining)

    def _not_a_message(self, item: Any) -> TypeError:
        return not_a_message(self._step_id, item)

    def _raise_failures(self, remaining: int) -> None:
        failed, self._failed = self._failed, []
        raise failures_error(self._step_id, failed, remaining, self._flush_timeout)

    def close(self) -> None:
        self._producer.flush(self._flush_timeout)


def not_a_message(step_id: str, item: Any) -> TypeError:
    """The error for an item that is not a `KafkaSinkMessage`.

    >>> print(not_a_message("s", 3))
    step 's': KafkaSink takes KafkaSinkMessage items; got int 3; wrap it: KafkaSinkMessage(key, value)
    """
    hint = (
        "call .to_sink() on it, or use kafka operators.output, which converts"
        if isinstance(item, KafkaSourceMessage)
        else "wrap it: KafkaSinkMessage(key, value)"
    )
    msg = (
        f"step {step_id!r}: KafkaSink takes KafkaSinkMessage items; got "
        f"{type(item).__name__} {item!r}; {hint}"
    )
    return TypeError(msg)


def failures_error(
    step_id: str, failed: list[tuple[Any, Any]], remaining: int, timeout: float
) -> RuntimeError:
    """The error for messages the brokers refused (``failed``) or never acknowledged.

    >>> print(failures_error("s", [], 2, 65.0))
    step 's': 2 message(s) were still not acknowledged after 65 s; are the brokers up?
    """
    if failed:
        err, m = failed[0]
        code = err.code() if isinstance(err, ConfluentKafkaError) else None
        msg = (
            f"step {step_id!r}: Kafka did not accept {len(failed)} message(s); the "
            f"first, to topic {m.topic()!r} partition {m.partition()}, failed with: "
            f"{err.str() if code is not None else err}"
        )
    else:
        msg = (
            f"step {step_id!r}: {remaining} message(s) were still not acknowledged "
            f"after {timeout:g} s; are the brokers up?"
        )
    return RuntimeError(msg)
