"""Stateful operators, composed from the core `stateful_batch`.

State lives per key on the worker that owns the key's key group; every
logic object here snapshots plain, pickleable values.

Size: ~800 lines, the limit: Bytewax's stateful operator family (eleven
public operators, each with its executed example, and their logic classes)
reads best in one place; the TTL and error-policy wrappers are the part to
move out if it grows.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

from headrace.dataflow import Stream, _bytewax_nesting, _current_display_id, f_repr, operator
from headrace.errors import ErrorPolicy
from headrace.inputs import _utc_now
from headrace.operators._core import (
    StatefulBatchLogic,
    _check_callable,
    _combinable,
    merge,
    stateful_batch,
)
from headrace.operators._dead_letters import Reporter, check_policy, split_failures
from headrace.operators._stateless import _identity, key_on, map, map_value

V = TypeVar("V")
W = TypeVar("W")
S = TypeVar("S")
X = TypeVar("X")

JoinInsertMode = Literal["first", "last", "product"]
JoinEmitMode = Literal["complete", "final", "running"]


class StatefulLogic(Generic[V, W, S]):
    """Per-key logic of `stateful`: one value at a time.

    >>> class Count(StatefulLogic):
    ...     def __init__(self, s): self.n = s or 0
    ...     def on_item(self, v): self.n += 1; return [self.n], StatefulLogic.RETAIN
    ...     def snapshot(self): return self.n
    >>> Count(None).on_item("x")
    ([1], False)
    """

    RETAIN: bool = False
    DISCARD: bool = True

    def on_item(self, value: V) -> tuple[Iterable[W], bool]:
        """Handle one value; return ``(outputs, discard)``.

        >>> class Echo(StatefulLogic):
        ...     def on_item(self, v): return [v], False
        ...     def snapshot(self): return None
        >>> Echo().on_item(1)
        ([1], False)
        """
        raise NotImplementedError

    def on_notify(self) -> tuple[Iterable[W], bool]:
        """Called once the time from `notify_at` has passed.

        >>> StatefulLogic().on_notify()
        ([], False)
        """
        return [], False

    def on_eof(self) -> tuple[Iterable[W], bool]:
        """Called at the end of input.

        >>> StatefulLogic().on_eof()
        ([], False)
        """
        return [], False

    def notify_at(self) -> datetime | None:
        """A tz-aware time to call `on_notify` at, or ``None``.

        >>> StatefulLogic().notify_at() is None
        True
        """
        return None

    def snapshot(self) -> S:
        """This key's state for recovery.

        >>> class L(StatefulLogic):
        ...     def snapshot(self): return 3
        >>> L().snapshot()
        3
        """
        raise NotImplementedError


class _ItemShim(StatefulBatchLogic[V, W, S]):
    """Runs a `StatefulLogic` one value at a time inside a batch."""

    __slots__ = ("builder", "logic")

    def __init__(self, builder: Callable[[S | None], StatefulLogic[V, W, S]], resume: S | None):
        self.builder = builder
        self.logic: StatefulLogic[V, W, S] | None = builder(resume)

    def on_batch(self, values: list[V]) -> tuple[Iterable[W], bool]:
        out: list[W] = []
        for v in values:
            if self.logic is None:
                self.logic = self.builder(None)
            ws, discard = self.logic.on_item(v)
            out.extend(ws)
            if discard:
                self.logic = None
        return out, self.logic is None

    def on_notify(self) -> tuple[Iterable[W], bool]:
        assert self.logic is not None
        return self.logic.on_notify()

    def on_eof(self) -> tuple[Iterable[W], bool]:
        assert self.logic is not None
        return self.logic.on_eof()

    def notify_at(self) -> datetime | None:
        return None if self.logic is None else self.logic.notify_at()

    def snapshot(self) -> S:
        assert self.logic is not None
        return self.logic.snapshot()


class _GuardedItemShim(_ItemShim[V, W, S]):
    """`_ItemShim` under an error policy: a value whose ``on_item`` raises is reported, not fatal."""

    __slots__ = ("reporter",)

    def __init__(
        self, builder: Callable[[S | None], StatefulLogic[V, W, S]], reporter: Reporter, resume: S | None
    ):
        super().__init__(builder, resume)
        self.reporter = reporter

    def on_batch(self, values: list[V]) -> tuple[Iterable[W], bool]:
        out: list[Any] = []
        for v in values:
            if self.logic is None:
                self.logic = self.builder(None)
            try:
                ws, discard = self.logic.on_item(v)
                out.extend(ws)
            except Exception as exc:
                out.extend(self.reporter.failed(v, exc))
                continue
            if discard:
                self.logic = None
        return out, self.logic is None


@operator
def stateful(
    step_id: str,
    up: Stream[tuple[str, V]],
    builder: Callable[[S | None], StatefulLogic[V, W, S]],
    *,
    on_error: ErrorPolicy = "fail",
    ttl: timedelta | None = None,
) -> Stream[tuple[str, W]]:
    """Run per-key `StatefulLogic` with timers, EOF handling and snapshots.

    ``ttl``: a key that gets no value for that long is dropped (see `stateful_batch`).

    ``on_error`` applies to ``on_item`` (as for `map`; the dead letter has
    the key); a failing ``on_notify``, ``on_eof`` or builder stops the run.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> class Running(StatefulLogic):
    ...     def __init__(self, s): self.total = s or 0
    ...     def on_item(self, v): self.total += v; return [self.total], False
    ...     def snapshot(self): return self.total
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource([("a", 1), ("a", 2)]))
    >>> op.output("o", op.stateful("sum", s, Running), TestingSink(out)); run_main(flow); out
    [('a', 1), ('a', 3)]
    """
    _check_callable(step_id, "builder", builder)
    policy = check_policy(up._scope.parent_id, on_error)
    if policy == "fail":
        return stateful_batch("stateful_batch", up, lambda resume: _ItemShim(builder, resume), ttl=ttl)
    reporter = Reporter(up._scope.parent_id, policy)
    out = stateful_batch(
        "stateful_batch", up, lambda resume: _GuardedItemShim(builder, reporter, resume), ttl=ttl
    )
    return split_failures(out, keyed=True) if policy == "dead_letter" else out


def _bad_tuple(mapper: Callable[..., Any], step_id: str, ret: Any, what: str) -> TypeError:
    size = f" of length {len(ret)}" if isinstance(ret, tuple | list) else ""
    return TypeError(
        f"return value of `mapper` {f_repr(mapper)} in step {step_id!r} must be a 2-tuple "
        f"of `(updated_state, {what})`; got a {type(ret)}{size} instead"
    )


class _MapLogic(StatefulBatchLogic[V, W, S]):
    __slots__ = ("flat", "mapper", "state", "step_id")

    def __init__(
        self, mapper: Callable[[S | None, V], Any], step_id: str, flat: bool, state: S | None
    ) -> None:
        self.mapper = mapper
        self.step_id = step_id
        self.flat = flat
        self.state = state

    def on_batch(self, values: list[V]) -> tuple[Iterable[W], bool]:
        mapper = self.mapper
        state = self.state
        out: list[Any] = []
        emit = out.extend if self.flat else out.append
        for v in values:
            ret = mapper(state, v)
            # Any 2-item iterable unpacks (a `[state, out]` list works, as in Bytewax).
            try:
                state, w = ret
            except (TypeError, ValueError) as exc:
                what = "emit_values" if self.flat else "emit_value"
                raise _bad_tuple(mapper, self.step_id, ret, what) from exc
            emit(w)
        self.state = state
        return out, state is None

    def snapshot(self) -> S:
        return self.state  # type: ignore[return-value]


class _GuardedMapLogic(_MapLogic[V, W, S]):
    """`_MapLogic` under an error policy: a value the mapper raises on leaves the state as it was."""

    __slots__ = ("reporter",)

    def __init__(
        self,
        mapper: Callable[[S | None, V], Any],
        step_id: str,
        flat: bool,
        reporter: Reporter,
        state: S | None,
    ) -> None:
        super().__init__(mapper, step_id, flat, state)
        self.reporter = reporter

    def on_batch(self, values: list[V]) -> tuple[Iterable[W], bool]:
        mapper = self.mapper
        state = self.state
        out: list[Any] = []
        flat = self.flat
        for v in values:
            try:
                ret = mapper(state, v)
                try:
                    new_state, w = ret
                except (TypeError, ValueError) as exc:
                    what = "emit_values" if flat else "emit_value"
                    raise _bad_tuple(mapper, self.step_id, ret, what) from exc
                ws = list(w) if flat else [w]
            except Exception as exc:
                out.extend(self.reporter.failed(v, exc))
                continue
            state = new_state
            out.extend(ws)
        self.state = state
        return out, state is None


def _map_logic(
    mapper: Callable[..., Any], step_id: str, flat: bool, on_error: object
) -> tuple[Callable[[Any], StatefulBatchLogic[Any, Any, Any]], str]:
    """`stateful_map`'s (``flat``: `stateful_flat_map`'s) logic builder under ``on_error``; the policy."""
    policy = check_policy(step_id, on_error)
    if policy == "fail":
        return _makes(_MapLogic, lambda resume: _MapLogic(mapper, step_id, flat, resume)), policy
    reporter = Reporter(step_id, policy)
    return _makes(
        _GuardedMapLogic, lambda resume: _GuardedMapLogic(mapper, step_id, flat, reporter, resume)
    ), policy


def _makes(cls: type, builder: Any) -> Any:
    """Tag a builder that does nothing but make a ``cls`` of the state: the engine may call it later.

    (A resumed step builds a restored key's logic at the key's first use,
    `_engine._stateful_run.StatefulRun.restore`, when ``cls`` sets no timers
    and has no `on_eof` of its own.)

    >>> _makes(_MapLogic, lambda resume: None)._headrace_logic.__name__
    '_MapLogic'
    """
    builder._headrace_logic = cls
    return builder


@operator
def stateful_map(
    step_id: str,
    up: Stream[tuple[str, V]],
    mapper: Callable[[S | None, V], tuple[S | None, W]],
    *,
    on_error: ErrorPolicy = "fail",
    ttl: timedelta | None = None,
) -> Stream[tuple[str, W]]:
    """Per-key map with state: ``mapper(state, value) -> (new_state, out)``.

    ``state`` is ``None`` for a new key; returning ``None`` as the new state
    forgets the key. ``on_error``: as for `map`; a value the mapper raises
    on leaves the key's state as it was, and its dead letter has the key.
    ``ttl``: a key that gets no value for that long is forgotten too (see
    `stateful_batch`); its next value sees ``None``.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> def running_sum(s, v):
    ...     s = (s or 0) + v
    ...     return s, s
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource([("a", 1), ("b", 5), ("a", 2)]))
    >>> op.output("o", op.stateful_map("sum", s, running_sum), TestingSink(out))
    >>> run_main(flow); out
    [('a', 1), ('b', 5), ('a', 3)]
    """
    _check_callable(step_id, "mapper", mapper)
    full = up._scope.parent_id
    builder, policy = _map_logic(mapper, full, False, on_error)
    with _bytewax_nesting("stateful_flat_map", "stateful"):
        out = stateful_batch("stateful_batch", up, builder, ttl=ttl)
    return split_failures(out, keyed=True) if policy == "dead_letter" else out


@operator
def stateful_flat_map(
    step_id: str,
    up: Stream[tuple[str, V]],
    mapper: Callable[[S | None, V], tuple[S | None, Iterable[W]]],
    *,
    on_error: ErrorPolicy = "fail",
    ttl: timedelta | None = None,
) -> Stream[tuple[str, W]]:
    """Like `stateful_map`, but the mapper emits an iterable of outputs.

    ``on_error``: as for `stateful_map` (an error while iterating the
    outputs is the value's too; none of them is kept).

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> def dedupe(seen, v):
    ...     seen = seen or set()
    ...     if v in seen:
    ...         return seen, []
    ...     seen.add(v); return seen, [v]
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource([("a", 1), ("a", 1), ("a", 2)]))
    >>> op.output("o", op.stateful_flat_map("d", s, dedupe), TestingSink(out)); run_main(flow); out
    [('a', 1), ('a', 2)]
    """
    _check_callable(step_id, "mapper", mapper)
    full = up._scope.parent_id
    builder, policy = _map_logic(mapper, full, True, on_error)
    with _bytewax_nesting("stateful"):
        out = stateful_batch("stateful_batch", up, builder, ttl=ttl)
    return split_failures(out, keyed=True) if policy == "dead_letter" else out


_PLAIN_TYPES = frozenset({list, dict, set, tuple, int, float, str, frozenset, bytes})


def _cannot_print(fn: Any) -> bool:
    """Whether calling ``fn`` can have no effect but its result (so the order of calls is unseen).

    True for a Python function that names no global, attribute, closure
    variable or default (recursively for functions it defines): it can only
    compute with its arguments' operators. Also true for plain builtin types.

    >>> _cannot_print(lambda a, b: a + b), _cannot_print(list)
    (True, True)
    >>> _cannot_print(lambda a, b: print(a) or a + b), _cannot_print(lambda a, p=print: p(a))
    (False, False)
    """
    if fn in _PLAIN_TYPES:
        return True
    code = getattr(fn, "__code__", None)
    if code is None or getattr(fn, "__closure__", None) or getattr(fn, "__defaults__", None):
        return False
    if getattr(fn, "__kwdefaults__", None):
        return False

    def bare(c: Any) -> bool:
        return (
            not c.co_names
            and not c.co_freevars
            and all(bare(k) for k in c.co_consts if hasattr(k, "co_names"))
        )

    return bare(code)


def _unordered(builder: Any, *fns: Any) -> Any:
    """Tag a builder whose logic emits nothing per batch and whose ``fns`` can't print.

    Bytewax handles the keys of a batch in sorted order; the engine skips
    that sort for a tagged step, where the order of the calls can't be seen
    (word counts over thousands of keys per batch spent 6% sorting).

    >>> _unordered(lambda resume: None, lambda a, b: a + b)._unordered
    True
    """
    builder._unordered = all(_cannot_print(fn) for fn in fns)
    return builder


class _FoldFinalLogic(StatefulBatchLogic[V, S, S]):
    __slots__ = ("folder", "state")

    def __init__(self, folder: Callable[[S, V], S], state: S) -> None:
        self.folder = folder
        self.state = state

    def on_batch(self, values: list[V]) -> tuple[Iterable[S], bool]:
        self.state = functools.reduce(self.folder, values, self.state)
        return (), False

    def on_eof(self) -> tuple[Iterable[S], bool]:
        return (self.state,), True

    def snapshot(self) -> S:
        return self.state


@operator
def fold_final(
    step_id: str,
    up: Stream[tuple[str, V]],
    builder: Callable[[], S],
    folder: Callable[[S, V], S],
    *,
    ttl: timedelta | None = None,
) -> Stream[tuple[str, S]]:
    """Fold each key's values into an accumulator; emit it at end of input.

    ``ttl``: a key that gets no value for that long is dropped, its
    accumulator unemitted (see `stateful_batch`).

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource([("a", 1), ("a", 2), ("b", 3)]))
    >>> s = op.fold_final("f", s, list, lambda acc, v: acc + [v])
    >>> op.output("o", s, TestingSink(out)); run_main(flow); sorted(out)
    [('a', [1, 2]), ('b', [3])]
    """
    _check_callable(step_id, "builder", builder)
    _check_callable(step_id, "folder", folder)

    def build(resume: S | None) -> _FoldFinalLogic[V, S]:
        return _FoldFinalLogic(folder, builder() if resume is None else resume)

    with _bytewax_nesting("stateful"):
        return stateful_batch("stateful_batch", up, _unordered(build, builder, folder), ttl=ttl)


class _ReduceFinalLogic(StatefulBatchLogic[V, V, V]):
    __slots__ = ("has", "reducer", "state")

    def __init__(self, reducer: Callable[[V, V], V], resume: tuple[bool, Any] | None) -> None:
        self.reducer = reducer
        self.has: bool
        self.state: Any
        self.has, self.state = resume if resume is not None else (False, None)

    def on_batch(self, values: list[V]) -> tuple[Iterable[V], bool]:
        if self.has:
            self.state = functools.reduce(self.reducer, values, self.state)
        else:
            self.state = functools.reduce(self.reducer, values)
            self.has = True
        return (), False

    def on_eof(self) -> tuple[Iterable[V], bool]:
        return ((self.state,) if self.has else ()), True

    def snapshot(self) -> Any:
        return (self.has, self.state)


@operator
def reduce_final(
    step_id: str, up: Stream[tuple[str, V]], reducer: Callable[[V, V], V], *, ttl: timedelta | None = None
) -> Stream[tuple[str, V]]:
    """Combine each key's values pairwise; emit the result at end of input.

    ``ttl``: as for `fold_final`.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource([("a", 1), ("a", 2), ("b", 3)]))
    >>> op.output("o", op.reduce_final("sum", s, lambda a, b: a + b), TestingSink(out))
    >>> run_main(flow); sorted(out)
    [('a', 3), ('b', 3)]
    """
    _check_callable(step_id, "reducer", reducer)
    build = _combinable(lambda resume: _ReduceFinalLogic(reducer, resume), reducer)
    # Bytewax first groups the items by key in a `pre_reduce` step, which
    # is where an item that is not a pair fails there (see `_engine._basics.not_keyed`).
    build._bytewax_pre_reduce = _current_display_id() + ".pre_reduce"
    # The engine may keep the running values itself (`_engine._stateful_run.ReduceRun`).
    build._headrace_reducer = reducer
    with _bytewax_nesting("fold_final", "stateful"):
        return stateful_batch("stateful_batch", up, _unordered(build, reducer), ttl=ttl)


def _add(a: int, b: int) -> int:
    return a + b


@operator
def count_final(
    step_id: str, up: Stream[X], key: Callable[[X], str], *, ttl: timedelta | None = None
) -> Stream[tuple[str, int]]:
    """Count items per ``key(item)``; emit the counts at end of input.

    ``ttl``: as for `fold_final`.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource(["a", "b", "a"]))
    >>> op.output("o", op.count_final("c", s, lambda w: w), TestingSink(out))
    >>> run_main(flow); sorted(out)
    [('a', 2), ('b', 1)]
    """
    _check_callable(step_id, "key", key)
    keyed = map("init_count", up, lambda x: (key(x), 1))
    return reduce_final("sum", keyed, _add, ttl=ttl)


@operator
def max_final(
    step_id: str,
    up: Stream[tuple[str, V]],
    by: Callable[[V], Any] = _identity,
    *,
    ttl: timedelta | None = None,
) -> Stream[tuple[str, V]]:
    """Emit each key's maximum value (by ``by``) at end of input.

    ``ttl``: as for `fold_final`.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource([("a", 3), ("a", 7), ("a", 5)]))
    >>> op.output("o", op.max_final("m", s), TestingSink(out)); run_main(flow); out
    [('a', 7)]
    """
    return reduce_final("reduce_final", up, lambda a, b: b if by(b) > by(a) else a, ttl=ttl)


@operator
def min_final(
    step_id: str,
    up: Stream[tuple[str, V]],
    by: Callable[[V], Any] = _identity,
    *,
    ttl: timedelta | None = None,
) -> Stream[tuple[str, V]]:
    """Emit each key's minimum value (by ``by``) at end of input.

    ``ttl``: as for `fold_final`.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource([("a", 3), ("a", 1)]))
    >>> op.output("o", op.min_final("m", s), TestingSink(out)); run_main(flow); out
    [('a', 1)]
    """
    return reduce_final("reduce_final", up, lambda a, b: b if by(b) < by(a) else a, ttl=ttl)


class _CollectLogic(StatefulBatchLogic[V, list[V], Any]):
    __slots__ = ("deadline", "items", "max_size", "now", "timeout")

    def __init__(
        self,
        now: Callable[[], datetime],
        timeout: timedelta,
        max_size: int,
        resume: tuple[list[V], datetime | None] | None,
    ) -> None:
        self.now = now
        self.timeout = timeout
        self.max_size = max_size
        self.items, self.deadline = resume if resume is not None else ([], None)

    def on_batch(self, values: list[V]) -> tuple[Iterable[list[V]], bool]:
        out: list[list[V]] = []
        for v in values:
            self.items.append(v)
            if len(self.items) >= self.max_size:
                out.append(self.items)
                self.items = []
        # As in Bytewax, the timeout counts from the key's latest value.
        self.deadline = self.now() + self.timeout if self.items else None
        return out, not self.items

    def on_notify(self) -> tuple[Iterable[list[V]], bool]:
        items, self.items, self.deadline = self.items, [], None
        return ([items] if items else []), True

    def on_eof(self) -> tuple[Iterable[list[V]], bool]:
        return self.on_notify()

    def notify_at(self) -> datetime | None:
        return self.deadline

    def snapshot(self) -> Any:
        return (list(self.items), self.deadline)


@operator
def collect(
    step_id: str,
    up: Stream[tuple[str, V]],
    timeout: timedelta,
    max_size: int,
    _now_getter: Callable[[], datetime] = _utc_now,
) -> Stream[tuple[str, list[V]]]:
    """Gather each key's values into lists of ``max_size``, or after ``timeout``.

    A list is emitted when it is full, when ``timeout`` has passed since the
    key's latest value arrived (each value restarts the wait, as in
    Bytewax), or at end of input.

    >>> import headrace.operators as op
    >>> from datetime import timedelta
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource([("a", 1), ("a", 2), ("a", 3)]))
    >>> s = op.collect("c", s, timedelta(seconds=10), max_size=2)
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [('a', [1, 2]), ('a', [3])]
    """
    if max_size < 1:
        msg = f"step {step_id!r}: `max_size` must be >= 1; got {max_size}"
        raise ValueError(msg)
    with _bytewax_nesting("stateful"):
        return stateful_batch(
            "stateful_batch",
            up,
            lambda resume: _CollectLogic(_now_getter, timeout, max_size, resume),
        )


class _JoinState:
    """Per-key join slots: one list of values per side."""

    __slots__ = ("insert_mode", "slots")

    def __init__(self, n: int, insert_mode: str, resume: list[list[Any]] | None) -> None:
        self.insert_mode = insert_mode
        self.slots: list[list[Any]] = resume if resume is not None else [[] for _ in range(n)]

    def set(self, side: int, value: Any) -> None:
        slot = self.slots[side]
        if self.insert_mode == "last":
            slot[:] = [value]
        elif self.insert_mode == "first":
            if not slot:
                slot.append(value)
        else:
            slot.append(value)

    def is_set(self, side: int) -> bool:
        return bool(self.slots[side])

    def all_set(self) -> bool:
        return all(self.slots)

    def rows(self) -> list[tuple[Any, ...]]:
        return list(itertools.product(*[s if s else [None] for s in self.slots]))

    def clear(self) -> None:
        for s in self.slots:
            s.clear()

    def is_empty(self) -> bool:
        return not any(self.slots)

    def snapshot(self) -> list[list[Any]]:
        return [list(s) for s in self.slots]


_JOIN_INSERT_MODES = ("first", "last", "product")
_JOIN_EMIT_MODES = ("complete", "final", "running")


def _check_join_modes(step_id: str, insert_mode: str, emit_mode: str) -> None:
    if insert_mode not in _JOIN_INSERT_MODES:
        msg = f"step {step_id!r}: unknown insert_mode {insert_mode!r}; use one of {_JOIN_INSERT_MODES}"
        raise ValueError(msg)
    if emit_mode not in _JOIN_EMIT_MODES:
        msg = f"step {step_id!r}: unknown emit_mode {emit_mode!r}; use one of {_JOIN_EMIT_MODES}"
        raise ValueError(msg)


class _JoinLogic(StatefulBatchLogic[tuple[int, Any], tuple[Any, ...], Any]):
    __slots__ = ("emit_mode", "state")

    def __init__(self, n: int, insert_mode: str, emit_mode: str, resume: Any) -> None:
        self.state = _JoinState(n, insert_mode, resume)
        self.emit_mode = emit_mode

    def on_batch(self, values: list[tuple[int, Any]]) -> tuple[Iterable[tuple[Any, ...]], bool]:
        out: list[tuple[Any, ...]] = []
        state = self.state
        for side, v in values:
            state.set(side, v)
            if self.emit_mode == "complete":
                if state.all_set():
                    out.extend(state.rows())
                    state.clear()
            elif self.emit_mode == "running":
                out.extend(state.rows())
        return out, self.emit_mode == "complete" and state.is_empty()

    def on_eof(self) -> tuple[Iterable[tuple[Any, ...]], bool]:
        if self.emit_mode == "final":
            return (self.state.rows() if not self.state.is_empty() else ()), True
        # Keep partial joins: input may resume after this EOF.
        return (), False

    def snapshot(self) -> Any:
        return self.state.snapshot()


def _label_sides(sides: tuple[Stream[tuple[str, Any]], ...]) -> list[Stream[Any]]:
    return [map_value(f"label_{i}", side, lambda v, i=i: (i, v)) for i, side in enumerate(sides)]


@operator
def join(
    step_id: str,
    *sides: Stream[tuple[str, Any]],
    insert_mode: JoinInsertMode = "last",
    emit_mode: JoinEmitMode = "complete",
    ttl: timedelta | None = None,
) -> Stream[tuple[str, tuple[Any, ...]]]:
    """Join keyed streams on their keys, one slot per side.

    ``ttl``: a key that gets no value on any side for that long is dropped
    with its slots (see `stateful_batch`), e.g. a half-joined key whose
    other side never comes.

    ``insert_mode``: ``last`` (keep the newest value per side), ``first``
    (keep the first), ``product`` (keep all; emit every combination).
    ``emit_mode``: ``complete`` (emit once every side has a value, then
    clear), ``running`` (emit on every update, ``None`` for empty sides),
    ``final`` (emit at end of input).

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> names = op.input("n", flow, TestingSource([("1", "ann")]))
    >>> ages = op.input("a", flow, TestingSource([("1", 33)]))
    >>> op.output("o", op.join("j", names, ages), TestingSink(out)); run_main(flow); out
    [('1', ('ann', 33))]
    """
    _check_join_modes(step_id, insert_mode, emit_mode)
    if not sides:
        msg = f"step {step_id!r}: `join` needs at least one side"
        raise TypeError(msg)
    n = len(sides)
    # Bytewax's join is `_join_label_merge("add_names")` then `stateful("join")`.
    with _bytewax_nesting("add_names"):
        merged = merge("merge", *_label_sides(sides))
    with _bytewax_nesting("join", step_name="stateful_batch"):
        return stateful_batch(
            "join",
            merged,
            lambda resume: _JoinLogic(n, insert_mode, emit_mode, resume),
            ttl=ttl,
        )


__all__ = [
    "StatefulLogic",
    "collect",
    "count_final",
    "fold_final",
    "join",
    "key_on",
    "max_final",
    "min_final",
    "reduce_final",
    "stateful",
    "stateful_flat_map",
    "stateful_map",
]
