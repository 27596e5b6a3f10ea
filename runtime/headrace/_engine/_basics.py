"""What every part of the engine shares: batches, messages, settings, and user-error words.

A *batch* is a list of items, or ``{key: [values]}`` from a fused chain
that grouped them (`batch_len` counts either); a step takes batches
through a `Push`. Workers talk in *messages* (`DATA`, `BARRIER`, `STOP`,
`ACK`, `COMMITTED` tuples) through the `Cluster`, which holds each local
worker's inbox and the route to other processes. `RunConfig` holds the settings of a
run, with the exchange's defaults.

When user code fails, the engine raises `BytewaxRuntimeError` in
Bytewax's words: `user_error` is the one wrapper (the failed call's
words, then the exception's type and message), `calling` the words for a
`StatefulBatchLogic` method, `not_keyed` those for an item that is not a
``(str, value)`` pair.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from headrace._engine._hash import DEFAULT_KEY_GROUPS
from headrace._engine._plan import CoreStep, quoted
from headrace.errors import BytewaxRuntimeError
from headrace.inputs import _utc_now

if TYPE_CHECKING:
    from headrace._engine._store_base import Store

# A batch is a list of items, or {key: [values]} from a chain that grouped.
Push = Callable[[Any], None]

# Message kinds between workers.
DATA = 0
BARRIER = 1
STOP = 2
ACK = 3
# Worker 0 to the others: `(COMMITTED, epoch)` once the store committed the
# epoch; sent only for sinks that commit with the epochs (`_wiring.EpochSink`).
COMMITTED = 5  # (4 is `_async_run.WAKE`)
# A worker's snapshot writer to worker 0: `(WRITTEN, epoch, worker, bytes)`
# once the worker's part of an epoch written off its hot path is in the store.
WRITTEN = 6

# Barrier flags.
F_EOF = 1
F_STOP = 2
F_ASYNC = 4  # on the control barrier: this worker's snapshot is still being written

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


class Abort(Exception):
    """Raised inside a worker when the run must stop at once."""


# The current time in UTC: timers and wake-ups compare against it.
utcnow = _utc_now


def batch_len(payload: Any) -> int:
    """Items in a batch: a list of items, or ``{key: [values]}`` grouped by a fused chain.

    >>> batch_len([1, 2, 3]), batch_len({"a": [1, 2], "b": [3]})
    (3, 3)
    """
    if payload.__class__ is dict:
        return sum(map(len, payload.values()))
    return len(payload)


def drop(batch: list[Any]) -> None:
    """The push of a stream nobody reads."""
    return None


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


def user_error(where: str, exc: BaseException) -> BytewaxRuntimeError:
    """The error for a failed call of user code: ``where``, then what ``exc`` says.

    Raise it ``from exc``, so the traceback shows the user's frame.

    >>> print(user_error('error calling `close` in step "f.out"', ValueError("gone")))
    error calling `close` in step "f.out": ValueError: gone
    """
    return BytewaxRuntimeError(f"{where}: {type(exc).__name__}: {exc}")


def calling(what: str, shown: str, key: str) -> str:
    """Bytewax's words for a failed call of a `StatefulBatchLogic` method of a key.

    ``shown`` is the step's quoted display id. Bytewax says "in step" only
    for ``on_batch``.

    >>> print(calling("on_batch", '"f.s"', "a"))
    error calling `StatefulBatchLogic.on_batch` in step "f.s" for key "a"
    >>> print(calling("on_eof", '"f.s"', "a"))
    error calling `StatefulBatchLogic.on_eof` in "f.s" for key "a"
    """
    where = "in step" if what == "on_batch" else "in"
    return f"error calling `StatefulBatchLogic.{what}` {where} {shown} for key {quoted(key)}"


def reject_unkeyed(step: CoreStep, batch: list[Any]) -> None:
    """Raise the precise error for the first item that is not a (str, value) pair."""
    for item in batch:
        if item.__class__ is not tuple or len(item) != 2 or item[0].__class__ is not str:
            raise not_keyed(step, item)
    raise AssertionError("no bad item found")  # pragma: no cover


KEYED_HINT = "use `key_on` or `map` to make (str, value) pairs"


def not_keyed(step: CoreStep, item: Any) -> BytewaxRuntimeError:
    """The error for an item of a keyed step's input that is not a ``(str, value)`` pair.

    Bytewax's words (and step path) first, then the item and a hint. A
    reduction (`reduce_final` and the operators built on it) fails as
    Bytewax's does, in its ``pre_reduce`` step, when the item doesn't unpack
    into two values.

    >>> s = CoreStep("f.s", "stateful_batch", {"builder": None}, [], {})
    >>> print(not_keyed(s, 5))
    step "f.s" requires `(key, value)` 2-tuple from upstream for routing; got a `int` \
instead: 5; use `key_on` or `map` to make (str, value) pairs
    >>> print(not_keyed(s, (1, 2)))
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
                f"{type(item).__name__} {item!r}; {KEYED_HINT}"
            )
            err.__cause__ = exc
            return err
    if item.__class__ is tuple and len(item) == 2:
        msg = (
            f"step {step.shown} requires `str` keys in `(key, value)` from upstream; "
            f"got a `{type(item[0]).__name__}` instead: {item!r}; {KEYED_HINT}"
        )
    else:
        msg = (
            f"step {step.shown} requires `(key, value)` 2-tuple from upstream for routing; "
            f"got a `{type(item).__name__}` instead: {item!r}; {KEYED_HINT}"
        )
    cause = TypeError(msg)
    err = NotKeyedError(msg)
    err.__cause__ = cause
    return err


class NotKeyedError(BytewaxRuntimeError, TypeError):
    """A keyed step got an item that is not a ``(str, value)`` pair.

    Bytewax raises a `TypeError` here (the API reference promises one);
    Headrace's runtime errors are `BytewaxRuntimeError`: this is both.
    """
