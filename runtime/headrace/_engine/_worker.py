"""One worker: polls its source partitions and pushes batches through the plan.

Execution model (see docs/architecture.md):

- Push-based and batch-at-a-time: a source batch is pushed synchronously
  through fused stateless chains until it reaches a sink or an *exchange
  edge* (the input of a stateful step, `redistribute`, or a partitioned
  sink), where it is routed to the worker owning each key.
- Epochs: a worker reads sources for one epoch at a time. At the epoch's end
  it sends a barrier on every exchange edge once that edge's upstream is
  done, and the epoch completes when every edge has barriers from every
  worker (aligned barriers). Messages tagged with a later epoch are held
  until then, so a snapshot at the barrier is consistent.
- EOF travels as a flag on barriers: a stateful step runs ``on_eof`` once
  every upstream worker flagged its input as finished.

Size: ~1900 lines, over the project's ~800, because it still holds three
roles (wiring the push graph, the exchange, the epoch and snapshot loop);
issue 21 splits them into modules of their own in one move.
"""

from __future__ import annotations

import heapq
import logging
import pickle
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from headrace._engine._fuse import EpochRef, Stage, compile_chain, compile_grouping_chain
from headrace._engine._hash import DEFAULT_KEY_GROUPS, group_owner, key_group, part_owner
from headrace._engine._metrics import M, StepMetrics, WorkerMetrics
from headrace._engine._plan import CoreStep, Plan, quoted
from headrace._engine._sched import Ready
from headrace._engine._store import PARTS, Entry, Store
from headrace.errors import BytewaxRuntimeError
from headrace.inputs import (
    AbortExecution,
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from headrace.operators._core import FUSABLE_KINDS
from headrace.outputs import DynamicSink, FixedPartitionedSink

log = logging.getLogger("headrace.worker")

# A batch is a list of items, or {key: [values]} from a chain that grouped.
Push = Callable[[Any], None]
UTC = UTC

# Message kinds between workers.
DATA = 0
BARRIER = 1
STOP = 2
ACK = 3

# Barrier flags.
F_EOF = 1
F_STOP = 2

# Busy time (wall time minus idle and backpressure waits) is added to its
# counter at most this often (seconds), to keep the bookkeeping off the hot loop.
_BUSY_FLUSH = 0.05

# Items a worker may have sent to one peer that the peer has not yet
# processed; past it the worker stops polling its sources (backpressure)
# but keeps draining its inbox, so it can never deadlock mid-batch.
INFLIGHT_LIMIT = 200_000

# Items bound for other workers are buffered per (edge, worker) and sent as
# one message when this many are waiting, when the oldest waited this long
# (seconds), before the worker blocks, and before any barrier: fewer, larger
# messages (and, with a combiner, fewer partial results) at a latency cost
# bounded by the interval.
EXCHANGE_FLUSH_ITEMS = 65_536
EXCHANGE_FLUSH_SECONDS = 0.02

_EMPTY_COOLDOWN = timedelta(milliseconds=1)
_MAX_TIMER_ROUNDS = 1000
_MAX_SLEEP = 0.05


class Abort(Exception):
    """Raised inside a worker when the run must stop at once."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _count(payload: Any) -> int:
    """Items in a batch: a list of items, or ``{key: [values]}`` grouped by a fused chain."""
    if payload.__class__ is dict:
        return sum(map(len, payload.values()))
    return len(payload)


def _engine_tracer() -> Any:
    """An OpenTelemetry tracer if the app configured a real provider, else None.

    Without one, no span code runs at all, so tracing costs nothing unless on.
    """
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
        return None
    return provider.get_tracer("headrace")


def _traced(tracer: Any, name: str, push: Push) -> Push:
    def traced(batch: list[Any]) -> None:
        with tracer.start_as_current_span(name) as span:
            span.set_attribute("headrace.items", len(batch))
            push(batch)

    return traced


@dataclass
class RunConfig:
    """Settings shared by all workers of a run."""

    epoch_interval: timedelta = timedelta(seconds=10)
    key_groups: int = DEFAULT_KEY_GROUPS
    fuse: bool = True
    # read when a config is made, so tests can change the module's values
    inflight_limit: int = field(default_factory=lambda: INFLIGHT_LIMIT)
    exchange_flush_items: int = field(default_factory=lambda: EXCHANGE_FLUSH_ITEMS)
    exchange_flush_seconds: float = field(default_factory=lambda: EXCHANGE_FLUSH_SECONDS)
    store: Store | None = None
    resume_epoch: int = 0  # the committed epoch to resume from (0: fresh start)
    compact_every: int = 10  # epochs between compactions (worker 0)
    keep_epochs: int = 0  # committed epochs of deltas kept before compaction
    metrics: bool = True


class Cluster:
    """What the workers of one run share: inboxes, abort flag, first error."""

    def __init__(self, worker_count: int, local_workers: range) -> None:
        self.worker_count = worker_count
        self.local_workers = local_workers
        self.inboxes: dict[int, queue.SimpleQueue[tuple[Any, ...]]] = {
            w: queue.SimpleQueue() for w in local_workers
        }
        self.abort = threading.Event()
        self.stop_requested = threading.Event()
        self.aborted_by_source = False
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.remote_send: Callable[[int, tuple[Any, ...]], None] | None = None

    def send(self, dst: int, msg: tuple[Any, ...]) -> None:
        """Deliver a message to worker ``dst`` (local queue or network)."""
        inbox = self.inboxes.get(dst)
        if inbox is not None:
            inbox.put(msg)
        elif self.remote_send is not None:
            self.remote_send(dst, msg)
        else:  # pragma: no cover - a plan bug
            msg_ = f"no route to worker {dst}"
            raise AssertionError(msg_)

    def fail(self, exc: BaseException) -> None:
        """Record the first error and wake every local worker to stop."""
        with self._lock:
            if self.error is None and not isinstance(exc, Abort):
                self.error = exc
        self.abort.set()
        for inbox in self.inboxes.values():
            inbox.put((STOP,))


class _SourceRun:
    __slots__ = (
        "awake",
        "done",
        "final_state",
        "lag",
        "lag_gauge",
        "m",
        "part",
        "part_name",
        "push",
        "stateful",
        "step_id",
    )

    def __init__(
        self,
        step_id: str,
        part_name: str,
        part: StatefulSourcePartition[Any, Any] | StatelessSourcePartition[Any],
        push: Push,
        stateful: bool,
    ) -> None:
        self.step_id = step_id
        self.part_name = part_name
        self.part = part
        self.push = push
        self.stateful = stateful
        self.awake: datetime | None = None
        self.done = False
        self.final_state: Any = None
        self.m: StepMetrics | None = None
        lag = getattr(part, "lag", None)
        self.lag: Callable[[], Any] | None = lag if callable(lag) else None
        self.lag_gauge: Any = None


_TIMER_CLASSES: dict[type, bool] = {}
_EOF_CLASSES: dict[type, bool] = {}


def _has_own_eof(logic: Any) -> bool:
    """Whether a logic's class overrides `on_eof` (else EOF changes nothing)."""
    cls = type(logic)
    known = _EOF_CLASSES.get(cls)
    if known is None:
        from headrace.operators._core import StatefulBatchLogic

        known = _EOF_CLASSES[cls] = cls.on_eof is not StatefulBatchLogic.on_eof
    return known


def _may_set_timers(logic: Any) -> bool:
    """Whether a logic's class overrides `notify_at` (else it never sets timers)."""
    cls = type(logic)
    known = _TIMER_CLASSES.get(cls)
    if known is None:
        from headrace.operators._core import StatefulBatchLogic

        known = _TIMER_CLASSES[cls] = cls.notify_at is not StatefulBatchLogic.notify_at
    return known


class _StatefulRun:
    """A `stateful_batch` step on one worker: per-key logic, timers, EOF."""

    def __init__(self, step: CoreStep, worker: Worker, trusted: bool = False) -> None:
        # `trusted`: the input stream is proven to carry (str, value) tuples.
        self.trusted = trusted
        self.step = step
        self.step_id = step.step_id
        self.shown = step.shown  # how errors name the step (Bytewax's id)
        self.builder = step.conf["builder"]
        self.logics: dict[str, Any] = {}
        self.timers: dict[str, datetime] = {}
        self.heap: list[tuple[datetime, int, str]] = []
        self._seq = 0
        self.push: Push = _drop
        self.worker = worker
        self.dirty: set[str] = set()
        self.track = worker.config.store is not None
        # Bytewax handles the keys of an activation in sorted order; a
        # builder tagged `_unordered` (a reduction whose function can't
        # print: `_stateful._unordered`) emits nothing per batch, so its
        # order can't be seen and the sort is skipped.
        self.ordered = not getattr(self.builder, "_unordered", False)
        self.activated = False  # handled items since the worker loop last fired timers
        wm = worker.metrics
        self.m = None if wm is None else wm.step(self.step_id, "stateful_batch_on_batch_duration_seconds")
        self.m_notify = (
            None if wm is None else wm.bind("stateful_batch_on_notify_duration_seconds", self.step_id, wm.wi)
        )
        self.m_eof = (
            None if wm is None else wm.bind("stateful_batch_on_eof_duration_seconds", self.step_id, wm.wi)
        )

    def restore(self, states: dict[str, bytes]) -> None:
        """Rebuild the logic of every key from its snapshot."""
        for key, blob in states.items():
            try:
                logic = self.builder(pickle.loads(blob))
            except Exception as exc:
                raise BytewaxRuntimeError(
                    f"error rebuilding state of key {key!r} in step {self.step_id!r} from its "
                    f"snapshot: {type(exc).__name__}: {exc}"
                ) from exc
            self.logics[key] = logic
            self._schedule(key, logic)

    def snapshot_entries(self, groups: int) -> list[Entry]:
        """Pickled state of the keys changed this epoch (tombstones for dropped ones)."""
        out: list[Entry] = []
        logics = self.logics
        for key in self.dirty:
            logic = logics.get(key)
            blob = b"" if logic is None else _pickle_state(self.shown, key, logic)
            out.append((self.step_id, key_group(key, groups), key, blob))
        self.dirty.clear()
        return out

    def _schedule(self, key: str, logic: Any) -> None:
        try:
            at = logic.notify_at()
        except Exception as exc:
            raise BytewaxRuntimeError(_calling("notify_at", self.shown, key)) from exc
        if at is None:
            if key in self.timers:
                del self.timers[key]
            return
        if not isinstance(at, datetime) or at.tzinfo is None:
            why = f"must return a timezone-aware datetime or None; got {at!r}"
            if not isinstance(at, datetime):
                # The words of Bytewax's innermost error, then Headrace's.
                why = f"{type(at).__name__!r} object cannot be converted to 'PyDateTime': {why}"
            raise BytewaxRuntimeError(f"{_calling('notify_at', self.shown, key)}: {why}") from TypeError(
                f"`notify_at` {why}"
            )
        if self.timers.get(key) != at:
            self.timers[key] = at
            self._seq += 1
            heapq.heappush(self.heap, (at, self._seq, key))

    def _apply(self, key: str, logic: Any, ret: Any, what: str, later: list[str] | None = None) -> list[Any]:
        try:
            outs, discard = ret
        except (TypeError, ValueError) as exc:
            why = f"`{what}` must return a 2-tuple `(outputs, discard)`; got {ret!r}"
            raise BytewaxRuntimeError(f"{_calling(what, self.shown, key)}: {why}") from TypeError(
                f"{exc}: {why}"
            )
        try:
            out = [(key, w) for w in outs]
        except Exception as exc:
            if isinstance(exc, TypeError) and not hasattr(outs, "__iter__"):
                why = (
                    f"`{what}` must return `(outputs, discard)` with an iterable of outputs; "
                    f"got {type(outs).__name__}"
                )
                raise BytewaxRuntimeError(f"{_calling(what, self.shown, key)}: {why}") from TypeError(why)
            raise BytewaxRuntimeError(
                f"{_calling(what, self.shown, key)} (while iterating its outputs): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if self.track:
            self.dirty.add(key)
        if discard:
            self.logics.pop(key, None)
            self.timers.pop(key, None)
        elif later is not None:
            later.append(key)
        else:
            self._schedule(key, logic)
        return out

    def on_batch(self, batch: list[Any]) -> None:
        t0 = time.perf_counter()
        if not self.trusted:
            self._process(self._group(batch), len(batch), t0)
            return
        groups: dict[str, list[Any]] = {}
        for k, v in batch:
            vs = groups.get(k)
            if vs is None:
                groups[k] = [v]
            else:
                vs.append(v)
        self._process(groups, len(batch), t0)

    def _reject(self, batch: list[Any]) -> None:
        _reject_unkeyed(self.step, batch)

    def deliver(self, payload: Any) -> None:
        """Items (a list) or values already grouped by key (a dict)."""
        if payload.__class__ is dict:
            self._process(payload, _count(payload) if self.m is not None else 0, time.perf_counter())
        else:
            self.on_batch(payload)

    def deliver_many(self, payloads: list[Any]) -> None:
        """Every batch of one activation, grouped by key together (as Bytewax does)."""
        if len(payloads) == 1:
            self.deliver(payloads[0])
            return
        t0 = time.perf_counter()
        groups: dict[str, list[Any]] = {}
        n = 0
        for payload in payloads:
            if payload.__class__ is not dict:
                payload = self._group(payload)
            for k, vs in payload.items():
                n += len(vs)
                old = groups.get(k)
                if old is None:
                    groups[k] = list(vs)
                else:
                    old.extend(vs)
        self._process(groups, n, t0)

    def _group(self, batch: list[Any]) -> dict[str, list[Any]]:
        # One C-level pass checks every item is a tuple; unpacking then
        # checks the length, and each new key is checked to be a str.
        groups: dict[str, list[Any]] = {}
        if list(map(type, batch)).count(tuple) != len(batch):
            self._reject(batch)
        try:
            for k, v in batch:
                vs = groups.get(k)
                if vs is None:
                    if k.__class__ is not str:
                        raise _not_keyed(self.step, (k, v))
                    groups[k] = [v]
                else:
                    vs.append(v)
        except ValueError:
            self._reject(batch)
        return groups

    def _process(self, groups: dict[str, list[Any]], n_in: int, t0: float) -> None:
        out: list[Any] = []
        extend = out.extend
        logics = self.logics
        builder = self.builder
        dirty = self.dirty if self.track else None
        # Keys whose `notify_at` is asked after this activation's due timers
        # fired: as in Bytewax, a timer set by an item fires at the next
        # activation, after that activation's items.
        later: list[str] = []
        pairs: Any = groups.items()
        if self.ordered and len(groups) > 1:
            keys = sorted(groups)
            pairs = zip(keys, map(groups.__getitem__, keys), strict=True)
        for k, vs in pairs:
            logic = logics.get(k)
            if logic is None:
                try:
                    logic = builder(None)
                except Exception as exc:
                    raise BytewaxRuntimeError(
                        f"error calling `builder` in step {self.shown} for key {quoted(k)}"
                    ) from exc
                logics[k] = logic
            try:
                ret = logic.on_batch(vs)
            except Exception as exc:
                raise BytewaxRuntimeError(
                    f"{_calling('on_batch', self.shown, k)}: {type(exc).__name__}: {exc}"
                ) from exc
            # The common path of `_apply`, inlined: this runs once per key per batch.
            if ret.__class__ is tuple and len(ret) == 2 and ret[0].__class__ in (list, tuple):
                outs, discard = ret
                if outs:
                    extend([(k, w) for w in outs])
                if dirty is not None:
                    dirty.add(k)
                if discard:
                    del logics[k]
                    self.timers.pop(k, None)
                elif _may_set_timers(logic):
                    later.append(k)
            else:
                extend(self._apply(k, logic, ret, "on_batch", later))
        self.activated = True
        if self.heap:
            self._notify_due(_utcnow(), out, 1)
        for k in later:
            logic = logics.get(k)
            if logic is not None:
                self._schedule(k, logic)
        m = self.m
        if m is not None:
            dt = time.perf_counter() - t0
            m.inp.inc(n_in)
            m.out.inc(len(out))
            m.dur.observe(dt)
            m.busy.inc(dt)
        if out:
            self.push(out)

    def next_timer(self) -> datetime | None:
        heap = self.heap
        while heap:
            at, _, key = heap[0]
            if self.timers.get(key) == at:
                return at
            heapq.heappop(heap)
        return None

    def fire_timers(self, now: datetime) -> None:
        """An activation without items: notify the keys whose time has come."""
        heap = self.heap
        if not heap or heap[0][0] > now:
            return
        out: list[Any] = []
        # A logic still due after on_notify is notified again (as Bytewax does),
        # in rounds; the bound keeps one that is always due from hanging the
        # worker: the rest waits for the next pass of the worker loop.
        self._notify_due(now, out, _MAX_TIMER_ROUNDS)
        if out:
            self.push(out)

    def _notify_due(self, now: datetime, out: list[Any], rounds: int) -> None:
        """Call `on_notify` of each key due at ``now``, in key order; outputs go to ``out``."""
        heap = self.heap
        if not heap or heap[0][0] > now:
            return
        t0 = time.perf_counter()
        for _round in range(rounds):
            if not heap or heap[0][0] > now:
                break
            due: list[str] = []
            while heap and heap[0][0] <= now:
                at, _, key = heapq.heappop(heap)
                if self.timers.get(key) == at:
                    del self.timers[key]
                    due.append(key)
            due.sort()
            for key in due:
                logic = self.logics.get(key)
                if logic is None:
                    continue
                try:
                    ret = logic.on_notify()
                except Exception as exc:
                    raise BytewaxRuntimeError(
                        f"{_calling('on_notify', self.shown, key)}: {type(exc).__name__}: {exc}"
                    ) from exc
                out.extend(self._apply(key, logic, ret, "on_notify"))
        if self.m_notify is not None:
            self.m_notify.observe(time.perf_counter() - t0)

    def on_eof(self) -> None:
        """End of input: due timers fire, then every key's `on_eof`, in key order."""
        out: list[Any] = []
        self._notify_due(_utcnow(), out, 1)
        t0 = time.perf_counter()
        logics = self.logics
        for key in sorted(logics):
            logic = logics[key]
            if not _has_own_eof(logic):
                # The default on_eof emits nothing and keeps the state as it
                # is: don't re-snapshot every such key in the final epoch.
                continue
            try:
                ret = logic.on_eof()
            except Exception as exc:
                raise BytewaxRuntimeError(
                    f"{_calling('on_eof', self.shown, key)}: {type(exc).__name__}: {exc}"
                ) from exc
            out.extend(self._apply(key, logic, ret, "on_eof"))
        if self.m_eof is not None:
            self.m_eof.observe(time.perf_counter() - t0)
        if out:
            self.push(out)


def _combine_into(shown: str, combiner: Any, groups: dict[str, list[Any]]) -> int:
    """Hand each key's values bound for another worker to the step's combiner; count them.

    The combiner (``add(key, values)``, ``take()``) comes from the step
    builder's ``precombiner`` (`_combinable`, `_WindowSpec.precombiner`);
    it folds the values into partial results at once, while they are
    still in the CPU's caches, and the flush sends what ``take`` returns.
    """
    n = 0
    add = combiner.add
    for k, vs in groups.items():
        n += len(vs)
        try:
            add(k, vs)
        except Exception as exc:
            raise BytewaxRuntimeError(
                f"{_calling('on_batch', shown, k)}: {type(exc).__name__}: {exc}"
            ) from exc
    return n


def _calling(what: str, shown: str, key: str) -> str:
    """Bytewax's words for a failed call of a `StatefulBatchLogic` method of a key.

    ``shown`` is the step's quoted display id. Bytewax says "in step" only
    for ``on_batch``.

    >>> print(_calling("on_batch", '"f.s"', "a"))
    error calling `StatefulBatchLogic.on_batch` in step "f.s" for key "a"
    >>> print(_calling("on_eof", '"f.s"', "a"))
    error calling `StatefulBatchLogic.on_eof` in "f.s" for key "a"
    """
    where = "in step" if what == "on_batch" else "in"
    return f"error calling `StatefulBatchLogic.{what}` {where} {shown} for key {quoted(key)}"


def _pickle_state(shown: str, key: str, logic: Any) -> bytes:
    try:
        state = logic.snapshot()
    except Exception as exc:
        raise BytewaxRuntimeError(f"{_calling('snapshot', shown, key)}: {type(exc).__name__}: {exc}") from exc
    try:
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        msg = (
            f"state of key {quoted(key)} in step {shown} is a {type(state).__name__}, which "
            f"can't be pickled for snapshots ({type(exc).__name__}: {exc}); keep plain "
            "data (dicts, lists, numbers, dataclasses) in state"
        )
        raise BytewaxRuntimeError(msg) from exc


def _pickle_part(step_id: str, name: str, state: Any) -> bytes:
    try:
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        msg = (
            f"snapshot of partition {name!r} in step {step_id!r} is a {type(state).__name__}, "
            f"which can't be pickled ({type(exc).__name__}: {exc})"
        )
        raise BytewaxRuntimeError(msg) from exc


def _reject_unkeyed(step: CoreStep, batch: list[Any]) -> None:
    """Raise the precise error for the first item that is not a (str, value) pair."""
    for item in batch:
        if item.__class__ is not tuple or len(item) != 2 or item[0].__class__ is not str:
            raise _not_keyed(step, item)
    raise AssertionError("no bad item found")  # pragma: no cover


_KEYED_HINT = "use `key_on` or `map` to make (str, value) pairs"


def _not_keyed(step: CoreStep, item: Any) -> BytewaxRuntimeError:
    """The error for an item of a keyed step's input that is not a ``(str, value)`` pair.

    Bytewax's words (and step path) first, then the item and a hint. A
    reduction (`reduce_final` and the operators built on it) fails as
    Bytewax's does, in its ``pre_reduce`` step, when the item doesn't unpack
    into two values.

    >>> s = CoreStep("f.s", "stateful_batch", {"builder": None}, [], {})
    >>> print(_not_keyed(s, 5))
    step "f.s" requires `(key, value)` 2-tuple from upstream for routing; got a `int` \
instead: 5; use `key_on` or `map` to make (str, value) pairs
    >>> print(_not_keyed(s, (1, 2)))
    step "f.s" requires `str` keys in `(key, value)` from upstream; got a `int` instead: \
(1, 2); use `key_on` or `map` to make (str, value) pairs
    """
    pre_reduce = getattr(step.conf.get("builder"), "_bytewax_pre_reduce", None)
    if pre_reduce is not None:
        try:
            _k, _v = item
        except (TypeError, ValueError) as exc:
            user_step = pre_reduce.rsplit(".", 1)[0]
            err = BytewaxRuntimeError(
                f"error calling `mapper` in step {quoted(pre_reduce)}: {type(exc).__name__}: "
                f"{exc}; step {user_step!r} requires `(key, value)` 2-tuples; got "
                f"{type(item).__name__} {item!r}; {_KEYED_HINT}"
            )
            err.__cause__ = exc
            return err
    if item.__class__ is tuple and len(item) == 2:
        msg = (
            f"step {step.shown} requires `str` keys in `(key, value)` from upstream; "
            f"got a `{type(item[0]).__name__}` instead: {item!r}; {_KEYED_HINT}"
        )
    else:
        msg = (
            f"step {step.shown} requires `(key, value)` 2-tuple from upstream for routing; "
            f"got a `{type(item).__name__}` instead: {item!r}; {_KEYED_HINT}"
        )
    cause = TypeError(msg)
    err = _NotKeyedError(msg)
    err.__cause__ = cause
    return err


class _NotKeyedError(BytewaxRuntimeError, TypeError):
    """A keyed step got an item that is not a ``(str, value)`` pair.

    Bytewax raises a `TypeError` here (the API reference promises one);
    Headrace's runtime errors are `BytewaxRuntimeError`: this is both.
    """


def _drop(batch: list[Any]) -> None:
    return None


@dataclass
class _Edge:
    """An exchange edge: where items are routed to the worker that owns them."""

    eid: int
    step: CoreStep | None  # None for the control edge
    deliver: Push = _drop  # local processing of items owned by this worker
    # the batches of one activation, routed then sent or delivered (see `Ready`)
    route_many: Callable[[list[Any]], None] = _drop
    on_eof: Callable[[], None] = lambda: None
    # the step's activation when the epoch ends there (a stateful step's due timers fire)
    on_align: Callable[[], None] = lambda: None
    # makes the step's combiner for one destination worker (see `_combine_into`)
    new_combiner: Callable[[], Any] | None = None
    upstream_edges: set[int] = field(default_factory=set)
    upstream_sources: set[str] = field(default_factory=set)
    # per-epoch state
    barrier_sent: bool = False
    barriers: int = 0
    eof_votes: int = 0
    stop_votes: int = 0
    aligned: bool = False
    # sticky state
    eof: bool = False


class Worker:
    """Runs the plan for one worker index; `run()` returns at the end of input."""

    def __init__(
        self,
        plan: Plan,
        worker_index: int,
        cluster: Cluster,
        config: RunConfig,
    ) -> None:
        self.plan = plan
        self.index = worker_index
        self.count = cluster.worker_count
        self.cluster = cluster
        self.config = config
        self.inbox = cluster.inboxes[worker_index]
        self.metrics: WorkerMetrics | None = WorkerMetrics(worker_index) if config.metrics else None
        self.tracer = _engine_tracer()
        self.epoch_ref = EpochRef()
        self.sources: list[_SourceRun] = []
        self.stateful: list[_StatefulRun] = []
        self.edges: list[_Edge] = []
        self._edge_of_step: dict[str, _Edge] = {}
        self._closers: list[tuple[str, Callable[[], None]]] = []
        self._pushes: dict[str, Push] = {}
        self._held: list[tuple[Any, ...]] = []
        self.finished = False
        self.stopped = False
        self.inflight = [0] * self.count
        self._acks = [0] * self.count
        # ACKs are sent once a sender is owed this many, or before blocking
        # (see `_drain`); a sender over `inflight_limit` is owed more than it.
        self._ack_every = max(1, config.inflight_limit // 4)
        # (edge id, destination) -> items waiting to be sent (see `_send_data`)
        self._outbuf: dict[tuple[int, int], Any] = {}
        # (edge, worker) -> that destination's combiner (kept across flushes)
        self._combiners: dict[tuple[int, int], Any] = {}
        self._out_items = 0
        self._out_since = 0.0
        self.backpressure_seconds = 0.0
        self._busy_mark = time.perf_counter()
        self._not_busy = 0.0
        self._waiting_since: float | None = None
        self.epoch_ref.epoch = config.resume_epoch + 1
        # Built partitions of fixed sinks, in step and partition order; and
        # the resume state of this worker's partitions not built yet.
        self._sink_parts: list[tuple[str, str, Any]] = []
        self._unbuilt_sink_parts: dict[str, dict[str, Any]] = {}
        self.snapshot_bytes = 0
        # Steps run in declaration order, each with all its pending batches
        # (`_sched.Ready`); a step's position is its index in the plan.
        self.ready = Ready()
        self._pos = {st.step_id: i for i, st in enumerate(plan.steps)}
        self._nodes: dict[str, Push] = {}
        self._build()

    @property
    def epoch(self) -> int:
        return self.epoch_ref.epoch

    # ------------------------------------------------------------------ build

    def _build(self) -> None:
        plan = self.plan
        for step in plan.steps:
            if step.kind in ("stateful_batch", "redistribute") or (
                step.kind == "output" and isinstance(step.conf["sink"], FixedPartitionedSink)
            ):
                edge = _Edge(len(self.edges), step)
                self.edges.append(edge)
                self._edge_of_step[step.step_id] = edge
        # As in Bytewax: building the dataflow lists the partitions of
        # sources and sinks and builds dynamic sources and sinks, in step
        # order; then the partitions of fixed sources are built; a fixed
        # sink's partition is built at its first write (`_wire_partitioned_sink`).
        self._dyn_sink_parts: dict[str, Any] = {}
        self._sink_part_names: dict[str, list[str]] = {}
        fixed_parts: dict[str, list[str]] = {}
        for step in plan.steps:
            if step.kind == "input":
                source = step.conf["source"]
                if isinstance(source, FixedPartitionedSource):
                    fixed_parts[step.step_id] = self._list_source_parts(step)
                else:
                    self._build_dynamic_source(step)
            elif step.kind == "output":
                sink = step.conf["sink"]
                if isinstance(sink, FixedPartitionedSink):
                    self._sink_part_names[step.step_id] = self._list_sink_parts(step)
                else:
                    self._build_dynamic_sink_part(step)
        for step in plan.steps:
            if step.step_id in fixed_parts:
                self._build_fixed_source(step, fixed_parts[step.step_id])
        # Sources were appended as built: keep them in step order (the order
        # of their batches in an activation).
        by_id = {st.step_id: (i, st) for i, st in enumerate(plan.steps)}
        self.sources.sort(key=lambda src: by_id[src.step_id][0])
        for src in self.sources:
            src.push = self.push_for(by_id[src.step_id][1].outputs["down"])
        for edge in self.edges:
            self._wire_edge(edge)
        self._compute_upstreams()
        if self.metrics is not None:
            for src in self.sources:
                src.m = self.metrics.step(src.step_id, "inp_part_next_batch_duration_seconds")
                if src.lag is not None:
                    src.lag_gauge = self.metrics.lag(src.step_id, src.part_name)
        # The control edge goes last: its barrier is sent once everything
        # else of the epoch is done here, so its alignment means "every
        # worker finished the epoch" (the commit point) and its flags carry
        # the cluster-wide EOF and stop decisions.
        self.control = _Edge(len(self.edges), None)
        self.control.upstream_edges = {e.eid for e in self.edges}
        self.control.upstream_sources = {s.step_id for s in self.sources} | {
            st.step_id for st in self.plan.steps if st.kind == "input"
        }
        self.edges.append(self.control)

    def _stage_of(self, step: CoreStep) -> Stage | None:
        if step.kind == "flat_map_batch":
            mapper = step.conf["mapper"]
            hint = getattr(mapper, "_fusable", None)
            if hint is not None and hint[0] in FUSABLE_KINDS:
                return Stage(step.step_id, hint[0], hint[1], step.display_id)
            return Stage(step.step_id, "batch", mapper, step.display_id)
        if step.kind == "inspect_debug":
            return Stage(step.step_id, "inspect", step.conf["inspector"], step.display_id)
        if step.kind == "noop":
            return Stage(step.step_id, "noop", _drop)
        return None

    def push_for(self, stream_id: str) -> Push:
        """The function to call with a batch that appears on ``stream_id``."""
        cached = self._pushes.get(stream_id)
        if cached is not None:
            return cached
        consumers = self.plan.consumers.get(stream_id, [])
        entries = [self._entry(step, stream_id) for step in consumers]
        push: Push
        if not entries:
            push = _drop
        elif len(entries) == 1:
            push = entries[0]
        else:
            fan = tuple(entries)

            def push(batch: list[Any]) -> None:
                for entry in fan:
                    entry(batch)

        self._pushes[stream_id] = push
        return push

    def _entry(self, step: CoreStep, stream_id: str) -> Push:
        """Entry point of ``step`` for batches arriving on ``stream_id``.

        Queues the batch for the step's turn (`Ready`); `merge` only passes
        batches on, so its consumers queue them.
        """
        if step.kind == "merge":
            return self.push_for(step.outputs["down"])
        node = self._nodes.get(step.step_id)
        if node is None:
            node = self._nodes[step.step_id] = self.ready.push_to(
                self._pos[step.step_id], self._run_many(step)
            )
        return node

    def _run_many(self, step: CoreStep) -> Callable[[list[Any]], None]:
        """What runs ``step`` on the batches of one activation."""
        if self._stage_of(step) is not None:
            return self._chain_from(step)
        if step.step_id in self._edge_of_step:
            edge = self._edge_of_step[step.step_id]
            return lambda batches: edge.route_many(batches)
        if step.kind == "branch":
            push = self._branch(step)
        elif step.kind == "output":
            push = self._dynamic_sink(step)
        else:
            raise AssertionError(f"unknown core step kind {step.kind!r}")

        def each(batches: list[Any]) -> None:
            for batch in batches:
                push(batch)

        return each

    def _chain_from(self, first: CoreStep) -> Callable[[list[Any]], None]:
        """Run the stateless steps declared one after the other from ``first`` as one step.

        Each batch function of the chain (a fused run of item-level stages,
        an `inspect`, a `flat_map_batch`) handles every batch of the
        activation before the next function starts, as separate steps would.
        """
        stages: list[Stage] = []
        step = first
        pos = self._pos
        while True:
            stage = self._stage_of(step)
            assert stage is not None
            stages.append(stage)
            out = step.outputs["down"]
            consumers = self.plan.consumers.get(out, [])
            # Only the next step declared: one declared in between would run
            # between the two in Bytewax.
            if (
                len(consumers) == 1
                and self._stage_of(consumers[0]) is not None
                and pos[consumers[0].step_id] == pos[step.step_id] + 1
                and len(consumers[0].inputs) == 1
            ):
                step = consumers[0]
                continue
            break
        downstream = self.push_for(out)
        fns = None
        consumers = self.plan.consumers.get(out, [])
        if self.config.fuse and len(consumers) == 1 and consumers[0].kind == "stateful_batch":
            fns = compile_grouping_chain(stages, self.epoch_ref, self.index)
        if fns is None:
            fns = compile_chain(stages, self.epoch_ref, self.index, self.config.fuse)
        if not fns:

            def pass_on(batches: list[Any]) -> None:
                for batch in batches:
                    downstream(batch)

            return pass_on
        seq = tuple(fns)
        if self.tracer is None and self.metrics is None and len(seq) == 1:
            only = seq[0]

            def run_one(batches: list[Any]) -> None:
                for batch in batches:
                    out = only(batch)
                    if out:
                        downstream(out)

            return run_one

        def apply(batches: list[Any]) -> list[Any]:
            for fn in seq:
                batches = [o for o in map(fn, batches) if o]
            return batches

        if self.tracer is not None:
            tracer, untraced = self.tracer, apply

            def apply(batches: list[Any]) -> list[Any]:
                with tracer.start_as_current_span(first.step_id) as span:
                    span.set_attribute("headrace.items", sum(map(len, batches)))
                    return untraced(batches)

        m = (
            None
            if self.metrics is None
            else self.metrics.step(first.step_id, "flat_map_batch_duration_seconds")
        )

        def run(batches: list[Any]) -> None:
            if m is None:
                outs = apply(batches)
            else:
                t0 = time.perf_counter()
                n = sum(map(len, batches))
                outs = apply(batches)
                dt = time.perf_counter() - t0
                m.inp.inc(n)
                m.out.inc(sum(map(_count, outs)))
                m.dur.observe(dt)
                m.busy.inc(dt)
            for batch in outs:
                downstream(batch)

        return run

    def _branch(self, step: CoreStep) -> Push:
        pred = step.conf["predicate"]
        trues = self.push_for(step.outputs["trues"])
        falses = self.push_for(step.outputs["falses"])
        shown = step.shown

        def push(batch: list[Any]) -> None:
            t: list[Any] = []
            f: list[Any] = []
            for x in batch:
                try:
                    keep = pred(x)
                except Exception as exc:
                    raise BytewaxRuntimeError(
                        f"error calling predicate in step {shown} on item {x!r}: {type(exc).__name__}: {exc}"
                    ) from exc
                if keep is True:
                    t.append(x)
                elif keep is False:
                    f.append(x)
                else:
                    raise BytewaxRuntimeError(
                        f"return value of `predicate` in step {shown} must be a `bool`; "
                        f"got {type(keep).__name__} {keep!r} for item {x!r}"
                    ) from TypeError(f"{type(keep).__name__!r} object cannot be converted to 'PyBool'")
            if t:
                trues(t)
            if f:
                falses(f)

        return push

    def _build_dynamic_sink_part(self, step: CoreStep) -> None:
        sink: DynamicSink[Any] = step.conf["sink"]
        try:
            part = sink.build(step.step_id, self.index, self.count)
        except Exception as exc:
            raise BytewaxRuntimeError(f"error building sink in step {step.step_id!r}") from exc
        self._closers.append((step.step_id, part.close))
        self._dyn_sink_parts[step.step_id] = part

    def _dynamic_sink(self, step: CoreStep) -> Push:
        step_id = step.step_id
        shown = step.shown
        write = self._dyn_sink_parts[step_id].write_batch
        m = (
            None
            if self.metrics is None
            else self.metrics.step(step_id, "out_part_write_batch_duration_seconds")
        )

        def push(batch: list[Any]) -> None:
            t0 = time.perf_counter()
            try:
                write(batch)
            except Exception as exc:
                raise BytewaxRuntimeError(
                    f"error writing output batch in step {shown}: {type(exc).__name__}: {exc}"
                ) from exc
            if m is not None:
                dt = time.perf_counter() - t0
                m.inp.inc(len(batch))
                m.dur.observe(dt)
                m.busy.inc(dt)

        return push

    def _resume_parts(self, step_id: str) -> dict[str, Any]:
        store = self.config.store
        if store is None or not self.config.resume_epoch:
            return {}
        blobs = store.load(step_id, [PARTS]).get(PARTS, {})
        return {name: pickle.loads(blob) for name, blob in blobs.items()}

    def _list_source_parts(self, step: CoreStep) -> list[str]:
        try:
            return sorted(step.conf["source"].list_parts())
        except Exception as exc:
            raise BytewaxRuntimeError(
                f"error calling `FixedPartitionSource.list_parts` in step {step.shown}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _build_fixed_source(self, step: CoreStep, parts: list[str]) -> None:
        source: FixedPartitionedSource[Any, Any] = step.conf["source"]
        resume = self._resume_parts(step.step_id)
        for i, name in enumerate(parts):
            if part_owner(i, self.count) != self.index:
                continue
            try:
                part = source.build_part(step.step_id, name, resume.get(name))
            except Exception as exc:
                raise BytewaxRuntimeError(
                    f"error calling `FixedPartitionSource.build_part` in step {step.shown} "
                    f"for partition {quoted(name)}: {type(exc).__name__}: {exc}"
                ) from exc
            self.sources.append(_SourceRun(step.step_id, name, part, _drop, True))

    def _build_dynamic_source(self, step: CoreStep) -> None:
        source: DynamicSource[Any] = step.conf["source"]
        try:
            dyn = source.build(step.step_id, self.index, self.count)
        except Exception as exc:
            raise BytewaxRuntimeError(
                f"error calling `DynamicSource.build` in step {step.shown}: {type(exc).__name__}: {exc}"
            ) from exc
        self.sources.append(_SourceRun(step.step_id, f"worker-{self.index}", dyn, _drop, False))

    def _keyed_streams(self) -> set[str]:
        """Streams proven to carry `(str, value)` 2-tuples, so consumers skip checks.

        `key_on` checks its keys; value-only stages and filters keep a keyed
        stream keyed; stateful steps emit `(key, out)` with their str keys.
        """
        keyed: set[str] = set()
        keep = {"map_value", "filter_value", "filter_map_value", "flat_map_value", "filter"}
        for step in self.plan.steps:
            ins_keyed = bool(step.inputs) and all(i in keyed for i in step.inputs)
            stage = self._stage_of(step)
            if step.kind == "stateful_batch":
                ok = True
            elif stage is not None:
                ok = stage.kind == "key_on" or (
                    ins_keyed and (stage.kind in keep or stage.kind in ("inspect", "noop"))
                )
            elif step.kind in ("merge", "branch", "redistribute"):
                ok = ins_keyed
            else:
                ok = False
            if ok:
                keyed.update(step.outputs.values())
        return keyed

    def _wire_edge(self, edge: _Edge) -> None:
        step = edge.step
        assert step is not None
        if step.kind == "stateful_batch":
            if not hasattr(self, "_keyed"):
                self._keyed = self._keyed_streams()
            node = _StatefulRun(step, self, trusted=step.inputs[0] in self._keyed)
            node.push = self.push_for(step.outputs["down"])
            self.stateful.append(node)
            deliver_many: Callable[[list[Any]], None] = node.deliver_many
            if self.tracer is not None:
                edge.deliver = _traced(self.tracer, step.step_id, node.deliver)
                deliver_many = _traced(self.tracer, step.step_id, deliver_many)
            else:
                edge.deliver = node.deliver
            store = self.config.store
            if store is not None and self.config.resume_epoch:
                groups = self.config.key_groups
                mine = [g for g in range(groups) if group_owner(g, groups, self.count) == self.index]
                for states in store.load(step.step_id, mine).values():
                    node.restore(states)
            edge.on_eof = node.on_eof
            edge.on_align = lambda: node.fire_timers(_utcnow())
            precombiner = getattr(step.conf["builder"], "precombiner", None)
            if precombiner is not None and self.count > 1:
                consumers = self.plan.consumers
                edge.new_combiner = precombiner(lambda stream_id: bool(consumers.get(stream_id)))
            edge.route_many = self._keyed_router(edge, step.step_id, node.trusted, deliver_many)
        elif step.kind == "redistribute":
            edge.deliver = self.push_for(step.outputs["down"])
            edge.route_many = self._rr_router(edge)
        else:
            self._wire_partitioned_sink(edge)

    def _send_data(self, edge: _Edge, dst: int, items: Any) -> None:
        """Buffer ``items`` (a list, or ``{key: [values]}``) for worker ``dst`` on ``edge``.

        The buffer keeps (and extends) the lists it is given: every caller
        hands over lists made for this send alone, never a batch that other
        steps also see. On an edge with a combiner, the values go into the
        (edge, worker)'s combiner instead, which the buffer then names.
        """
        key = (edge.eid, dst)
        if edge.new_combiner is not None:
            combiner = self._combiners.get(key)
            if combiner is None:
                combiner = self._combiners[key] = edge.new_combiner()
            assert edge.step is not None and items.__class__ is dict
            n = _combine_into(edge.step.shown, combiner, items)
            self._outbuf[key] = combiner
        elif items.__class__ is dict:
            n = 0
            buf = self._outbuf.get(key)
            if buf is None:
                buf = self._outbuf[key] = {}
            get = buf.get
            for k, vs in items.items():
                n += len(vs)
                old = get(k)
                if old is None:
                    buf[k] = vs
                else:
                    old.extend(vs)
        else:
            n = len(items)
            buf = self._outbuf.get(key)
            if buf is None:
                self._outbuf[key] = items
            else:
                buf.extend(items)
        if not self._out_items:
            self._out_since = time.monotonic()
        self._out_items += n
        if self._out_items >= self.config.exchange_flush_items:
            self._flush_out()

    def _flush_out(self) -> None:
        """Send every buffered batch (or the partial results of a combiner)."""
        buffered = self._outbuf
        if not buffered:
            return
        self._outbuf = {}
        self._out_items = 0
        edges = self.edges
        metrics = self.metrics
        for (eid, dst), payload in buffered.items():
            edge = edges[eid]
            if edge.new_combiner is not None:
                payload = payload.take()
                if not payload:
                    continue  # every value was late: nothing to send
            n = _count(payload)
            self.inflight[dst] += n
            if metrics is not None:
                metrics.x_out.inc(n)
            self.cluster.send(dst, (DATA, eid, self.index, self.epoch, payload))

    def _keyed_router(
        self,
        edge: _Edge,
        step_id: str,
        trusted: bool,
        deliver_many: Callable[[list[Any]], None],
    ) -> Callable[[list[Any]], None]:
        """Route an activation's batches by key; this worker's keys are handled together."""
        if self.count == 1:
            return deliver_many
        step = edge.step
        assert step is not None
        groups = self.config.key_groups
        count = self.count
        me = self.index
        cache: dict[str, int] = {}

        def owner(k: str) -> int:
            if len(cache) > 1_000_000:
                cache.clear()
            dst = cache[k] = group_owner(key_group(k, groups), groups, count)
            return dst

        local: list[Any] = []

        def route_groups(grouped: dict[str, list[Any]]) -> None:
            parts: list[dict[str, list[Any]]] = [{} for _ in range(count)]
            for k, vs in grouped.items():
                dst = cache.get(k)
                if dst is None:
                    dst = owner(k)
                parts[dst][k] = vs
            for dst, part in enumerate(parts):
                if part:
                    if dst == me:
                        local.append(part)
                    else:
                        self._send_data(edge, dst, part)

        def route_many(batches: list[Any]) -> None:
            for batch in batches:
                route(batch)
            if local:
                mine = local[:]
                local.clear()
                deliver_many(mine)

        def route(batch: Any) -> None:
            if batch.__class__ is dict:
                # Made for this step alone by its grouping chain
                # (`compile_grouping_chain`: one consumer, a stateful step),
                # so the send buffer may keep its lists.
                route_groups(batch)
                return
            # Group first: one owner lookup per key, and each key is
            # pickled once per message instead of once per item.
            if not trusted and list(map(type, batch)).count(tuple) != len(batch):
                _reject_unkeyed(step, batch)
            grouped: dict[str, list[Any]] = {}
            get = grouped.get
            try:
                for k, v in batch:
                    vs = get(k)
                    if vs is None:
                        if k.__class__ is not str:
                            raise _not_keyed(step, (k, v))
                        grouped[k] = [v]
                    else:
                        vs.append(v)
            except ValueError:
                _reject_unkeyed(step, batch)
            route_groups(grouped)

        return route_many

    def _rr_router(self, edge: _Edge) -> Callable[[list[Any]], None]:
        if self.count == 1:
            deliver = edge.deliver

            def pass_on(batches: list[Any]) -> None:
                for batch in batches:
                    deliver(batch)

            return pass_on
        count = self.count
        me = self.index
        offset = [me]

        def route(batch: list[Any]) -> None:
            start = offset[0]
            offset[0] = (start + len(batch)) % count
            for j in range(count):
                dst = (start + j) % count
                items = batch[j::count]
                if items:
                    if dst == me:
                        edge.deliver(items)
                    else:
                        self._send_data(edge, dst, items)

        def route_many(batches: list[Any]) -> None:
            for batch in batches:
                route(batch)

        return route_many

    def _list_sink_parts(self, step: CoreStep) -> list[str]:
        try:
            parts = sorted(step.conf["sink"].list_parts())
        except Exception as exc:
            raise BytewaxRuntimeError(
                f"error listing partitions in step {step.shown}: {type(exc).__name__}: {exc}"
            ) from exc
        if not parts:
            msg = f"sink in step {step.step_id!r} listed no partitions"
            raise BytewaxRuntimeError(msg)
        # Closed in partition order, after the sinks built later (see `_close_all`).
        self._closers.append((step.step_id, lambda: self._close_sink_parts(step.step_id)))
        return parts

    def _close_sink_parts(self, step_id: str) -> None:
        for sid, _name, part in self._sink_parts:
            if sid == step_id:
                part.close()

    def _wire_partitioned_sink(self, edge: _Edge) -> None:
        step = edge.step
        assert step is not None
        sink: FixedPartitionedSink[Any, Any] = step.conf["sink"]
        step_id = step.step_id
        shown = step.shown
        parts = self._sink_part_names[step_id]
        n = len(parts)
        local: dict[int, Any] = {}
        resume = self._resume_parts(step_id)
        self._unbuilt_sink_parts[step_id] = {
            parts[i]: resume[parts[i]]
            for i in range(n)
            if part_owner(i, self.count) == self.index and parts[i] in resume
        }

        def part_at(i: int) -> Any:
            # Built at its first write, as in Bytewax.
            part = local.get(i)
            if part is not None:
                return part
            name = parts[i]
            try:
                part = local[i] = sink.build_part(step_id, name, resume.get(name))
            except Exception as exc:
                raise BytewaxRuntimeError(
                    f"error calling `build_part` in step {shown} for partition {quoted(name)}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._unbuilt_sink_parts[step_id].pop(name, None)
            self._sink_parts.append((step_id, name, part))
            self._sink_parts.sort(key=lambda e: (self._pos[e[0]], e[1]))
            return part

        part_fn = sink.part_fn
        count = self.count
        me = self.index

        def index_of(item: Any) -> int:
            if item.__class__ is not tuple or len(item) != 2 or item[0].__class__ is not str:
                raise _not_keyed(step, item)
            try:
                return int(part_fn(item[0])) % n
            except Exception as exc:
                raise BytewaxRuntimeError(
                    f"error assigning output partition in step {shown} for key {quoted(item[0])}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc

        m = (
            None
            if self.metrics is None
            else self.metrics.step(step_id, "out_part_write_batch_duration_seconds")
        )

        def deliver(batch: list[Any]) -> None:
            t0 = time.perf_counter()
            by_part: dict[int, list[Any]] = {}
            for item in batch:
                by_part.setdefault(index_of(item), []).append(item[1])
            for i, values in by_part.items():
                part = part_at(i)
                try:
                    part.write_batch(values)
                except Exception as exc:
                    raise BytewaxRuntimeError(
                        f"error writing output batch in step {shown} for partition "
                        f"{quoted(parts[i])}: {type(exc).__name__}: {exc}"
                    ) from exc
            if m is not None:
                dt = time.perf_counter() - t0
                m.inp.inc(len(batch))
                m.dur.observe(dt)
                m.busy.inc(dt)

        def route(batch: list[Any]) -> None:
            if count == 1:
                deliver(batch)
                return
            buckets: list[list[Any]] = [[] for _ in range(count)]
            for item in batch:
                buckets[part_owner(index_of(item), count)].append(item)
            for dst, items in enumerate(buckets):
                if items:
                    if dst == me:
                        deliver(items)
                    else:
                        self._send_data(edge, dst, items)

        def route_many(batches: list[Any]) -> None:
            for batch in batches:
                route(batch)

        edge.deliver = deliver
        edge.route_many = route_many

    def _compute_upstreams(self) -> None:
        """For each edge: which edges and source steps feed it (transitively)."""
        plan = self.plan
        memo: dict[str, tuple[frozenset[int], frozenset[str]]] = {}

        def ups_of_stream(stream_id: str) -> tuple[frozenset[int], frozenset[str]]:
            if stream_id in memo:
                return memo[stream_id]
            step = plan.producer[stream_id]
            edges: set[int] = set()
            srcs: set[str] = set()
            if step.kind == "input":
                srcs.add(step.step_id)
            edge = self._edge_of_step.get(step.step_id)
            if edge is not None:
                edges.add(edge.eid)
            for inp in step.inputs:
                e, s = ups_of_stream(inp)
                edges |= e
                srcs |= s
            memo[stream_id] = (frozenset(edges), frozenset(srcs))
            return memo[stream_id]

        for edge in self.edges:
            assert edge.step is not None
            for inp in edge.step.inputs:
                e, s = ups_of_stream(inp)
                edge.upstream_edges |= e
                edge.upstream_sources |= s

    # ------------------------------------------------------------------- run

    def _sources_done(self, steps: set[str] | None = None) -> bool:
        return all(s.done for s in self.sources if steps is None or s.step_id in steps)

    def _poll_sources(self, now: datetime) -> bool:
        """Poll awake partitions once; return whether any produced items.

        As in Bytewax, an input step emits what all its partitions gave in
        one poll as one batch; the flow then runs on it (`Ready.run`).
        """
        produced = False
        held: list[Any] = []  # the batch of the input step being polled
        held_push: Push = _drop
        for src in self.sources:
            if src.push is not held_push:
                if held:
                    held_push(held[0] if len(held) == 1 else [x for b in held for x in b])
                    held = []
                held_push = src.push
            if src.done or (src.awake is not None and src.awake > now):
                continue
            t0 = time.perf_counter()
            try:
                batch = src.part.next_batch()
            except StopIteration:
                self._close_source(src)
                continue
            except AbortExecution:
                self.cluster.aborted_by_source = True
                raise Abort() from None
            except Exception as exc:
                kind = "Stateful" if src.stateful else "Stateless"
                raise BytewaxRuntimeError(
                    f"error calling `{kind}SourcePartition.next_batch` in step "
                    f"{quoted(src.step_id)} for partition {quoted(src.part_name)}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if batch.__class__ is not list:
                if not hasattr(batch, "__iter__"):
                    msg = (
                        f"`next_batch` in step {src.step_id!r} must return a list (or "
                        f"iterable) of items; got {type(batch).__name__}"
                    )
                    raise BytewaxRuntimeError(msg) from TypeError(msg)
                try:
                    batch = list(batch)
                except Exception as exc:
                    raise BytewaxRuntimeError(
                        f"error iterating the batch from `next_batch` in step {src.step_id!r} "
                        f"for partition {src.part_name!r}: {type(exc).__name__}: {exc}"
                    ) from exc
            m = src.m
            if m is not None:
                dt = time.perf_counter() - t0
                m.out.inc(len(batch))
                m.dur.observe(dt)
                m.busy.inc(dt)
            if batch:
                produced = True
                held.append(batch)
            try:
                awake = src.part.next_awake()
            except Exception as exc:
                raise BytewaxRuntimeError(f"error calling `next_awake` in step {src.step_id!r}") from exc
            if awake is not None and (not isinstance(awake, datetime) or awake.tzinfo is None):
                msg = (
                    f"`next_awake` in step {src.step_id!r} must return a timezone-aware "
                    f"datetime or None; got {awake!r}"
                )
                raise BytewaxRuntimeError(msg) from TypeError(msg)
            if awake is None and not batch:
                awake = now + _EMPTY_COOLDOWN
            src.awake = awake
        if held:
            held_push(held[0] if len(held) == 1 else [x for b in held for x in b])
        self.ready.run()
        return produced

    def _close_source(self, src: _SourceRun) -> None:
        src.done = True
        if src.stateful and self.config.store is not None:
            src.final_state = self._part_snapshot(src)
        try:
            src.part.close()
        except Exception as exc:
            raise BytewaxRuntimeError(f"error calling `close` in step {src.step_id!r}") from exc

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == ACK:
            self.inflight[msg[1]] -= msg[2]
            return
        if kind == STOP:
            raise Abort()
        _, eid, sender, epoch, payload = msg
        if epoch > self.epoch:
            self._held.append(msg)
            return
        edge = self.edges[eid]
        if kind == DATA:
            n = _count(payload)
            self._acks[sender] += n
            if self.metrics is not None:
                self.metrics.x_in.inc(n)
            edge.deliver(payload)
        else:
            self._barrier(edge, payload)

    def _barrier(self, edge: _Edge, flags: int) -> None:
        self.ready.run()  # data before the barrier is handled first
        edge.barriers += 1
        if flags & F_EOF:
            edge.eof_votes += 1
        if flags & F_STOP:
            edge.stop_votes += 1
        if edge.barriers == self.count:
            # As in Bytewax, the end of an epoch activates the step: timers
            # due by now fire (with `epoch_interval=0`, before the next item).
            edge.on_align()
            edge.aligned = True
            if edge.eof_votes == self.count and not edge.eof:
                edge.eof = True
                edge.on_eof()
            self.ready.run()

    def _send_acks(self, force: bool) -> None:
        """Tell senders how many of their items were processed.

        Unless ``force``, only senders owed ``_ack_every`` or more hear now:
        a sender that stopped for backpressure is owed more than that, and
        every ACK is forced out before this worker blocks.
        """
        acks = self._acks
        every = self._ack_every
        for sender, n in enumerate(acks):
            if n:
                if sender == self.index:
                    acks[sender] = 0
                    self.inflight[sender] -= n
                elif force or n >= every:
                    acks[sender] = 0
                    self.cluster.send(sender, (ACK, self.index, n))

    def _drain(self, block: float) -> None:
        """Handle queued messages; wait up to ``block`` seconds for the first.

        Before waiting, everything buffered for other workers goes out and
        every ACK owed is sent, so no peer waits on this one while it sleeps.
        """
        inbox = self.inbox
        if block > 0:
            self._flush_out()
            self._send_acks(True)
        try:
            msg = inbox.get(timeout=block) if block > 0 else inbox.get_nowait()
        except queue.Empty:
            return
        self._handle(msg)
        for _ in range(10_000):
            try:
                msg = inbox.get_nowait()
            except queue.Empty:
                break
            self._handle(msg)
        self.ready.run()
        self._send_acks(False)

    def _start_epoch_span(self) -> Any:
        if self.tracer is None:
            return None
        from opentelemetry import context, trace

        span = self.tracer.start_span(
            "epoch",
            attributes={
                "headrace.epoch": self.epoch,
                "headrace.worker_index": self.index,
                "headrace.flow_id": self.plan.flow_id,
            },
        )
        token = context.attach(trace.set_span_in_context(span))
        return (span, token)

    def _end_epoch_span(self, handle: Any) -> None:
        from opentelemetry import context

        span, token = handle
        context.detach(token)
        span.end()

    def _idle_drain(self, block: float) -> None:
        if self.metrics is None or block <= 0:
            self._drain(block)
            return
        t0 = self._waiting_since = time.perf_counter()
        self._drain(block)
        waited = time.perf_counter() - t0
        self._not_busy += waited
        self._waiting_since = None
        self.metrics.idle.inc(waited)

    def _account_busy(self, final: bool = False) -> None:
        """Add the time since the last call, minus idle and blocked time, to the busy counter."""
        t = time.perf_counter()
        span = t - self._busy_mark
        if span < _BUSY_FLUSH and not final:
            return
        assert self.metrics is not None
        busy = self.metrics.busy
        with busy.lock:
            busy.value += max(0.0, span - self._not_busy)
            self._busy_mark = t
            self._not_busy = 0.0

    def _busy_pending(self) -> float:
        """Busy time not flushed yet (read by a scrape, under the series' lock)."""
        end = self._waiting_since
        if end is None:
            end = time.perf_counter()
        return end - self._busy_mark - self._not_busy

    def _send_barriers(self) -> None:
        """Send this epoch's barrier on every edge whose upstream is complete."""
        # Buffered items go first: a barrier must follow its edge's data.
        self._flush_out()
        for edge in self.edges:
            if edge.barrier_sent or edge.eof:
                continue
            if not all(self.edges[u].aligned or self.edges[u].eof for u in edge.upstream_edges):
                continue
            eof = self._sources_done(edge.upstream_sources) and all(
                self.edges[u].eof for u in edge.upstream_edges
            )
            flags = F_EOF if eof else 0
            if edge is self.control:
                self.before_commit_barrier()
                if self.cluster.stop_requested.is_set():
                    flags |= F_STOP
            edge.barrier_sent = True
            for dst in range(self.count):
                if dst == self.index:
                    self._barrier(edge, flags)
                else:
                    self.cluster.send(dst, (BARRIER, edge.eid, self.index, self.epoch, flags))

    def _part_snapshot(self, src: _SourceRun) -> bytes:
        try:
            state = src.part.snapshot()  # type: ignore[union-attr]
        except Exception as exc:
            raise BytewaxRuntimeError(
                f"error calling `StatefulSourcePartition.snapshot` in step {quoted(src.step_id)} "
                f"for partition {quoted(src.part_name)}: {type(exc).__name__}: {exc}"
            ) from exc
        return _pickle_part(src.step_id, src.part_name, state)

    def before_commit_barrier(self) -> None:
        """This worker finished the epoch: write its snapshot before telling the others."""
        self._update_lag()
        store = self.config.store
        if store is None:
            return
        t_snap = time.perf_counter()
        entries: list[Entry] = []
        for node in self.stateful:
            entries.extend(node.snapshot_entries(self.config.key_groups))
        for src in self.sources:
            if not src.stateful:
                continue
            blob = src.final_state if src.done else self._part_snapshot(src)
            if blob is not None:
                entries.append((src.step_id, PARTS, src.part_name, blob))
        for step_id, name, part in self._sink_parts:
            try:
                state = part.snapshot()
            except Exception as exc:
                raise BytewaxRuntimeError(
                    f"error calling `snapshot` in step {step_id!r} for partition {name!r}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            entries.append((step_id, PARTS, name, _pickle_part(step_id, name, state)))
        # A partition not built yet (nothing written to it since the resume)
        # keeps the state it resumed from.
        for step_id, unbuilt in self._unbuilt_sink_parts.items():
            for name, state in unbuilt.items():
                entries.append((step_id, PARTS, name, _pickle_part(step_id, name, state)))
        t0 = time.perf_counter()
        self.snapshot_bytes = store.write_epoch(self.epoch, entries)
        m = self.metrics
        if m is not None:
            m.store_latency.observe(time.perf_counter() - t0)
            m.snap_bytes.set(self.snapshot_bytes)
            m.snap_bytes_total.inc(self.snapshot_bytes)
            m.snap_dur.observe(time.perf_counter() - t_snap)

    def _update_lag(self) -> None:
        for src in self.sources:
            if src.lag is None or src.done:
                continue
            try:
                lag = src.lag()
            except Exception:
                log.debug("lag() failed in step %r", src.step_id, exc_info=True)
                continue
            if lag is not None and src.lag_gauge is not None:
                src.lag_gauge.set(lag)

    def after_epoch(self) -> None:
        """Every worker finished the epoch: worker 0 commits it."""
        store = self.config.store
        if store is None or self.index != 0:
            return
        store.commit(self.epoch, self.snapshot_bytes)
        if self.metrics is not None:
            M["headrace_epoch_committed"].set(self.epoch)
        every = self.config.compact_every
        if every and self.epoch % every == 0:
            store.compact(self.epoch - self.config.keep_epochs)

    def _epoch_complete(self) -> bool:
        return self.control.aligned

    def _advance_epoch(self) -> None:
        for edge in self.edges:
            edge.barrier_sent = False
            edge.barriers = 0
            edge.eof_votes = 0
            edge.stop_votes = 0
            edge.aligned = edge.eof
        self.epoch_ref.epoch += 1
        held, self._held = self._held, []
        for msg in held:
            self._handle(msg)
        self.ready.run()

    def _fire_timers(self, now: datetime) -> None:
        """Activations without items: steps that handled items since the last call
        fired their due timers then, as Bytewax does."""
        for node in self.stateful:
            if node.activated:
                node.activated = False
                continue
            edge = self._edge_of_step[node.step_id]
            if not edge.aligned and not edge.eof:
                node.fire_timers(now)
        self.ready.run()

    def _next_wake(self, closing: bool, deadline: float) -> float:
        """Seconds to sleep until something is due (capped)."""
        now_dt = _utcnow()
        wake = _MAX_SLEEP
        if not closing:
            wake = min(wake, max(0.0, deadline - time.monotonic()))
            for src in self.sources:
                if not src.done:
                    if src.awake is None:
                        return 0.0
                    wake = min(wake, (src.awake - now_dt).total_seconds())
        for node in self.stateful:
            at = node.next_timer()
            if at is not None:
                wake = min(wake, (at - now_dt).total_seconds())
        return max(0.0, wake)

    def run(self) -> None:
        """Run epochs until every input and exchange edge reached EOF."""
        interval = self.config.epoch_interval.total_seconds()
        flush_after = self.config.exchange_flush_seconds
        cluster = self.cluster
        self._busy_mark = time.perf_counter()
        self._not_busy = 0.0
        if self.metrics is not None:
            self.metrics.busy.pending = self._busy_pending
        try:
            while not self.finished:
                epoch_span = self._start_epoch_span()
                epoch_t0 = time.perf_counter()
                if self.metrics is not None:
                    self.metrics.epoch.set(self.epoch)
                deadline = time.monotonic() + interval
                closing = False
                while True:
                    if cluster.abort.is_set():
                        raise Abort()
                    if self._out_items and time.monotonic() - self._out_since >= flush_after:
                        self._flush_out()
                    if self.metrics is not None:
                        self._account_busy()
                    now = _utcnow()
                    produced = False
                    if not closing:
                        if max(self.inflight) <= self.config.inflight_limit:
                            produced = self._poll_sources(now)
                        else:
                            t0 = self._waiting_since = time.perf_counter()
                            self._drain(_MAX_SLEEP)
                            waited = time.perf_counter() - t0
                            self.backpressure_seconds += waited
                            if self.metrics is not None:
                                self._not_busy += waited
                                self._waiting_since = None
                                self.metrics.backpressure.inc(waited)
                        if (
                            time.monotonic() >= deadline
                            or self._sources_done()
                            or cluster.stop_requested.is_set()
                        ):
                            closing = True
                    self._fire_timers(now)
                    if closing:
                        self._send_barriers()
                        if self._epoch_complete():
                            break
                    if produced:
                        self._drain(0)
                    else:
                        self._idle_drain(self._next_wake(closing, deadline))
                self.after_epoch()
                if epoch_span is not None:
                    self._end_epoch_span(epoch_span)
                if self.metrics is not None:
                    self.metrics.epoch_dur.observe(time.perf_counter() - epoch_t0)
                if self.control.eof:
                    self.finished = True
                elif self.control.stop_votes:
                    self.finished = self.stopped = True
                else:
                    self._advance_epoch()
        finally:
            self._close_all()

    def _close_all(self) -> None:
        if self.metrics is not None:
            self._account_busy(final=True)
            self.metrics.busy.pending = None
            self.metrics.forget()
        for src in self.sources:
            if not src.done:
                try:
                    src.part.close()
                except Exception:
                    log.exception("error closing source partition in step %r", src.step_id)
        # Sinks close in the reverse of the order they were built, as in Bytewax.
        for step_id, close in reversed(self._closers):
            try:
                close()
            except Exception as exc:
                if self.cluster.error is None and not self.cluster.abort.is_set():
                    raise BytewaxRuntimeError(
                        f"error calling `close` on a sink partition in step {step_id!r}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                log.exception("error closing sink partition in step %r", step_id)
