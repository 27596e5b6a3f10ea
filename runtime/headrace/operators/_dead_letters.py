"""Error policies of user functions: fail, skip, or send the item to the dead letters.

Where this sits: an operator called with ``on_error="skip"`` or
``on_error="dead_letter"`` (`map`, `filter`, `filter_map`, `flat_map`,
`stateful_map`, `stateful_flat_map`, `stateful`, the window aggregations'
folders, the Kafka ``deserialize*`` operators) wraps its user function here,
once, when the dataflow is built. ``on_error="fail"`` (the default) builds
exactly the steps it always built: no wrapper, no cost per item, Bytewax's
errors.

A wrapped function catches the exception of one item, counts it
(``headrace_step_errors_total{step_id,policy}``), logs it at most once per
step every `LOG_EVERY_SECONDS` (with the count of failures not logged), and
then either drops the item (``skip``) or puts a `_Failure` marker in the
step's own output in its place (``dead_letter``). A split right after the
step (`split_failures`) takes the markers off into the step's dead-letter
stream, which is registered on the dataflow; `dead_letters` merges every dead-letter stream
of the flow declared before it, stamps each marker with the epoch it was
made in and turns it into a `headrace.errors.DeadLetter`. The dead letters
are therefore an ordinary stream of the epoch: they reach the sink the user
sends them to exactly as durably as the flow's other output.
"""

from __future__ import annotations

import logging
import operator as operator_
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, get_args

from headrace.dataflow import _BUILD, Dataflow, Stream, operator
from headrace.errors import DeadLetter, ErrorPolicy
from headrace.operators._core import _fusable, flat_map_batch, inspect_debug, merge

X = TypeVar("X")

POLICIES: tuple[str, ...] = get_args(ErrorPolicy)

# At most one log line per step in this many seconds (each says how many
# failures it did not log).
LOG_EVERY_SECONDS = 10.0

# Frames of the traceback kept in a dead letter (the innermost ones).
TRACEBACK_FRAMES = 4

log = logging.getLogger("headrace.operators")

# The dead-letter streams of each dataflow, in declaration order.
_REGISTRY: weakref.WeakKeyDictionary[Dataflow, list[str]] = weakref.WeakKeyDictionary()


def check_policy(step_id: str, on_error: object) -> str:
    """Return ``on_error`` if it names a policy; else raise `ValueError` listing them.

    >>> check_policy("f.m", "skip")
    'skip'
    >>> check_policy("f.m", "ignore")
    Traceback (most recent call last):
    ...
    ValueError: step 'f.m': `on_error` must be 'fail', 'skip' or 'dead_letter'; got 'ignore'
    """
    if on_error not in POLICIES:
        msg = f"step {step_id!r}: `on_error` must be 'fail', 'skip' or 'dead_letter'; got {on_error!r}"
        raise ValueError(msg)
    return str(on_error)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class _Failure:
    """A failed item in a step's output, until `dead_letters` makes it a `DeadLetter`.

    Made where the item failed (the exception itself is not kept: a dead
    letter may cross to another process); ``key`` and ``epoch`` are filled
    in on the way to `dead_letters`.

    >>> f = _Failure("f.m", 3, ZeroDivisionError("division by zero"))
    >>> f.epoch = 2
    >>> f.record()
    DeadLetter(step_id='f.m', item=3, key=None, exc_type='ZeroDivisionError', \
message='division by zero', traceback='ZeroDivisionError: division by zero\\n', epoch=2)
    """

    __slots__ = ("epoch", "exc_type", "item", "key", "message", "step_id", "traceback")

    def __init__(self, step_id: str, item: Any, exc: BaseException, key: str | None = None) -> None:
        self.step_id = step_id
        self.item = item
        self.key = key
        self.exc_type = _type_name(exc)
        self.message = str(exc)
        self.traceback = "".join(
            traceback.format_exception(
                type(exc), exc, exc.__traceback__, limit=-TRACEBACK_FRAMES, chain=False
            )
        )
        self.epoch = 0

    def record(self) -> DeadLetter:
        """The `DeadLetter` this failure becomes."""
        return DeadLetter(
            self.step_id, self.item, self.key, self.exc_type, self.message, self.traceback, self.epoch
        )


class Reporter:
    """What one step does with a failed item under its policy: count, log, and drop or mark it.

    Shared by the step's workers in one process; only failures take its lock.

    >>> r = Reporter("doc.m", "skip")
    >>> r.failed(1, ValueError("bad"))
    ()
    >>> [type(f).__name__ for f in Reporter("doc.m", "dead_letter").failed(1, ValueError("bad"))]
    ['_Failure']
    """

    def __init__(self, step_id: str, policy: str) -> None:
        self.step_id = step_id
        self.policy = policy
        self._lock = threading.Lock()
        self._next_log = 0.0
        self._unlogged = 0
        # The series exists (at 0) from the start: a first failure is then an increase.
        from headrace._metrics import M

        self._counter = M["headrace_step_errors_total"].labels(step_id, policy)

    def failed(self, item: Any, exc: BaseException, key: str | None = None) -> tuple[_Failure, ...]:
        """Count and maybe log the failure of ``item`` (of ``key``); what the step emits instead of it."""
        self._counter.inc()
        now = time.monotonic()
        with self._lock:
            if now < self._next_log:
                self._unlogged += 1
                unlogged = -1
            else:
                unlogged, self._unlogged = self._unlogged, 0
                self._next_log = now + LOG_EVERY_SECONDS
        if unlogged >= 0:
            what = "skipped an item" if self.policy == "skip" else "sent an item to the dead letters"
            more = f" ({unlogged} more since the last report)" if unlogged else ""
            shown = repr(item)
            if len(shown) > 200:
                shown = shown[:200] + "..."
            log.warning(
                "step %r %s%s: %s: %s; item: %s", self.step_id, what, more, _type_name(exc), exc, shown
            )
        if self.policy == "skip":
            return ()
        return (_Failure(self.step_id, item, exc, key),)


def guard(kind: str, fn: Callable[..., Any], reporter: Reporter) -> Callable[[Any], tuple[Any, ...]]:
    """An item-level ``flat_map`` function doing what stage ``kind`` does with ``fn``, under a policy.

    It returns the item's outputs as a tuple; when ``fn`` raises, what
    ``reporter`` says instead. A ``flat_map``'s iterable is read inside, so
    an error while iterating it is the item's failure too.

    >>> g = guard("map", lambda x: 10 // x, Reporter("doc.m", "skip"))
    >>> [y for x in [1, 0, 2] for y in g(x)]
    [10, 5]
    """
    failed = reporter.failed
    if kind == "map":

        def guarded(x: Any) -> tuple[Any, ...]:
            try:
                return (fn(x),)
            except Exception as exc:
                return failed(x, exc)

    elif kind == "filter":

        def guarded(x: Any) -> tuple[Any, ...]:
            try:
                return (x,) if fn(x) else ()
            except Exception as exc:
                return failed(x, exc)

    elif kind == "filter_map":

        def guarded(x: Any) -> tuple[Any, ...]:
            try:
                y = fn(x)
            except Exception as exc:
                return failed(x, exc)
            return () if y is None else (y,)

    elif kind == "flat_map":

        def guarded(x: Any) -> tuple[Any, ...]:
            try:
                return tuple(fn(x))
            except Exception as exc:
                return failed(x, exc)

    elif kind in _VALUE_KINDS:
        return _guard_value(kind, fn, failed)
    else:  # pragma: no cover - a bug in an operator
        raise AssertionError(kind)
    return guarded


_VALUE_KINDS = frozenset({"map_value", "filter_value", "filter_map_value", "flat_map_value"})


def _guard_value(
    kind: str, fn: Callable[..., Any], failed: Callable[..., tuple[Any, ...]]
) -> Callable[[Any], tuple[Any, ...]]:
    """`guard` for the ``*_value`` stages: ``fn`` gets the value; a failure keeps the key.

    An item that is not a ``(key, value)`` pair fails as a whole (no key).

    >>> g = _guard_value("map_value", lambda v: 12 // v, Reporter("doc.mv", "dead_letter").failed)
    >>> [y for kv in [("a", 3), ("b", 0), 7] for y in g(kv)][0]
    ('a', 4)
    >>> [(f.item, f.key, f.exc_type) for kv in [("b", 0), 7] for f in g(kv)]
    [(0, 'b', 'ZeroDivisionError'), (7, None, 'TypeError')]
    """

    def guarded(kv: Any) -> tuple[Any, ...]:
        try:
            k, v = kv
        except Exception as exc:
            return failed(kv, exc)
        try:
            if kind == "map_value":
                return ((k, fn(v)),)
            if kind == "filter_value":
                return ((k, v),) if fn(v) else ()
            if kind == "filter_map_value":
                w = fn(v)
                return () if w is None else ((k, w),)
            return tuple((k, w) for w in fn(v))
        except Exception as exc:
            return failed(v, exc, k)

    return guarded


def guarded_stateless(up: Stream[Any], kind: str, fn: Callable[..., Any], policy: str) -> Stream[Any]:
    """Build, inside an operator's body, stage ``kind`` of ``fn`` under ``policy`` (not ``fail``).

    One fusable ``flat_map`` step (so a chain still runs as one loop), then,
    for ``dead_letter``, the split of failures off into the dead letters.
    """
    step = up._scope.parent_id
    g = guard(kind, fn, Reporter(step, policy))
    out = flat_map_batch(
        "flat_map_batch", up, _fusable("flat_map", g, lambda xs: [y for x in xs for y in g(x)])
    )
    return split_failures(out, keyed=False) if policy == "dead_letter" else out


def split_failures(stream: Stream[X], keyed: bool, step: str | None = None) -> Stream[X]:
    """Split ``_Failure`` markers (or ``(key, marker)`` pairs) off ``stream`` into the flow's dead letters.

    Call it inside an operator's body (``step``: the operator whose
    failures they are, by default that one); returns the items that did
    not fail. Two steps read ``stream``: the dead letters' (declared first,
    so it reads each batch first) and the passing items'. Each scans a
    batch for a failure in C (``_Failure in map(type, ...)``); a batch
    without one passes on as it is, with no loop in Python.
    """
    step = step or stream._scope.parent_id
    kinds: Callable[[list[Any]], Any]
    if keyed:
        second = operator_.itemgetter(1)

        def kinds(xs: list[Any]) -> Any:
            return map(type, map(second, xs))

        def failed(xs: list[Any]) -> list[Any]:
            return [x for x in xs if x[1].__class__ is _Failure] if _Failure in kinds(xs) else []

        def passed(xs: list[Any]) -> list[Any]:
            return [x for x in xs if x[1].__class__ is not _Failure] if _Failure in kinds(xs) else xs

    else:

        def kinds(xs: list[Any]) -> Any:
            return map(type, xs)

        def failed(xs: list[Any]) -> list[Any]:
            return [x for x in xs if x.__class__ is _Failure] if _Failure in kinds(xs) else []

        def passed(xs: list[Any]) -> list[Any]:
            return [x for x in xs if x.__class__ is not _Failure] if _Failure in kinds(xs) else xs

    # Read by the planner: a dead-letter stream nobody reads is a build error.
    failed._headrace_dead_letters = step  # type: ignore[attr-defined]
    dead = flat_map_batch("dead_letter_split", stream, failed)
    _REGISTRY.setdefault(stream.flow(), []).append(dead.stream_id)
    return flat_map_batch("dead_letter_pass", stream, passed)


def _stamp(_step_id: str, item: Any, epoch: int, _worker: int) -> None:
    """Fill in a failure's key and the epoch it failed in (the inspector of `dead_letters`)."""
    if item.__class__ is tuple:
        key, item = item
        item.key = key
    item.epoch = epoch


def _records(batch: list[Any]) -> list[DeadLetter]:
    return [(x[1] if x.__class__ is tuple else x).record() for x in batch]


@operator
def dead_letters(step_id: str, flow: Dataflow) -> Stream[DeadLetter]:
    """The dead letters of every step declared before this one with ``on_error="dead_letter"``.

    Each is a `headrace.errors.DeadLetter`: the item, the step, the key (of
    a keyed step), the exception's type, message and last frames, and the
    epoch. Send them to any output: they are part of their epoch, as durable
    as the flow's other output.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out, bad = [], []
    >>> s = op.map("parse", op.input("i", flow, TestingSource(["1", "x", "3"])), int,
    ...            on_error="dead_letter")
    >>> op.output("o", s, TestingSink(out))
    >>> op.output("dl", op.dead_letters("errors", flow), TestingSink(bad))
    >>> run_main(flow); out
    [1, 3]
    >>> [(d.step_id, d.item, d.exc_type, d.message, d.epoch) for d in bad]
    [('d.parse', 'x', 'ValueError', "invalid literal for int() with base 10: 'x'", 1)]
    """
    ids = _REGISTRY.get(flow, [])
    if not ids:
        msg = (
            f'step {step_id!r}: no step declared before it has `on_error="dead_letter"`; '
            "declare `dead_letters` after the steps whose dead letters it collects"
        )
        raise ValueError(msg)
    scope = _BUILD.stack[-1][1]
    failures = merge("merge", *(Stream(sid, scope) for sid in ids))
    stamped = inspect_debug("epoch", failures, _stamp)
    return flat_map_batch("record", stamped, _records)


# Failures of user functions that have no output of their own (a window's
# folder returns an accumulator), per worker thread, until the step's logic
# call that made them returns and `_DrainingLogic` emits them.
_PENDING = threading.local()


def _pending() -> list[_Failure]:
    pending: list[_Failure] | None = getattr(_PENDING, "failures", None)
    if pending is None:
        pending = _PENDING.failures = []
    return pending


class GuardedFolder:
    """A folder (``folder(acc, value) -> acc``) under an error policy: a value it raises on leaves ``acc``.

    Under ``dead_letter`` the failure waits on this thread until the step's
    logic call returns (see `DrainingBuilder`).

    >>> f = GuardedFolder(lambda acc, v: acc + 12 // v, Reporter("doc.w", "skip"))
    >>> f(f(f(0, 1), 0), 6)
    14
    """

    __slots__ = ("folder", "reporter")

    def __init__(self, folder: Callable[[Any, Any], Any], reporter: Reporter) -> None:
        self.folder = folder
        self.reporter = reporter

    def __call__(self, acc: Any, value: Any) -> Any:
        try:
            return self.folder(acc, value)
        except Exception as exc:
            failures = self.reporter.failed(value, exc)
            if failures:
                _pending().extend(failures)
            return acc


class _DrainingLogic:
    """A stateful step's per-key logic that also emits the failures its calls left pending."""

    __slots__ = ("event", "inner")

    def __init__(self, inner: Any, event: Callable[[_Failure], Any]) -> None:
        self.inner = inner
        self.event = event

    def _drain(self, ret: tuple[Iterable[Any], bool]) -> tuple[Iterable[Any], bool]:
        pending = _pending()
        if not pending:
            return ret
        out, discard = ret
        out = [*out, *(self.event(f) for f in pending)]
        pending.clear()
        return out, discard

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        return self._drain(self.inner.on_batch(values))

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        return self._drain(self.inner.on_notify())

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        return self._drain(self.inner.on_eof())

    def notify_at(self) -> Any:
        return self.inner.notify_at()

    def snapshot(self) -> Any:
        return self.inner.snapshot()


class DrainingBuilder:
    """A `stateful_batch` builder whose logic emits ``event(failure)`` for each pending failure.

    It offers the engine no combiner: values are folded on the worker that
    owns their key, inside a logic call, so each failure leaves in that
    call's output, in its epoch.

    >>> b = DrainingBuilder(lambda resume: None, lambda f: f)
    >>> hasattr(b, "precombiner")
    False
    """

    __slots__ = ("builder", "event")

    def __init__(self, builder: Callable[[Any], Any], event: Callable[[_Failure], Any]) -> None:
        self.builder = builder
        self.event = event

    def __call__(self, resume: Any) -> _DrainingLogic:
        return _DrainingLogic(self.builder(resume), self.event)
