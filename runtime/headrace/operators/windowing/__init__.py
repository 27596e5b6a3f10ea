"""Time-based windowing operators, with the Bytewax 0.21 names and semantics.

A windowing operator needs a *clock* (what time each item belongs to, and
the per-key watermark: `SystemClock`, `EventClock`) and a *windower* (which
windows a time falls in: `TumblingWindower`, `SlidingWindower`,
`SessionWindower`). It returns a `WindowOut` of three keyed streams:
``down`` (results, sub-keyed by window id), ``late`` (items that arrived
after their window closed) and ``meta`` (a `WindowMetadata` per closed
window). Windows close when the key's watermark passes their close time,
as system time passes, and all at end of input.

>>> from datetime import datetime, timedelta, timezone
>>> from headrace.dataflow import Dataflow
>>> import headrace.operators as op
>>> import headrace.operators.windowing as win
>>> from headrace.testing import TestingSource, TestingSink, run_main
>>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
>>> clicks = [("alice", t0 + timedelta(seconds=s)) for s in (1, 2, 61, 62, 63)]
>>> flow = Dataflow("clicks_per_minute")
>>> up = op.input("inp", flow, TestingSource(clicks))
>>> clock = win.EventClock(lambda kv: kv[1], wait_for_system_duration=timedelta(seconds=5))
>>> windower = win.TumblingWindower(length=timedelta(minutes=1), align_to=t0)
>>> counts = win.count_window("count", up, clock, windower, key=lambda kv: kv[0])
>>> out = []
>>> op.output("out", counts.down, TestingSink(out))
>>> run_main(flow)
>>> out
[('alice', (0, 2)), ('alice', (1, 3))]

Inside the package, in the order an item meets them: `_clocks` and
`_windowers` (the public configuration classes and their per-key logics),
`_logic` (`WindowLogic` and the built-in operators' logics), `_spec` (a
step's configuration; picks the per-key logic), `_engine` (the general
per-key engine), `_fused` (fused loops for folds with the built-in clock and
windowers), `_combiner` (pre-folding on the sending worker), `_events` (what
the per-key logics emit and receive), and `_rules` (the watermark and
lateness rules, written once).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from headrace.dataflow import KeyedStream, Stream, _bytewax_nesting, operator
from headrace.errors import ErrorPolicy
from headrace.operators._core import (
    StatefulBatchLogic,
    _check_callable,
    flat_map_batch,
    merge,
    stateful_batch,
)
from headrace.operators._dead_letters import (
    DrainingBuilder,
    GuardedFolder,
    Reporter,
    check_policy,
    split_failures,
)
from headrace.operators._stateful import (
    JoinEmitMode,
    JoinInsertMode,
    _check_join_modes,
    join,
)
from headrace.operators._stateless import _identity, key_on, map_value
from headrace.operators.windowing._clocks import (
    UTC_MAX,
    UTC_MIN,
    ZERO_TD,
    Clock,
    ClockLogic,
    EventClock,
    SystemClock,
)
from headrace.operators.windowing._events import (
    _failed_event,
    _unwrap_down,
    _unwrap_failed,
    _unwrap_late,
    _unwrap_meta,
)
from headrace.operators.windowing._logic import (
    WindowLogic,
    WindowOut,
    _FoldBuilder,
    _JoinBuilder,
    _SideTs,
    partition,
)
from headrace.operators.windowing._spec import _WindowSpec
from headrace.operators.windowing._windowers import (
    LATE_SESSION_ID,
    SessionWindower,
    SlidingWindower,
    TumblingWindower,
    Windower,
    WindowerLogic,
    WindowMetadata,
)

__all__ = [
    "LATE_SESSION_ID",
    "UTC_MAX",
    "UTC_MIN",
    "ZERO_TD",
    "Clock",
    "ClockLogic",
    "EventClock",
    "JoinEmitMode",
    "JoinInsertMode",
    "KeyedStream",
    "SessionWindower",
    "SlidingWindower",
    "StatefulBatchLogic",
    "Stream",
    "SystemClock",
    "TumblingWindower",
    "WindowLogic",
    "WindowMetadata",
    "WindowOut",
    "Windower",
    "WindowerLogic",
    "collect_window",
    "count_window",
    "fold_window",
    "join",
    "join_window",
    "max_window",
    "min_window",
    "operator",
    "partition",
    "reduce_window",
    "window",
]

V = TypeVar("V")
W = TypeVar("W")
S = TypeVar("S")
X = TypeVar("X")
DK = TypeVar("DK")
DV = TypeVar("DV")


def _check_window_args(step_id: str, clock: object, windower: object) -> None:
    if not isinstance(clock, Clock):
        msg = (
            f"step {step_id!r}: `clock` must be a Clock (e.g. EventClock or SystemClock); "
            f"got {type(clock).__name__}"
        )
        raise TypeError(msg)
    if not isinstance(windower, Windower):
        msg = (
            f"step {step_id!r}: `windower` must be a Windower (e.g. TumblingWindower, "
            f"SlidingWindower or SessionWindower); got {type(windower).__name__}"
        )
        raise TypeError(msg)


@operator
def window(
    step_id: str,
    up: KeyedStream[V],
    clock: Clock[V, Any],
    windower: Windower[Any],
    builder: Callable[[Any], WindowLogic[V, W, Any]],
    ordered: bool = True,
) -> WindowOut[V, W]:
    """The general windowing operator: a `WindowLogic` per window of each key.

    ``builder(resume_state)`` makes the logic of a new window (``None``) or of
    a resumed one. With ``ordered`` (the default) each window sees its values
    in timestamp order, holding values until the watermark reaches them;
    otherwise in arrival order, at once.

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> class FirstAndCount(WindowLogic):
    ...     def __init__(self, resume): self.first, self.n = resume or (None, 0)
    ...     def on_value(self, value):
    ...         self.n += 1
    ...         if self.first is None:
    ...             self.first = value[1]
    ...             return [("first", value[1])]
    ...         return []
    ...     def on_merge(self, original): return []
    ...     def on_close(self): return [("count", self.n)]
    ...     def snapshot(self): return (self.first, self.n)
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> items = [("k", (t0 + timedelta(seconds=s), s)) for s in (3, 1, 2)]
    >>> flow = Dataflow("win"); out = []
    >>> clock = EventClock(lambda v: v[0], wait_for_system_duration=timedelta(seconds=10))
    >>> w = window("w", op.input("i", flow, TestingSource(items)), clock,
    ...            TumblingWindower(timedelta(minutes=1), t0), FirstAndCount)
    >>> op.output("o", w.down, TestingSink(out)); run_main(flow); out
    [('k', (0, ('first', 1))), ('k', (0, ('count', 3)))]
    """
    full = up._scope.parent_id
    _check_window_args(full, clock, windower)
    _check_callable(full, "builder", builder)
    spec = _WindowSpec(full, clock, windower, builder, ordered)
    folder = getattr(builder, "folder", None)
    dead = isinstance(folder, GuardedFolder) and folder.reporter.policy == "dead_letter"
    # A fold whose failures go to the dead letters emits them as events of the owner's logic.
    events = stateful_batch("stateful_batch", up, DrainingBuilder(spec, _failed_event) if dead else spec)
    # Bytewax's unwraps are `filter_map_value`s (-> flat_map_value -> flat_map).
    with _bytewax_nesting("unwrap_down", "flat_map_value", "flat_map", step_name="flat_map_batch"):
        down = flat_map_batch("unwrap_down", events, _unwrap_down)
    with _bytewax_nesting("unwrap_late", "flat_map_value", "flat_map", step_name="flat_map_batch"):
        late = flat_map_batch("unwrap_late", events, _unwrap_late)
    with _bytewax_nesting("unwrap_meta", "flat_map_value", "flat_map", step_name="flat_map_batch"):
        meta = flat_map_batch("unwrap_meta", events, _unwrap_meta)
    spec.late_stream = late.stream_id
    if isinstance(folder, GuardedFolder) and dead:
        failed = flat_map_batch("unwrap_dead_letters", events, _unwrap_failed)
        split_failures(failed, keyed=True, step=folder.reporter.step_id)
    return WindowOut(down, late, meta)


@operator
def fold_window(
    step_id: str,
    up: KeyedStream[V],
    clock: Clock[V, Any],
    windower: Windower[Any],
    builder: Callable[[], S],
    folder: Callable[[S, V], S],
    merger: Callable[[S, S], S],
    ordered: bool = True,
    *,
    on_error: ErrorPolicy = "fail",
) -> WindowOut[V, S]:
    """Fold each window's values into an accumulator; emit it when the window closes.

    ``builder()`` makes a window's empty accumulator, ``folder(acc, value)``
    adds a value (in timestamp order if ``ordered``), and
    ``merger(acc, original_acc)`` combines two windows that merge (session
    windows only). ``on_error`` applies to ``folder``, as for
    `headrace.operators.map`: a value it raises on leaves the accumulator
    as it was (and its dead letter has the key). With ``"dead_letter"``
    values are folded on the worker that owns their key (no combiner).

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> items = [("k", (t0 + timedelta(minutes=m), m)) for m in (0, 5, 12, 25)]
    >>> flow = Dataflow("fold"); out = []
    >>> clock = EventClock(lambda v: v[0], wait_for_system_duration=timedelta(0))
    >>> w = fold_window("sum", op.input("i", flow, TestingSource(items)), clock,
    ...                 TumblingWindower(timedelta(minutes=10), t0),
    ...                 lambda: 0, lambda acc, v: acc + v[1], lambda a, b: a + b)
    >>> op.output("o", w.down, TestingSink(out)); run_main(flow); out
    [('k', (0, 5)), ('k', (1, 12)), ('k', (2, 25))]
    """
    full = up._scope.parent_id
    _check_window_args(full, clock, windower)
    _check_callable(full, "builder", builder)
    _check_callable(full, "folder", folder)
    _check_callable(full, "merger", merger)
    policy = check_policy(full, on_error)
    if policy != "fail":
        folder = GuardedFolder(folder, Reporter(full, policy))
    return window("window", up, clock, windower, _FoldBuilder(builder, folder, merger), ordered)


def _list_folder(acc: list[V], value: V) -> list[V]:
    acc.append(value)
    return acc


def _list_merger(a: list[V], b: list[V]) -> list[V]:
    return a + b


def _set_folder(acc: set[V], value: V) -> set[V]:
    acc.add(value)
    return acc


def _set_merger(a: set[V], b: set[V]) -> set[V]:
    return a | b


def _dict_merger(a: dict[DK, DV], b: dict[DK, DV]) -> dict[DK, DV]:
    a.update(b)
    return a


class _DictFolder:
    __slots__ = ("step_id",)

    def __init__(self, step_id: str) -> None:
        self.step_id = step_id

    def __call__(self, acc: dict[Any, Any], kv: Any) -> dict[Any, Any]:
        try:
            k, v = kv
        except (TypeError, ValueError) as exc:
            msg = (
                f"step {self.step_id!r} collecting into a `dict` needs `(key, value)` "
                f"2-tuples as values; got {type(kv).__name__} {kv!r}"
            )
            raise TypeError(msg) from exc
        acc[k] = v
        return acc


@operator
def collect_window(
    step_id: str,
    up: KeyedStream[V],
    clock: Clock[V, Any],
    windower: Windower[Any],
    into: Any = list,
    ordered: bool = True,
) -> WindowOut[V, Any]:
    """Collect each window's values into a `list`, `set` or `dict` (of ``(k, v)`` values).

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> items = [("k", (t0 + timedelta(seconds=s), w)) for s, w in [(2, "b"), (1, "a"), (9, "c")]]
    >>> flow = Dataflow("collect"); out = []
    >>> clock = EventClock(lambda v: v[0], wait_for_system_duration=timedelta(seconds=30))
    >>> w = collect_window("c", op.input("i", flow, TestingSource(items)), clock,
    ...                    TumblingWindower(timedelta(seconds=5), t0))
    >>> op.output("o", op.map_value("words", w.down, lambda iw: (iw[0], [x[1] for x in iw[1]])),
    ...           TestingSink(out))
    >>> run_main(flow); out
    [('k', (0, ['a', 'b'])), ('k', (1, ['c']))]
    """
    full = up._scope.parent_id
    _check_window_args(full, clock, windower)
    builder: Callable[[], Any]
    folder: Callable[[Any, Any], Any]
    merger: Callable[[Any, Any], Any]
    if isinstance(into, type) and issubclass(into, list):
        builder, folder, merger = list, _list_folder, _list_merger
    elif isinstance(into, type) and issubclass(into, set):
        builder, folder, merger = set, _set_folder, _set_merger
    elif isinstance(into, type) and issubclass(into, dict):
        builder, folder, merger = dict, _DictFolder(full), _dict_merger
    else:
        msg = (
            f"step {full!r}: `collect_window` can collect into `list`, `set` or `dict`; "
            f"got {into!r}; use `fold_window` for other containers"
        )
        raise TypeError(msg)
    return fold_window("fold_window", up, clock, windower, builder, folder, merger, ordered)


def _zero() -> int:
    return 0


def _count_one(n: int, _value: Any) -> int:
    return n + 1


def _add(a: int, b: int) -> int:
    return a + b


@operator
def count_window(
    step_id: str,
    up: Stream[X],
    clock: Clock[X, Any],
    windower: Windower[Any],
    key: Callable[[X], str],
) -> WindowOut[X, int]:
    """Count items per ``key(item)`` in each window.

    The clock sees the whole (unkeyed) item.

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> items = [("apple", t0), ("pear", t0), ("apple", t0 + timedelta(minutes=20))]
    >>> flow = Dataflow("count"); out = []
    >>> clock = EventClock(lambda x: x[1], wait_for_system_duration=timedelta(0))
    >>> w = count_window("n", op.input("i", flow, TestingSource(items)), clock,
    ...                  TumblingWindower(timedelta(minutes=15), t0), key=lambda x: x[0])
    >>> op.output("o", w.down, TestingSink(out)); run_main(flow); sorted(out)
    [('apple', (0, 1)), ('apple', (1, 1)), ('pear', (0, 1))]
    """
    _check_window_args(up._scope.parent_id, clock, windower)
    _check_callable(up._scope.parent_id, "key", key)
    keyed = key_on("keyed", up, key)
    return fold_window("sum", keyed, clock, windower, _zero, _count_one, _add, ordered=False)


class _ReduceFolder:
    """Folds with ``reducer`` once the accumulator holds a first value."""

    __slots__ = ("reducer",)

    def __init__(self, reducer: Callable[[Any, Any], Any]) -> None:
        self.reducer = reducer

    def __call__(self, acc: Any, value: Any) -> Any:
        if acc is None:
            return value
        return self.reducer(acc, value)


def _none() -> None:
    return None


@operator
def reduce_window(
    step_id: str,
    up: KeyedStream[V],
    clock: Clock[V, Any],
    windower: Windower[Any],
    reducer: Callable[[V, V], V],
    *,
    on_error: ErrorPolicy = "fail",
) -> WindowOut[V, V]:
    """Combine each window's values pairwise with ``reducer`` (in arrival order).

    ``on_error``: as for `fold_window` (a value ``reducer`` raises on is
    left out of its window).

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> items = [("k", (t0 + timedelta(seconds=s), s)) for s in (1, 2, 3, 11)]
    >>> flow = Dataflow("reduce"); out = []
    >>> clock = EventClock(lambda v: v[0], wait_for_system_duration=timedelta(0))
    >>> w = reduce_window("r", op.input("i", flow, TestingSource(items)), clock,
    ...                   TumblingWindower(timedelta(seconds=10), t0),
    ...                   lambda a, b: (max(a[0], b[0]), a[1] + b[1]))
    >>> op.output("o", op.map_value("sums", w.down, lambda iv: (iv[0], iv[1][1])),
    ...           TestingSink(out))
    >>> run_main(flow); out
    [('k', (0, 6)), ('k', (1, 11))]
    """
    _check_window_args(up._scope.parent_id, clock, windower)
    _check_callable(up._scope.parent_id, "reducer", reducer)
    policy = check_policy(up._scope.parent_id, on_error)
    folder: Callable[[Any, Any], Any] = _ReduceFolder(reducer)
    if policy != "fail":
        # The failure is this step's: guard here, with this step's id.
        folder = GuardedFolder(folder, Reporter(up._scope.parent_id, policy))
    return fold_window("fold_window", up, clock, windower, _none, folder, reducer, ordered=False)


@operator
def max_window(
    step_id: str,
    up: KeyedStream[V],
    clock: Clock[V, Any],
    windower: Windower[Any],
    by: Callable[[V], Any] = _identity,
) -> WindowOut[V, V]:
    """Emit each window's largest value (compared by ``by(value)``; first wins ties).

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> items = [("k", (t0 + timedelta(seconds=s), t)) for s, t in [(1, 20.5), (2, 23.0), (3, 21.1)]]
    >>> flow = Dataflow("max"); out = []
    >>> clock = EventClock(lambda v: v[0], wait_for_system_duration=timedelta(0))
    >>> w = max_window("hottest", op.input("i", flow, TestingSource(items)), clock,
    ...                TumblingWindower(timedelta(minutes=1), t0), by=lambda v: v[1])
    >>> op.output("o", w.down, TestingSink(out)); run_main(flow); out[0][1][1][1]
    23.0
    """
    _check_window_args(up._scope.parent_id, clock, windower)
    _check_callable(up._scope.parent_id, "by", by)
    return reduce_window("reduce_window", up, clock, windower, partial(max, key=by))


@operator
def min_window(
    step_id: str,
    up: KeyedStream[V],
    clock: Clock[V, Any],
    windower: Windower[Any],
    by: Callable[[V], Any] = _identity,
) -> WindowOut[V, V]:
    """Emit each window's smallest value (compared by ``by(value)``; first wins ties).

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> items = [("k", (t0 + timedelta(seconds=s), s * 3 % 5)) for s in range(5)]
    >>> flow = Dataflow("min"); out = []
    >>> clock = EventClock(lambda v: v[0], wait_for_system_duration=timedelta(0))
    >>> w = min_window("least", op.input("i", flow, TestingSource(items)), clock,
    ...                TumblingWindower(timedelta(minutes=1), t0), by=lambda v: v[1])
    >>> op.output("o", w.down, TestingSink(out)); run_main(flow); out[0][1][1][1]
    0
    """
    _check_window_args(up._scope.parent_id, clock, windower)
    _check_callable(up._scope.parent_id, "by", by)
    return reduce_window("reduce_window", up, clock, windower, partial(min, key=by))


def _label(side: int, value: Any) -> tuple[int, Any]:
    return (side, value)


@operator
def _join_label_merge(step_id: str, *ups: KeyedStream[Any]) -> KeyedStream[tuple[int, Any]]:
    """Tag each side's values with the side's index and merge the sides.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("lm"); out = []
    >>> a = op.input("a", flow, TestingSource([("k", "x")]))
    >>> b = op.input("b", flow, TestingSource([("k", "y")]))
    >>> op.output("o", _join_label_merge("names", a, b), TestingSink(out)); run_main(flow)
    >>> sorted(out)
    [('k', (0, 'x')), ('k', (1, 'y'))]
    """
    labelled = [map_value(f"label_{i}", up, partial(_label, i)) for i, up in enumerate(ups)]
    return merge("merge", *labelled)


@operator
def join_window(
    step_id: str,
    clock: Clock[Any, Any],
    windower: Windower[Any],
    *sides: KeyedStream[Any],
    insert_mode: JoinInsertMode = "last",
    emit_mode: JoinEmitMode = "final",
    ordered: bool = True,
) -> WindowOut[Any, tuple[Any, ...]]:
    """Join keyed streams on key within each window; one slot per side.

    ``insert_mode`` and ``emit_mode`` work as in `join`, per window: by
    default (``final``) each window emits its rows when it closes, with
    ``None`` for sides that had no value. An `EventClock`'s ``ts_getter``
    sees the side's own values.

    >>> from datetime import datetime, timedelta, timezone
    >>> from headrace.dataflow import Dataflow
    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> names = [("1", (t0, "ann")), ("2", (t0, "bob"))]
    >>> ages = [("1", (t0 + timedelta(seconds=3), 33))]
    >>> flow = Dataflow("jw"); out = []
    >>> clock = EventClock(lambda v: v[0], wait_for_system_duration=timedelta(0))
    >>> w = join_window("j", clock, TumblingWindower(timedelta(minutes=1), t0),
    ...                 op.input("n", flow, TestingSource(names)),
    ...                 op.input("a", flow, TestingSource(ages)))
    >>> op.output("o", op.map_value("plain", w.down,
    ...           lambda iw: tuple(None if x is None else x[1] for x in iw[1])), TestingSink(out))
    >>> run_main(flow); sorted(out)
    [('1', ('ann', 33)), ('2', ('bob', None))]
    """
    full = sides[0]._scope.parent_id if sides else step_id
    _check_join_modes(full, insert_mode, emit_mode)
    if not sides:
        msg = f"step {full!r}: `join_window` needs at least one side"
        raise TypeError(msg)
    _check_window_args(full, clock, windower)
    merged = _join_label_merge("add_names", *sides)
    if isinstance(clock, EventClock):
        clock = EventClock(
            ts_getter=_SideTs(clock.ts_getter),
            wait_for_system_duration=clock.wait_for_system_duration,
            now_getter=clock.now_getter,
            to_system_utc=clock.to_system_utc,
        )
    builder = _JoinBuilder(len(sides), insert_mode, emit_mode)
    return window("window", merged, clock, windower, builder, ordered=ordered)
