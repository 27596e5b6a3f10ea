"""Stateless operators, composed from `flat_map_batch` and `inspect_debug`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from headrace.dataflow import Stream, _bytewax_nesting, f_repr, operator
from headrace.errors import ErrorPolicy
from headrace.inputs import _utc_now
from headrace.operators._core import (
    _check_callable,
    _fusable,
    branch,
    flat_map_batch,
    inspect_debug,
)
from headrace.operators._dead_letters import check_policy, guarded_stateless
from headrace.outputs import DynamicSink, StatelessSinkPartition

X = TypeVar("X")
Y = TypeVar("Y")
V = TypeVar("V")
W = TypeVar("W")
DK = TypeVar("DK")
DV = TypeVar("DV")


@operator
def map(
    step_id: str, up: Stream[X], mapper: Callable[[X], Y], *, on_error: ErrorPolicy = "fail"
) -> Stream[Y]:
    """Transform each item one-to-one.

    ``on_error`` says what an item ``mapper`` raises on does: ``"fail"``
    stops the run (Bytewax's behaviour), ``"skip"`` drops it (counted and
    logged), ``"dead_letter"`` sends it to `dead_letters`:

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.map("inv", op.input("i", flow, TestingSource([1, 0, 4])), lambda x: 8 // x,
    ...            on_error="skip")
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [8, 2]

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.map("m", op.input("i", flow, TestingSource([1, 2])), str)
    >>> op.output("o", s, TestingSink(out))
    >>> run_main(flow); out
    ['1', '2']
    """
    _check_callable(step_id, "mapper", mapper)
    if check_policy(up._scope.parent_id, on_error) != "fail":
        return guarded_stateless(up, "map", mapper, on_error)
    return flat_map_batch("flat_map_batch", up, _fusable("map", mapper, lambda xs: [mapper(x) for x in xs]))


@operator
def filter(
    step_id: str, up: Stream[X], predicate: Callable[[X], bool], *, on_error: ErrorPolicy = "fail"
) -> Stream[X]:
    """Keep only the items for which ``predicate`` is true.

    ``on_error``: as for `map` (an item ``predicate`` raises on is dropped
    with ``"skip"``, sent to `dead_letters` with ``"dead_letter"``).

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.filter("f", op.input("i", flow, TestingSource(range(5))), lambda x: x % 2)
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [1, 3]
    """
    _check_callable(step_id, "predicate", predicate)
    if check_policy(up._scope.parent_id, on_error) != "fail":
        return guarded_stateless(up, "filter", predicate, on_error)
    with _bytewax_nesting("flat_map"):
        return flat_map_batch(
            "flat_map_batch",
            up,
            _fusable("filter", predicate, lambda xs: [x for x in xs if predicate(x)]),
        )


@operator
def filter_map(
    step_id: str, up: Stream[X], mapper: Callable[[X], Y | None], *, on_error: ErrorPolicy = "fail"
) -> Stream[Y]:
    """Transform each item, dropping those mapped to ``None``.

    ``on_error``: as for `map`.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.filter_map("p", op.input("i", flow, TestingSource(["1", "x", "3"])),
    ...                   lambda s: int(s) if s.isdigit() else None)
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [1, 3]
    """
    _check_callable(step_id, "mapper", mapper)
    if check_policy(up._scope.parent_id, on_error) != "fail":
        return guarded_stateless(up, "filter_map", mapper, on_error)

    def batch_fn(xs: list[X]) -> list[Y]:
        return [y for y in (mapper(x) for x in xs) if y is not None]

    with _bytewax_nesting("flat_map"):
        return flat_map_batch("flat_map_batch", up, _fusable("filter_map", mapper, batch_fn))


@operator
def flat_map(
    step_id: str, up: Stream[X], mapper: Callable[[X], Iterable[Y]], *, on_error: ErrorPolicy = "fail"
) -> Stream[Y]:
    """Transform each item into any number of items.

    ``on_error``: as for `map`; an error while iterating what ``mapper``
    returned counts as the item's (none of its outputs is kept).

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.flat_map("split", op.input("i", flow, TestingSource(["a b", "c"])), str.split)
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    ['a', 'b', 'c']
    """
    _check_callable(step_id, "mapper", mapper)
    if check_policy(up._scope.parent_id, on_error) != "fail":
        return guarded_stateless(up, "flat_map", mapper, on_error)
    return flat_map_batch(
        "flat_map_batch",
        up,
        _fusable("flat_map", mapper, lambda xs: [y for x in xs for y in mapper(x)]),
    )


@operator
def flatten(step_id: str, up: Stream[Iterable[X]]) -> Stream[X]:
    """Emit every element of every iterable item.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.flatten("f", op.input("i", flow, TestingSource([[1, 2], [3]])))
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [1, 2, 3]
    """
    return flat_map("flat_map", up, _flatten_item)


def _flatten_item(x: X) -> X:
    return x


# Tells the engine's error report that a failure to iterate is `flatten`'s item.
_flatten_item._headrace_flatten = True  # type: ignore[attr-defined]


def _identity(x: X) -> X:
    """Return ``x`` unchanged (`key_rm`'s mapper, the default ``by`` of `max_final` and
    `min_final`, and `EventClock`'s ``to_system_utc``).

    >>> _identity(3)
    3
    """
    return x


@operator
def map_value(
    step_id: str, up: Stream[tuple[str, V]], mapper: Callable[[V], W], *, on_error: ErrorPolicy = "fail"
) -> Stream[tuple[str, W]]:
    """Transform the value of each ``(key, value)`` item.

    ``on_error``: as for `map`; a dead letter has the key, and the value as its item.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.map_value("m", op.input("i", flow, TestingSource([("a", 1)])), lambda v: v + 1)
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [('a', 2)]
    """
    _check_callable(step_id, "mapper", mapper)
    if check_policy(up._scope.parent_id, on_error) != "fail":
        return guarded_stateless(up, "map_value", mapper, on_error)
    with _bytewax_nesting("map"):
        return flat_map_batch(
            "flat_map_batch",
            up,
            _fusable("map_value", mapper, lambda xs: [(k, mapper(v)) for k, v in xs]),
        )


@operator
def filter_value(
    step_id: str, up: Stream[tuple[str, V]], predicate: Callable[[V], bool], *, on_error: ErrorPolicy = "fail"
) -> Stream[tuple[str, V]]:
    """Keep the ``(key, value)`` items whose value passes ``predicate``.

    ``on_error``: as for `map`; a dead letter has the key, and the value as its item.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.filter_value("f", op.input("i", flow, TestingSource([("a", 1), ("b", 0)])), bool)
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [('a', 1)]
    """
    _check_callable(step_id, "predicate", predicate)
    if check_policy(up._scope.parent_id, on_error) != "fail":
        return guarded_stateless(up, "filter_value", predicate, on_error)
    with _bytewax_nesting("filter", "flat_map"):
        return flat_map_batch(
            "flat_map_batch",
            up,
            _fusable("filter_value", predicate, lambda xs: [(k, v) for k, v in xs if predicate(v)]),
        )


@operator
def filter_map_value(
    step_id: str,
    up: Stream[tuple[str, V]],
    mapper: Callable[[V], W | None],
    *,
    on_error: ErrorPolicy = "fail",
) -> Stream[tuple[str, W]]:
    """Transform values, dropping items whose new value is ``None``.

    ``on_error``: as for `map`; a dead letter has the key, and the value as its item.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.filter_map_value("f", op.input("i", flow, TestingSource([("a", 1), ("b", 0)])),
    ...                         lambda v: v or None)
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [('a', 1)]
    """
    _check_callable(step_id, "mapper", mapper)
    if check_policy(up._scope.parent_id, on_error) != "fail":
        return guarded_stateless(up, "filter_map_value", mapper, on_error)

    def batch_fn(xs: list[tuple[str, V]]) -> list[tuple[str, W]]:
        return [(k, w) for k, v in xs for w in (mapper(v),) if w is not None]

    with _bytewax_nesting("flat_map_value", "flat_map"):
        return flat_map_batch("flat_map_batch", up, _fusable("filter_map_value", mapper, batch_fn))


@operator
def flat_map_value(
    step_id: str,
    up: Stream[tuple[str, V]],
    mapper: Callable[[V], Iterable[W]],
    *,
    on_error: ErrorPolicy = "fail",
) -> Stream[tuple[str, W]]:
    """Transform each value into any number of values under the same key.

    ``on_error``: as for `map`; a dead letter has the key, and the value as its item.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.flat_map_value("f", op.input("i", flow, TestingSource([("a", "x y")])), str.split)
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [('a', 'x'), ('a', 'y')]
    """
    _check_callable(step_id, "mapper", mapper)
    if check_policy(up._scope.parent_id, on_error) != "fail":
        return guarded_stateless(up, "flat_map_value", mapper, on_error)

    def batch_fn(xs: list[tuple[str, V]]) -> list[tuple[str, W]]:
        return [(k, w) for k, v in xs for w in mapper(v)]

    with _bytewax_nesting("flat_map"):
        return flat_map_batch("flat_map_batch", up, _fusable("flat_map_value", mapper, batch_fn))


@operator
def key_on(step_id: str, up: Stream[X], key: Callable[[X], str]) -> Stream[tuple[str, X]]:
    """Make ``(key(item), item)`` pairs, ready for stateful operators.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.key_on("k", op.input("i", flow, TestingSource([{"u": "x"}])), lambda d: d["u"])
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [('x', {'u': 'x'})]
    """
    _check_callable(step_id, "key", key)
    full = up._scope.parent_id

    def str_key(x: X) -> str:
        k = key(x)
        if k.__class__ is not str and not isinstance(k, str):
            msg = (
                f"return value of `key` {f_repr(key)} in step {full!r} must be a `str`; "
                f"got a {type(k)} instead"
            )
            raise TypeError(msg)
        return k

    # The fused form checks the key type inline (see _engine._fuse), so it
    # gets the raw key function; the unfused form checks in `str_key`.
    with _bytewax_nesting("map"):
        return flat_map_batch(
            "flat_map_batch",
            up,
            _fusable("key_on", key, lambda xs: [(str_key(x), x) for x in xs]),
        )


@operator
def key_rm(step_id: str, up: Stream[tuple[str, X]]) -> Stream[X]:
    """Drop the keys of ``(key, value)`` items.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d"); out = []
    >>> s = op.key_rm("k", op.input("i", flow, TestingSource([("a", 1)])))
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [1]
    """
    with _bytewax_nesting("map"):
        return flat_map_batch(
            "flat_map_batch", up, _fusable("key_rm", _identity, lambda xs: [v for _k, v in xs])
        )


def _default_inspector(step_id: str, item: Any) -> None:
    print(f"{step_id}: {item!r}", flush=True)


@operator
def inspect(
    step_id: str,
    up: Stream[X],
    inspector: Callable[[str, X], None] = _default_inspector,
) -> Stream[X]:
    """Call ``inspector(step_id, item)`` on each item (prints by default).

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> flow = Dataflow("d")
    >>> s = op.inspect("look", op.input("i", flow, TestingSource([1])))
    >>> op.output("o", s, TestingSink([])); run_main(flow)
    d.look: 1
    """
    _check_callable(step_id, "inspector", inspector)
    outer_id = _current_step_id(up, step_id)

    def shim(_sid: str, item: X, _epoch: int, _worker: int) -> None:
        inspector(outer_id, item)

    return inspect_debug("inspect_debug", up, shim)


def _current_step_id(up: Stream[Any], step_id: str) -> str:
    # Inside an operator body, `up`'s scope is this operator's own scope.
    return up._scope.parent_id


class _RaisesPartition(StatelessSinkPartition[Any]):
    """Fails on the first item written (the sink of `raises`)."""

    def __init__(self, step_id: str) -> None:
        self._step_id = step_id

    def write_batch(self, items: list[Any]) -> None:
        """Raise `RuntimeError` naming the `raises` step and the first item.

        >>> _RaisesPartition("f.never").write_batch([])
        >>> _RaisesPartition("f.never").write_batch([7])
        Traceback (most recent call last):
        ...
        RuntimeError: `raises` step 'f.never' got an item: 7
        """
        if items:
            msg = f"`raises` step {self._step_id!r} got an item: {items[0]!r}"
            raise RuntimeError(msg)


class _RaisesSink(DynamicSink[Any]):
    """The sink of `raises`: as in Bytewax, `raises` is an output whose writes fail."""

    def __init__(self, step_id: str) -> None:
        self._step_id = step_id

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RaisesPartition:
        """A partition that fails on its first item.

        >>> _RaisesSink("f.never").build("f.never.output", 0, 1)._step_id
        'f.never'
        """
        return _RaisesPartition(self._step_id)


@operator
def raises(step_id: str, up: Stream[Any]) -> None:
    """Fail the run if any item arrives (guards "impossible" branches).

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, run_main
    >>> flow = Dataflow("d")
    >>> op.raises("never", op.input("i", flow, TestingSource([1])))
    >>> run_main(flow)
    Traceback (most recent call last):
    ...
    headrace.errors.BytewaxRuntimeError: error writing output batch in step "d.never.output": \
RuntimeError: `raises` step 'd.never' got an item: 1
    """
    from headrace.operators._core import output

    output("output", up, _RaisesSink(up._scope.parent_id))


@dataclass
class TTLCache(Generic[DK, DV]):
    """A cache of ``v_getter(key)`` results that expire after ``ttl``.

    >>> from datetime import datetime, timedelta, timezone
    >>> calls = []
    >>> def get(k):
    ...     calls.append(k); return k.upper()
    >>> now = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> c = TTLCache(get, lambda: now, timedelta(seconds=10))
    >>> c.get("a"), c.get("a"), calls
    ('A', 'A', ['a'])
    """

    v_getter: Callable[[DK], DV]
    now_getter: Callable[[], datetime]
    ttl: timedelta
    _cache: dict[DK, tuple[datetime, DV]] = field(default_factory=dict)

    def get(self, k: DK) -> DV:
        """Return the cached value, fetching it if missing or expired.

        >>> from datetime import datetime, timedelta, timezone
        >>> t = [datetime(2024, 1, 1, tzinfo=timezone.utc)]
        >>> c = TTLCache(lambda k: t[0].second, lambda: t[0], timedelta(seconds=1))
        >>> c.get("k"); t[0] += timedelta(seconds=5); c.get("k")
        0
        5
        """
        now = self.now_getter()
        hit = self._cache.get(k)
        if hit is not None and now - hit[0] <= self.ttl:
            return hit[1]
        v = self.v_getter(k)
        self._cache[k] = (now, v)
        return v

    def remove(self, k: DK) -> None:
        """Forget a key so the next `get` fetches it again.

        >>> from datetime import datetime, timedelta, timezone
        >>> c = TTLCache(str.upper, lambda: datetime.now(timezone.utc), timedelta(days=1))
        >>> c.get("a"); c.remove("a"); c.remove("missing"); "a" in c._cache
        'A'
        False
        """
        self._cache.pop(k, None)


@operator
def enrich_cached(
    step_id: str,
    up: Stream[X],
    getter: Callable[[DK], DV],
    mapper: Callable[[TTLCache[DK, DV], X], Y],
    ttl: timedelta = timedelta.max,
    _now_getter: Callable[[], datetime] = _utc_now,
) -> Stream[Y]:
    """Enrich items with slowly-changing data from ``getter``, cached per key.

    ``mapper(cache, item)`` calls ``cache.get(k)`` for what it needs.

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> rates = {"EUR": 1.1}
    >>> flow = Dataflow("d"); out = []
    >>> s = op.enrich_cached("fx", op.input("i", flow, TestingSource([("EUR", 10)])),
    ...     rates.get, lambda cache, x: (x[0], x[1] * cache.get(x[0])))
    >>> op.output("o", s, TestingSink(out)); run_main(flow); out
    [('EUR', 11.0)]
    """
    _check_callable(step_id, "getter", getter)
    _check_callable(step_id, "mapper", mapper)
    cache: TTLCache[DK, DV] = TTLCache(getter, _now_getter, ttl)

    def batch_fn(xs: list[X]) -> list[Y]:
        return [mapper(cache, x) for x in xs]

    return flat_map_batch("flat_map_batch", up, batch_fn)


__all__ = [
    "TTLCache",
    "branch",
    "enrich_cached",
    "filter",
    "filter_map",
    "filter_map_value",
    "filter_value",
    "flat_map",
    "flat_map_value",
    "flatten",
    "inspect",
    "key_on",
    "key_rm",
    "map",
    "map_value",
    "raises",
]
