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
  state replaces the previous one, so memory stays bounded), written with
  each epoch's snapshot and folded at compaction: see benchmarks/README.md.
- Rescaling: worker ``i`` of a run with ``n`` workers owns its own slot and
  the slots ``worker-{j}`` of workers that no longer exist, ``j % n == i``.
  It finishes those at resume (fence, replay if needed) and snapshots
  ``None`` for them from then on, so the store forgets them.

The commit runs on a thread of its own, so the worker goes on with epoch
``e + 1`` meanwhile. Messages of ``e + 1`` that arrive before the commit
ended (or, on workers other than 0, before they heard of the store's
commit) are held in memory and produced after it, so each transaction
holds exactly one epoch; the snapshot of ``e + 1`` waits for the commit of
``e``, so Kafka is never more than the one epoch behind the store whose
copy the store holds. The resume runs in the background the same way
(fencing, the marker look-up and a replay overlap the sources' start):
messages written meanwhile are held, and the first snapshot waits for it,
so no copy Kafka lacks is replaced in the store before it was replayed.

The copy is kept compact: while the epoch runs, a message's key and value
go to two lists (its topic, partition, timestamp and headers, when not the
defaults, to a dict by index), and the snapshot marshals each list into one
blob (`pack`): no tuple per message, built or stored, and the store gets
two blobs per epoch. Keys or values marshal refuses are pickled as they are.
"""

from __future__ import annotations

import marshal
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from headrace.connectors.kafka._messages import KafkaSinkMessage
from headrace.connectors.kafka._sink import failures_error, not_a_message
from headrace.outputs import StatelessSinkPartition

# A message to produce: (topic, value, key, partition, timestamp, headers).
Row = tuple[str, Any, Any, int, int, Any]
# What a message has besides its key and value, when not the defaults
# (the sink's topic, the partitioner, now, no headers): (topic, partition,
# timestamp, headers).
Extra = tuple[str, int, int, Any]

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


_FORMAT = "kv1"  # the layout of a stored copy (see `pack`)


class _Slot:
    """A transactional producer and the consumer-group handle of its commit marker."""

    def __init__(self, step_id: str, config: dict[str, Any], tid: str, topic: str) -> None:
        self.step_id = step_id
        self.tid = tid
        self.marker_tp = TopicPartition(topic, 0)
        self.failed: list[tuple[Any, Any]] = []
        message_timeout_ms = float(config.get("message.timeout.ms", 300_000))
        self.timeout = message_timeout_ms / 1000.0 + 5.0
        self.producer = Producer(
            {
                "delivery.report.only.error": True,
                # Nothing waits for acknowledgements before the commit: room
                # for an epoch's worth of messages in flight, and fuller
                # batches (the commit sends what lingers at once), which
                # spares the client and the brokers a request per few
                # hundred messages. (librdkafka wants linger.ms below
                # message.timeout.ms.)
                "queue.buffering.max.messages": 500_000,
                "linger.ms": min(50, max(0, int(message_timeout_ms) - 1)),
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

    def produce(self, rows: Iterable[Row]) -> None:
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
                    producer.poll(0.005)

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


def _dumps(obj: Any) -> tuple[str, Any]:
    """Marshalled if marshal takes it, else as is (pickled with the state).

    A list of bytes marshals into one blob at memcpy speed (1.6 ms for 50k
    values of 100 bytes), 3x faster than pickle.

    >>> _loads(_dumps([b"k", None, "text"])), _loads(_dumps([{1}, object]))[1]
    ([b'k', None, 'text'], <class 'object'>)
    """
    try:
        return ("m", marshal.dumps(obj))
    except ValueError:
        return ("p", obj)


def _loads(stored: tuple[str, Any]) -> Any:
    """What `_dumps` stored."""
    return marshal.loads(stored[1]) if stored[0] == "m" else stored[1]


def pack(topic: str, keys: list[Any], values: list[Any], extras: dict[int, Extra]) -> tuple[Any, ...]:
    """An epoch's write-ahead copy as stored: its keys, and its values, each one blob.

    ``extras`` holds, by index, what messages have besides the defaults.

    >>> copy = pack("t", [b"k", None], [b"v", b"w"], {1: ("u", 2, 5, None)})
    >>> unpack(copy)
    [('t', b'v', b'k', -1, 0, None), ('u', b'w', None, 2, 5, None)]
    """
    return (_FORMAT, topic, _dumps(keys), _dumps(values), _dumps(extras) if extras else None)


def unpack(copy: Any) -> list[Row]:
    """The messages of a stored write-ahead copy (see `pack`), in order."""
    if isinstance(copy, bytes):  # an older copy: marshalled rows
        return list(marshal.loads(copy))
    if isinstance(copy, list):  # an older copy: rows
        return copy
    _, topic, stored_keys, stored_values, stored_extras = copy
    keys, values = _loads(stored_keys), _loads(stored_values)
    rows: list[Row] = [(topic, v, k, -1, 0, None) for k, v in zip(keys, values, strict=True)]
    if stored_extras is not None:
        extras: dict[int, Extra] = _loads(stored_extras)
        for i, (t, part, ts, headers) in extras.items():
            rows[i] = (t, values[i], keys[i], part, ts, headers)
    return rows


def finish(slot: _Slot, state: Any) -> int:
    """Fence the slot's older producers; replay its write-ahead copy if Kafka lacks it.

    Returns the slot's last committed sequence number.
    """
    marker = slot.start()
    if state is None:
        return marker
    seq, copy = state
    if marker >= seq:
        return marker
    slot.produce(unpack(copy))
    slot.commit(seq)
    return seq


class ExactlyOnceSinkPartition(StatelessSinkPartition[KafkaSinkMessage[Any, Any]]):
    """A worker's exactly-once output: one Kafka transaction per epoch (see the module)."""

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
        # This epoch's messages, in order: keys, values, and what the
        # messages not all defaults have besides, by index.
        self._keys: list[Any] = []
        self._values: list[Any] = []
        self._extras: dict[int, Extra] = {}
        self._sent = 0  # how many of them are produced (the rest wait for a commit)
        self._pending: int | None = None  # seq snapshotted, its commit not started yet
        # The resume, then each epoch's Kafka commit, runs on a thread of its
        # own while the worker goes on (one at a time); its error, if any.
        self._busy: threading.Thread | None = None
        self._busy_error: BaseException | None = None

    @property
    def producer(self) -> Producer:
        """The underlying transactional producer."""
        return self._slot.producer

    def resume(self, states: dict[str, Any]) -> None:
        """Finish the slots this worker owns now (see the module), then start its own.

        In the background: messages written meanwhile wait in memory, and the
        first ``snapshot`` waits for it (and raises its error).
        """
        self._start(self._resume, states)

    def _resume(self, states: dict[str, Any]) -> None:
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

    def _start(self, job: Any, arg: Any) -> None:
        """Run ``job(arg)`` on a thread of its own (`_joined` once it ended)."""

        def run() -> None:
            try:
                job(arg)
            except BaseException as exc:
                self._busy_error = exc

        self._busy = threading.Thread(target=run, name=f"kafka-eos-{self._own}", daemon=True)
        self._busy.start()

    def write_batch(self, items: list[KafkaSinkMessage[Any, Any]]) -> None:
        if self._busy is not None and not self._busy.is_alive():
            self._joined()
        produce_now = self._pending is None and self._busy is None
        slot = self._slot
        producer = slot.producer
        produce = producer.produce
        if produce_now and not slot.in_txn:
            producer.begin_transaction()
            slot.in_txn = True
        # The common case in one loop: check, produce, keep.
        topic = self._topic
        keep_key = self._keys.append
        keep_value = self._values.append
        extras = self._extras
        n = len(self._values)
        for item in items:
            if item.__class__ is not KafkaSinkMessage and not isinstance(item, KafkaSinkMessage):
                raise not_a_message(self._step_id, item)
            key = item.key
            value = item.value
            to = item.topic
            part = item.partition
            ts = item.timestamp
            headers = item.headers
            if (to is None or to == topic) and part is None and not ts and not headers:
                while produce_now:
                    try:
                        produce(topic, value, key)
                        break
                    except BufferError:
                        producer.poll(0.005)
            else:
                extra = extras[n] = (to or topic, -1 if part is None else part, ts, headers or None)
                while produce_now:
                    try:
                        produce(
                            extra[0],
                            value,
                            key,
                            partition=extra[1],
                            timestamp=extra[2],
                            headers=extra[3],  # type: ignore[arg-type]
                        )
                        break
                    except BufferError:
                        producer.poll(0.005)
            keep_key(key)
            keep_value(value)
            n += 1
        if produce_now:
            self._sent = n

    def _rows(self, start: int) -> Iterator[Row]:
        """This epoch's messages from index ``start`` on."""
        topic, keys, values, extras = self._topic, self._keys, self._values, self._extras
        for i in range(start, len(values)):
            extra = extras.get(i)
            if extra is None:
                yield (topic, values[i], keys[i], -1, 0, None)
            else:
                yield (extra[0], values[i], keys[i], extra[1], extra[2], extra[3])

    def snapshot(self) -> tuple[int, Any] | None:
        if self._busy is not None:
            self._busy.join()
            self._joined()
        keys, values, extras = self._keys, self._values, self._extras
        self._keys, self._values, self._extras, self._sent = [], [], {}, 0
        if not values:
            return None
        self._seq += 1
        self._pending = self._seq
        return (self._seq, pack(self._topic, keys, values, extras))

    def epoch_committed(self, epoch: int) -> None:
        """The store committed the epoch: commit its transaction, in the background.

        Messages written meanwhile wait in memory; the next ``snapshot``
        waits for the commit, so the store never gets ahead of Kafka by more
        than the epoch whose copy it holds.
        """
        seq, self._pending = self._pending, None
        if seq is None:
            return
        self._start(self._slot.commit, seq)

    def _joined(self) -> None:
        """The background resume or commit ended: raise its error, or send what waited."""
        self._busy = None
        exc, self._busy_error = self._busy_error, None
        if exc is not None:
            raise exc
        if self._sent < len(self._values):
            self._slot.produce(self._rows(self._sent))
            self._sent = len(self._values)

    def close(self) -> None:
        if self._busy is not None:
            self._busy.join()
            self._busy = None
            exc, self._busy_error = self._busy_error, None
            if exc is not None:
                self._slot.close(abort=True)
                raise exc
        self._slot.close(abort=True)
        self._slot.producer.flush(0)
