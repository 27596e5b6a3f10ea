"""The core operators: the only steps the engine runs directly.

Every other operator is composed from these. Stateless item-level operators
(`map`, `filter`...) are `flat_map_batch` steps whose mapper carries a
*fusion hint* (`_fusable`): the engine may then compile a chain of them
into a single loop over the batch, while the step tree stays the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from headrace.dataflow import Dataflow, Stream, _core_step, f_repr, operator
from headrace.inputs import DynamicSource, FixedPartitionedSource, Source
from headrace.outputs import DynamicSink, FixedPartitionedSink, Sink

X = TypeVar("X")
Y = TypeVar("Y")
V = TypeVar("V")
W = TypeVar("W")
S = TypeVar("S")

# Item-level stage kinds the engine knows how to fuse.
FUSABLE_KINDS = frozenset(
    {
        "map",
        "filter",
        "filter_map",
        "flat_map",
        "map_value",
        "filter_value",
        "filter_map_value",
        "flat_map_value",
        "key_on",
        "key_rm",
    }
)


def _fusable(kind: str, fn: Callable[..., Any], batch_fn: Callable[[list[Any]], Any]) -> Any:
    """Tag a batch function with the item-level stage it implements."""
    assert kind in FUSABLE_KINDS
    batch_fn._fusable = (kind, fn)  # type: ignore[attr-defined]
    return batch_fn


class _ReduceCombiner:
    """The values of each key bound for one worker, reduced as they are buffered.

    >>> c = _ReduceCombiner(lambda a, b: a + b)
    >>> c.add("k", [1, 2]); c.add("j", [5]); c.add("k", [3]); c.take()
    {'k': [6], 'j': [5]}
    >>> c.take()
    {}
    """

    __slots__ = ("_accs", "_reducer")

    def __init__(self, reducer: Callable[[Any, Any], Any]) -> None:
        self._reducer = reducer
        self._accs: dict[str, Any] = {}

    def add(self, key: str, values: list[Any]) -> None:
        """Reduce ``values`` (non-empty) into ``key``'s partial result."""
        accs = self._accs
        acc = accs.get(key, _NONE)
        if acc is _NONE:
            accs[key] = functools.reduce(self._reducer, values)
        else:
            accs[key] = functools.reduce(self._reducer, values, acc)

    def take(self) -> dict[str, list[Any]]:
        """Each key's partial result since the last call, and start over."""
        accs = self._accs
        self._accs = {}
        return {k: [acc] for k, acc in accs.items()}


_NONE = object()


def _combinable(builder: Any, reducer: Callable[[Any, Any], Any]) -> Any:
    """Tag a `stateful_batch` builder whose logic only reduces each key's values with ``reducer``.

    The engine may then pre-reduce a key's values before sending them to the
    worker that owns the key (a combiner), which cuts what crosses the
    network; the owner reduces the partial results again, so the result is
    the same for an associative ``reducer``. The tag is the engine's one
    combiner hook: ``builder.precombiner(consumed)`` returns a factory of
    combiners (objects with ``add(key, values)`` and ``take()``, one per
    destination worker), or None (see `windowing._spec`'s
    `_WindowSpec.precombiner` for the other user).

    >>> b = _combinable(lambda resume: None, lambda a, b: a + b)
    >>> c = b.precombiner(lambda stream_id: False)()
    >>> c.add("k", [1, 2, 3]); c.take()
    {'k': [6]}
    """
    builder.precombiner = lambda consumed: functools.partial(_ReduceCombiner, reducer)
    return builder


def _check_callable(step_id: str, name: str, fn: object) -> None:
    if not callable(fn):
        msg = f"step {step_id!r}: `{name}` must be callable; got {type(fn).__name__} {fn!r}"
        raise TypeError(msg)


@dataclass(frozen=True)
class BranchOut(Generic[X, Y]):
    """The two streams of `branch`: items the predicate accepted, and the rest.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d")
    >>> b = op.branch("even", op.input("i", flow, TestingSource([1, 2, 3])), lambda x: x % 2 == 0)
    >>> evens, odds = [], []
    >>> op.output("e", b.trues, TestingSink(evens)); op.output("o", b.falses, TestingSink(odds))
    >>> run_main(flow); evens, odds
    ([2], [1, 3])
    """

    trues: Stream[X]
    falses: Stream[Y]


@operator(_core=True)
def input(step_id: str, flow: Dataflow, source: Source[X]) -> Stream[X]:
    """Introduce items from a source into the dataflow.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource
    >>> flow = Dataflow("d")
    >>> op.input("inp", flow, TestingSource([1, 2])).stream_id
    'd.inp.down'
    """
    if not isinstance(source, FixedPartitionedSource | DynamicSource):
        msg = (
            f"step {step_id!r}: `input` needs a FixedPartitionedSource or DynamicSource; "
            f"got {type(source).__name__}"
        )
        raise TypeError(msg)
    return _core_step("input", {"source": source})[0]


@operator(_core=True)
def output(step_id: str, up: Stream[X], sink: Sink[X]) -> None:
    """Write a stream's items to a sink.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> op.output("out", op.input("i", flow, TestingSource(["a"])), TestingSink(out))
    >>> run_main(flow); out
    ['a']
    """
    if not isinstance(sink, FixedPartitionedSink | DynamicSink):
        msg = (
            f"step {step_id!r}: `output` needs a FixedPartitionedSink or DynamicSink; "
            f"got {type(sink).__name__}"
        )
        raise TypeError(msg)
    _core_step("output", {"sink": sink}, ())


@operator(_core=True)
def flat_map_batch(step_id: str, up: Stream[X], mapper: Callable[[list[X]], Iterable[Y]]) -> Stream[Y]:
    """Transform a whole batch of items into any number of items.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource([1, 2, 3], batch_size=3))
    >>> op.output("o", op.flat_map_batch("sum", s, lambda xs: [sum(xs)]), TestingSink(out))
    >>> run_main(flow); out
    [6]
    """
    _check_callable(step_id, "mapper", mapper)
    return _core_step("flat_map_batch", {"mapper": mapper})[0]


@operator(_core=True)
def branch(step_id: str, up: Stream[X], predicate: Callable[[X], bool]) -> BranchOut[X, X]:
    """Split a stream in two by a predicate.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource
    >>> flow = Dataflow("d")
    >>> b = op.branch("b", op.input("i", flow, TestingSource([1])), bool)
    >>> b.trues.stream_id, b.falses.stream_id
    ('d.b.trues', 'd.b.falses')
    """
    _check_callable(step_id, "predicate", predicate)
    trues, falses = _core_step("branch", {"predicate": predicate}, ("trues", "falses"))
    return BranchOut(trues, falses)


@operator(_core=True)
def merge(step_id: str, *ups: Stream[Any]) -> Stream[Any]:
    """Combine several streams into one.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> a = op.input("a", flow, TestingSource([1])); b = op.input("b", flow, TestingSource([2]))
    >>> op.output("o", op.merge("m", a, b), TestingSink(out)); run_main(flow); sorted(out)
    [1, 2]
    """
    return _core_step("merge", {})[0]


@operator(_core=True)
def redistribute(step_id: str, up: Stream[X]) -> Stream[X]:
    """Spread items round-robin over all workers (to balance uneven sources).

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.redistribute("r", op.input("i", flow, TestingSource([1, 2])))
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [1, 2]
    """
    return _core_step("redistribute", {})[0]


@operator(_core=True)
def inspect_debug(
    step_id: str,
    up: Stream[X],
    inspector: Callable[[str, X, int, int], None] | None = None,
) -> Stream[X]:
    """Call ``inspector(step_id, item, epoch, worker_index)`` on each item.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.inspect_debug("dbg", op.input("i", flow, TestingSource(["x"])))
    >>> op.output("o", s, TestingSink(out)); run_main(flow)
    d.dbg W0 @1: 'x'
    """
    if inspector is None:
        inspector = _default_debug_inspector
    _check_callable(step_id, "inspector", inspector)
    return _core_step("inspect_debug", {"inspector": inspector})[0]


def _default_debug_inspector(step_id: str, item: Any, epoch: int, worker_idx: int) -> None:
    print(f"{step_id} W{worker_idx} @{epoch}: {item!r}", flush=True)


class StatefulBatchLogic(Generic[V, W, S]):
    """Per-key logic of `stateful_batch`: handles a batch of values for one key.

    Each method returns ``(outputs, discard)``; ``discard=True`` drops this
    key's logic (its state is gone; a new item builds a fresh one).

    >>> class Sum(StatefulBatchLogic):
    ...     def __init__(self, s): self.s = s or 0
    ...     def on_batch(self, values):
    ...         self.s += sum(values); return [self.s], False
    ...     def snapshot(self): return self.s
    >>> Sum(None).on_batch([1, 2])
    ([3], False)
    """

    RETAIN: bool = False
    DISCARD: bool = True

    def on_batch(self, values: list[V]) -> tuple[Iterable[W], bool]:
        """Handle the values that arrived for this key in one batch.

        >>> class Echo(StatefulBatchLogic):
        ...     def on_batch(self, values): return values, False
        ...     def snapshot(self): return None
        >>> Echo().on_batch([1])
        ([1], False)
        """
        raise NotImplementedError

    def on_notify(self) -> tuple[Iterable[W], bool]:
        """Called once the time from `notify_at` has passed.

        >>> StatefulBatchLogic().on_notify()
        ([], False)
        """
        return [], False

    def on_eof(self) -> tuple[Iterable[W], bool]:
        """Called when the input ends (every upstream worker reached EOF).

        >>> StatefulBatchLogic().on_eof()
        ([], False)
        """
        return [], False

    def notify_at(self) -> Any:
        """Return a tz-aware `datetime` to be called back at, or ``None``.

        >>> StatefulBatchLogic().notify_at() is None
        True
        """
        return None

    def snapshot(self) -> S:
        """Return this key's state, pickleable, for recovery.

        >>> class L(StatefulBatchLogic):
        ...     def snapshot(self): return {"n": 1}
        >>> L().snapshot()
        {'n': 1}
        """
        raise NotImplementedError


@operator(_core=True)
def stateful_batch(
    step_id: str,
    up: Stream[tuple[str, V]],
    builder: Callable[[S | None], StatefulBatchLogic[V, W, S]],
    *,
    ttl: timedelta | None = None,
) -> Stream[tuple[str, W]]:
    """The core stateful operator: per-key logic over batches of values.

    Items must be ``(key, value)`` with a `str` key. ``builder(resume_state)``
    builds the logic for a key (``None`` for a new key).

    ``ttl`` (Headrace's own): a key that gets no value for that long
    (processing time) is dropped, logic, timers and stored state, without
    output; its next value starts it anew. The other stateful operators
    pass their ``ttl`` here.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> class Count(StatefulBatchLogic):
    ...     def __init__(self, s): self.n = s or 0
    ...     def on_batch(self, vs): self.n += len(vs); return [self.n], False
    ...     def snapshot(self): return self.n
    >>> flow = Dataflow("d"); out = []
    >>> s = op.input("i", flow, TestingSource([("a", 1), ("a", 1)], batch_size=2))
    >>> op.output("o", op.stateful_batch("c", s, Count), TestingSink(out)); run_main(flow); out
    [('a', 2)]
    """
    _check_callable(step_id, "builder", builder)
    if ttl is None:
        return _core_step("stateful_batch", {"builder": builder})[0]
    if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
        msg = f"step {step_id!r}: `ttl` must be a positive timedelta or None; got {ttl!r}"
        raise ValueError(msg)
    return _core_step("stateful_batch", {"builder": builder, "ttl": ttl})[0]


@operator(_core=True)
def _noop(step_id: str, up: Stream[X]) -> Stream[X]:
    """Pass items through unchanged (used to give a stream a new port).

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource
    >>> flow = Dataflow("d")
    >>> _noop("n", op.input("i", flow, TestingSource([1]))).stream_id
    'd.n.down'
    """
    return _core_step("noop", {})[0]


def _describe(fn: Callable[..., Any]) -> str:
    return f_repr(fn)
