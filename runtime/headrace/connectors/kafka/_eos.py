"""Exactly-once Kafka output: one transaction per worker and epoch, committed after the store.

`KafkaSink(..., exactly_once=True)` builds an `ExactlyOnceSinkPartition`
per worker. It follows the engine's epoch-sink protocol
(`headrace._engine._wiring.EpochSink`): ``snapshot()`` at the end of each
epoch, ``epoch_committed(e)`` once the recovery store committed epoch
``e``, and ``resume(states)`` when a run starts.

Why this design. librdkafka can neither resume nor commit a transaction
that a crashed producer left open: ``init_transactions`` with the same
``transactional.id`` aborts it. Two commits can't be made atomic, so
whichever of the store and Kafka commits first, a crash between the two
must be repaired from the other:

- Each worker slot (``worker-{index}``) has a stable ``transactional.id``,
  ``headrace-eos.{step_id}.worker-{index}`` (the prefix can be set with
  ``add_config={"transactional.id": ...}``). The epoch's messages are
  produced inside an open transaction while the epoch runs, so its commit
  is cheap, and are also kept as the slot's snapshot state: a write-ahead
  copy, part of the epoch in the store, as ``(seq, messages)`` where
  ``seq`` numbers the slot's non-empty epochs.
- Store first: once the store committed epoch ``e`` (the engine calls
  ``epoch_committed(e)``, on every worker), the slot commits its
  transaction and, atomically inside it, records ``seq`` as the committed
  offset of a consumer group of its own (named like the transactional id)
  on partition 0 of the sink's topic (``send_offsets_to_transaction``).
- On resume from store epoch ``s``, the slot's state is the write-ahead
  copy of the last epoch up to ``s`` that wrote anything, ``(seq, msgs)``.
  ``init_transactions`` fences any producer of an older execution (a
  zombie can no longer commit) and aborts its open transaction; then the
  group's committed offset ``k`` is read. ``k < seq`` means the crash came
  between the two commits: ``msgs`` are produced again, in a transaction
  that commits ``seq``, before any new output. ``k >= seq``: they are in
  Kafka already, and nothing is replayed. An epoch whose store commit was
  lost is aborted in Kafka and re-run, as every step is.
- Nothing is ever committed in Kafka that the store has not committed, and
  everything the store committed reaches Kafka once: a ``read_committed``
  consumer sees each message exactly once.
- The copy costs one epoch's output in the store per worker (each epoch's
  state replaces the previous one, so memory stays bounded), and pickling
  it: see benchmarks/README.md.
- Rescaling: worker ``i`` of a run with ``n`` workers owns its own slot and
  the slots ``worker-{j}`` of workers that no longer exist, ``j % n == i``.
  It finishes those at resume (fence, replay if needed) and snapshots
  ``None`` for them from then on, so the store forgets them.

Between the snapshot of epoch ``e`` and the commit of ``e``, a worker may
already get messages of epoch ``e + 1`` (only workers other than 0, which
learn of the commit by message): those are held in memory and produced
after the commit, so each transaction holds exactly one epoch.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from headrace.connectors.kafka._messages import KafkaSinkMessage
from headrace.connectors.kafka._sink import failures_error, not_a_message
from headrace.outputs import StatelessSinkPartition

# A message as kept in the write-ahead copy (cheap to pickle):
# (topic, value, key, partition, timestamp, headers).
Row = tuple[str, Any, Any, int, int, Any]

# The settings the consumer that reads the commit marker shares with the
# producer: connection and security ones (librdkafka warns about others).
_SHARED_PREFIXES = (
    "bootstrap.servers",
    "logger",
    "client.",
    "socket.",
    "security.",
    "ssl",
    "sasl.",
    "broker.",
    "debug",
    "metadata.",
    "reconnect.",
)


def transactional_id(prefix: str, slot: str) -> str:
    """The transactional id (and marker group) of a worker slot.

    >>> transactional_id("headrace-eos.flow.out", "worker-3")
    'headrace-eos.flow.out.worker-3'
    """
    return f"{prefix}.{slot}"


def to_rows(step_id: str, default_topic: str, items: list[Any]) -> list[Row]:
    """Check and flatten messages into write-ahead rows.

    >>> to_rows("s", "t", [KafkaSinkMessage(b"k", b"v")])
    [('t', b'v', b'k', -1, 0, None)]
    """
    rows: list[Row] = []
    append = rows.append
    for item in items:
        if item.__class__ is not KafkaSinkMessage and not isinstance(item, KafkaSinkMessage):
            raise not_a_message(step_id, item)
        part = item.partition
        append(
            (
                item.topic or default_topic,
                item.value,
                item.key,
                -1 if part is None else part,
                item.timestamp,
                item.headers or None,
            )
        )
    return rows


class _Slot:
    """A transactional producer and the consumer-group handle of its commit marker."""

    def __init__(self, step_id: str, config: dict[str, Any], tid: str, topic: str) -> None:
        self.step_id = step_id
        self.tid = tid
        self.marker_tp = TopicPartition(topic, 0)
        self.failed: list[tuple[Any, Any]] = []
        self.timeout = float(config.get("message.timeout.ms", 300_000)) / 1000.0 + 5.0
        self.producer = Producer(
            {
                "delivery.report.only.error": True,
                **config,
                "transactional.id": tid,
                "on_delivery": self.on_delivery,
            }
        )
        consumer_config = {k: v for k, v in config.items() if k.startswith(_SHARED_PREFIXES)}
        consumer_config.update(
            {"group.id": tid, "enable.auto.commit": False, "isolation.level": "read_committed"}
        )
        self.consumer = Consumer(consumer_config)
        self.in_txn = False

    def on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed.append((err, msg))

    def start(self) -> int:
        """Fence older producers of this id (aborting their open transaction); the marker."""
        try:
            self.producer.init_transactions(self.timeout)
            (tp,) = self.consumer.committed([self.marker_tp], self.timeout)
        except KafkaException as exc:
            msg = (
                f"step {self.step_id!r}: can't start the Kafka transactions of "
                f"{self.tid!r}: {exc.args[0].str() if exc.args else exc}"
            )
            raise RuntimeError(msg) from exc
        return max(0, tp.offset)

    def produce(self, rows: list[Row]) -> None:
        producer = self.producer
        produce = producer.produce
        if not self.in_txn:
            producer.begin_transaction()
            self.in_txn = True
        for topic, value, key, part, ts, headers in rows:
            while True:
                try:
                    produce(topic, value, key, partition=part, timestamp=ts, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.05)

    def commit(self, seq: int) -> None:
        """Commit the open transaction, recording ``seq`` as committed inside it."""
        if not self.in_txn:
            self.producer.begin_transaction()
        producer = self.producer
        try:
            producer.send_offsets_to_transaction(
                [TopicPartition(self.marker_tp.topic, 0, seq)],
                self.consumer.consumer_group_metadata(),
                self.timeout,
            )
            producer.commit_transaction(self.timeout)
        except KafkaException as exc:
            if self.failed:
                raise failures_error(self.step_id, self.failed, 0, self.timeout) from exc
            msg = (
                f"step {self.step_id!r}: Kafka refused to commit the transaction of "
                f"{self.tid!r}: {exc.args[0].str() if exc.args else exc}"
            )
            raise RuntimeError(msg) from exc
        self.in_txn = False
        if self.failed:
            raise failures_error(self.step_id, self.failed, 0, self.timeout)

    def close(self, abort: bool) -> None:
        if self.in_txn and abort:
            try:
                self.producer.abort_transaction(self.timeout)
            except KafkaException:
                pass  # the next run's init_transactions aborts it
            self.in_txn = False
        self.consumer.close()


def finish(slot: _Slot, state: Any) -> int:
    """Fence the slot's older producers; replay its write-ahead copy if Kafka lacks it.

    Returns the slot's last committed sequence number.
    """
    marker = slot.start()
    if state is None:
        return marker
    seq, rows = state
    if marker >= seq:
        return marker
    slot.produce(rows)
    slot.commit(seq)
    return seq


class ExactlyOnceSinkPartition(StatelessSinkPartition[KafkaSinkMessage[Any, Any]]):
    """A worker's exactly-once output: one Kafka transaction per epoch (see the module)."""

    commits_with_epochs = True

    def __init__(
        self, step_id: str, config: dict[str, Any], topic: str, prefix: str, worker_index: int
    ) -> None:
        self._step_id = step_id
        self._config = config
        self._topic = topic
        self._prefix = prefix
        self._own = f"worker-{worker_index}"
        self._slot = _Slot(step_id, config, transactional_id(prefix, self._own), topic)
        self._seq = 0
        self._rows: list[Row] = []  # this epoch's messages
        self._pending: int | None = None  # seq snapshotted, its commit not heard of yet

    @property
    def producer(self) -> Producer:
        """The underlying transactional producer."""
        return self._slot.producer

    def resume(self, states: dict[str, Any]) -> None:
        """Finish the slots this worker owns now (see the module), then start its own."""
        for name in sorted(states):
            if name == self._own:
                continue
            slot = _Slot(self._step_id, self._config, transactional_id(self._prefix, name), self._topic)
            try:
                finish(slot, states[name])
            finally:
                slot.close(True)
                slot.producer.flush(0)
        self._seq = finish(self._slot, states.get(self._own))

    def write_batch(self, items: list[KafkaSinkMessage[Any, Any]]) -> None:
        rows = to_rows(self._step_id, self._topic, items)
        self._rows.extend(rows)
        if self._pending is None:
            self._slot.produce(rows)

    def snapshot(self) -> tuple[int, list[Row]] | None:
        rows, self._rows = self._rows, []
        if not rows:
            return None
        self._seq += 1
        self._pending = self._seq
        return (self._seq, rows)

    def epoch_committed(self, epoch: int) -> None:
        """The store committed the epoch: commit its transaction; send what waited."""
        if self._pending is None:
            return
        self._slot.commit(self._pending)
        self._pending = None
        if self._rows:
            self._slot.produce(self._rows)

    def close(self) -> None:
        self._slot.close(abort=True)
        self._slot.producer.flush(0)
