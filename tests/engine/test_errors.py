"""Bad input and failing user code: clear errors that name the step, never a hang.

A failure inside any user callback surfaces from `run_main` / `cluster_main`
as a `BytewaxRuntimeError` (a `RuntimeError`) whose message names the step
and whose ``__cause__`` is the user's own exception, as in Bytewax.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import headrace.operators as op
from headrace._engine import execute
from headrace.dataflow import Dataflow, Stream, operator
from headrace.errors import BytewaxRuntimeError
from headrace.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from headrace.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main

pytestmark = pytest.mark.timeout(30)


class Boom(Exception):
    """The user's own exception; tests check it is chained, not swallowed."""


def names_step(message: str, step_id: str) -> bool:
    """Whether ``message`` names ``step_id`` itself or one of its substeps.

    Runtime errors quote step ids as Bytewax does (``"f.s.map.flat_map_batch"``);
    Headrace's hints quote the user's step as Python does (``'f.s'``).
    """
    return re.search(rf"(['\"]){re.escape(step_id)}(\1|\.)", message) is not None


def run(flow: Dataflow, workers: int = 1) -> None:
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)


# --- keyed operators fed something that is not a (str, value) 2-tuple -----

NOT_KEYED = [
    pytest.param(1, id="int"),
    pytest.param(("a", 1, 2), id="3-tuple"),
    pytest.param((1, 2), id="int-key"),
    pytest.param(["a", 1], id="list"),
    pytest.param(None, id="None"),
]

STATEFUL_KEYED_OPS: dict[str, Callable[[Stream[Any]], Stream[Any]]] = {
    "stateful_map": lambda s: op.stateful_map("keyed", s, lambda st, v: (st, v)),
    "stateful_flat_map": lambda s: op.stateful_flat_map("keyed", s, lambda st, v: (st, [v])),
    "reduce_final": lambda s: op.reduce_final("keyed", s, lambda a, b: a),
    "fold_final": lambda s: op.fold_final("keyed", s, list, lambda a, v: a),
    "max_final": lambda s: op.max_final("keyed", s),
    "collect": lambda s: op.collect("keyed", s, timedelta(seconds=10), 10),
    "join": lambda s: op.join("keyed", s, s),
}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("item", NOT_KEYED)
@pytest.mark.parametrize("name", list(STATEFUL_KEYED_OPS))
def test_stateful_operator_rejects_non_keyed_items(
    name: str, item: Any, workers: int, cause_chain: Any
) -> None:
    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([("ok", 1), item]))
    op.output("out", STATEFUL_KEYED_OPS[name](s), TestingSink([]))
    if name == "join" and isinstance(item, list):
        # `join` first re-labels values with `map_value`, which unpacks any
        # 2-sequence (as in Bytewax), so a `[key, value]` list is accepted.
        run(flow, workers)
        return
    with pytest.raises(BytewaxRuntimeError) as info:
        run(flow, workers)
    assert names_step(str(info.value), "test.keyed"), str(info.value)
    assert "(key, value)" in str(info.value)
    if name in ("reduce_final", "max_final") and not isinstance(item, list | tuple):
        # As in Bytewax, a reduction first unpacks each item in its `pre_reduce` step.
        assert str(info.value).startswith('error calling `mapper` in step "test.keyed.')
        assert '.pre_reduce": TypeError: cannot unpack non-iterable' in str(info.value)
    elif name in ("reduce_final", "max_final") and isinstance(item, tuple) and len(item) == 3:
        assert '.pre_reduce": ValueError: too many values to unpack (expected 2)' in str(info.value)
        assert isinstance(info.value.__cause__, ValueError)
        return
    assert any(isinstance(e, TypeError) for e in cause_chain(info.value))


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda s: op.map_value("keyed", s, str), id="map_value"),
        pytest.param(lambda s: op.filter_value("keyed", s, bool), id="filter_value"),
        pytest.param(lambda s: op.flat_map_value("keyed", s, lambda v: [v]), id="flat_map_value"),
        pytest.param(lambda s: op.filter_map_value("keyed", s, str), id="filter_map_value"),
        pytest.param(lambda s: op.key_rm("keyed", s), id="key_rm"),
    ],
)
@pytest.mark.parametrize("item", [pytest.param(1, id="int"), pytest.param(("a", 1, 2), id="3")])
@pytest.mark.parametrize("fuse", [True, False])
def test_stateless_keyed_operator_rejects_non_pairs(
    build: Callable[[Stream[Any]], Stream[Any]], item: Any, fuse: bool, cause_chain: Any
) -> None:
    flow = Dataflow("test")
    s = op.map("pre", op.input("inp", flow, TestingSource([item])), lambda x: x)
    op.output("out", build(s), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        execute(flow, fuse=fuse)
    assert names_step(str(info.value), "test.keyed"), str(info.value)
    assert any(isinstance(e, TypeError) for e in cause_chain(info.value))


def test_partitioned_sink_rejects_non_keyed_items(cause_chain: Any) -> None:
    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([1]))
    op.output("sink", s, _FixedSink())
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert names_step(str(info.value), "test.sink")
    assert any(isinstance(e, TypeError) for e in cause_chain(info.value))


def test_key_on_requires_a_str_key() -> None:
    flow = Dataflow("test")
    s = op.key_on("key", op.input("inp", flow, TestingSource([1, 2])), lambda x: x)
    op.output("out", op.key_rm("unkey", s), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert names_step(str(info.value), "test.key")
    assert isinstance(info.value.__cause__, TypeError)
    assert "must be a `str`" in str(info.value.__cause__)


# --- stateful mappers must return (state, output) --------------------------


@pytest.mark.parametrize(
    "ret",
    [
        pytest.param(5, id="int"),
        pytest.param((1, 2, 3), id="3-tuple"),
        pytest.param((1,), id="1-tuple"),
        pytest.param(None, id="None"),
    ],
)
@pytest.mark.parametrize("name", ["stateful_map", "stateful_flat_map"])
def test_stateful_mapper_must_return_a_2_tuple(name: str, ret: Any) -> None:
    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([("a", 1)]))
    op.output("out", getattr(op, name)("mapper", s, lambda st, v: ret), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert names_step(str(err), "test.mapper")
    assert isinstance(err.__cause__, TypeError)
    assert "must be a 2-tuple" in str(err.__cause__)
    assert "'test.mapper'" in str(err.__cause__)


def test_stateful_mapper_may_return_a_2_list() -> None:
    """Any 2-item sequence unpacks, as in Bytewax."""
    flow = Dataflow("test")
    out: list[Any] = []
    s = op.input("inp", flow, TestingSource([("a", 1), ("a", 2)]))
    mapped = op.stateful_map("mapper", s, lambda st, v: [(st or 0) + v, (st or 0) + v])
    op.output("out", mapped, TestingSink(out))
    run_main(flow)
    assert out == [("a", 1), ("a", 3)]


@pytest.mark.parametrize("method", ["on_item", "on_notify", "on_eof"])
def test_stateful_logic_must_return_outputs_and_discard(method: str) -> None:
    class Logic(op.StatefulLogic[int, int, None]):
        def on_item(self, value: int) -> Any:
            return [value] if method == "on_item" else ([value], False)

        def on_notify(self) -> Any:
            return "bad"

        def on_eof(self) -> Any:
            return 7 if method == "on_eof" else ([], False)

        def notify_at(self) -> datetime | None:
            return datetime(2000, 1, 1, tzinfo=UTC) if method == "on_notify" else None

        def snapshot(self) -> None:
            return None

    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([("a", 1)]))
    op.output("out", op.stateful("logic", s, lambda _r: Logic()), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert names_step(str(info.value), "test.logic")


@pytest.mark.parametrize("emit", ["None", "int", "lazy"])
def test_stateful_batch_emit_must_be_iterable(emit: str) -> None:
    class Logic(op.StatefulBatchLogic[int, int, None]):
        def on_batch(self, values: list[int]) -> Any:
            outputs = {"None": None, "int": 5, "lazy": _lazy(Boom("lazy"))()}[emit]
            return outputs, False

        def snapshot(self) -> None:
            return None

    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([("a", 1)]))
    op.output("out", op.stateful_batch("logic", s, lambda _r: Logic()), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert names_step(str(info.value), "test.logic")


# --- building mistakes ----------------------------------------------------


def test_duplicate_step_id_at_top_level(flow: Dataflow) -> None:
    s = op.input("inp", flow, TestingSource([1]))
    op.map("double", s, lambda x: x * 2)
    with pytest.raises(ValueError, match=r"'test\.double' already exists"):
        op.map("double", s, lambda x: x * 3)


def test_duplicate_step_id_inside_an_operator(flow: Dataflow) -> None:
    @operator
    def twice(step_id: str, up: Stream[int]) -> Stream[int]:
        s = op.map("inner", up, lambda x: x)
        return op.map("inner", s, lambda x: x)

    s = op.input("inp", flow, TestingSource([1]))
    with pytest.raises(ValueError, match=r"'test\.outer\.inner' already exists"):
        twice("outer", s)
    # The failed operator left nothing behind: its id can be used again.
    op.map("outer", s, lambda x: x)


def test_duplicate_input_and_output_ids(flow: Dataflow) -> None:
    op.input("inp", flow, TestingSource([1]))
    with pytest.raises(ValueError, match="already exists"):
        op.input("inp", flow, TestingSource([2]))


def test_stream_from_another_dataflow_is_rejected() -> None:
    a = Dataflow("first")
    b = Dataflow("second")
    sa = op.input("inp", a, TestingSource([1]))
    sb = op.input("inp", b, TestingSource([2]))
    with pytest.raises(ValueError, match=r"dataflow") as info:
        op.merge("merge", sa, sb)
    assert "'first'" in str(info.value) and "'second'" in str(info.value)
    with pytest.raises(ValueError):
        op.join("join", op.key_on("k", sa, str), op.key_on("k", sb, str))
    # A single foreign stream goes into its own dataflow, never into another.
    op.map("m", sb, str)
    assert [s.step_id for s in a.substeps] == ["first.inp", "first.k"]


def test_dataflow_without_input(flow: Dataflow, cause_chain: Any) -> None:
    with pytest.raises(BytewaxRuntimeError, match="at least one input step") as info:
        run_main(flow)
    assert "'test'" in str(info.value)
    assert not isinstance(info.value, ValueError)  # as Bytewax: the reason is the cause
    assert isinstance(info.value.__cause__, ValueError)


def test_dataflow_without_output(flow: Dataflow) -> None:
    op.map("m", op.input("inp", flow, TestingSource([1])), str)
    with pytest.raises(BytewaxRuntimeError, match="at least one output or inspect step"):
        run_main(flow)


def test_dataflow_without_output_in_a_cluster(flow: Dataflow) -> None:
    op.input("inp", flow, TestingSource([1]))
    with pytest.raises(BytewaxRuntimeError, match="at least one output or inspect step"):
        cluster_main(flow, [], 0, worker_count_per_proc=2)


@pytest.mark.parametrize(
    ("build", "exc", "words"),
    [
        (lambda s: op.map("m", s, 5), TypeError, "callable"),
        (lambda s: op.filter("m", s, None), TypeError, "callable"),
        (lambda s: op.flat_map_batch("m", s, "x"), TypeError, "callable"),
        (lambda s: op.stateful_map("m", s, 1), TypeError, "callable"),
        (lambda s: op.branch("m", s, 1), TypeError, "callable"),
        (lambda s: op.output("m", s, []), TypeError, "Sink"),
        (lambda s: op.join("m", s, s, insert_mode="all"), ValueError, "insert_mode"),
        (lambda s: op.join("m", s, s, emit_mode="eventually"), ValueError, "emit_mode"),
        (lambda s: op.collect("m", s, timedelta(seconds=1), 0), ValueError, "max_size"),
    ],
)
def test_bad_operator_arguments_fail_at_build_time(
    flow: Dataflow, build: Callable[[Stream[Any]], Any], exc: type[Exception], words: str
) -> None:
    s = op.input("inp", flow, TestingSource([1]))
    with pytest.raises(exc, match=words) as info:
        build(s)
    assert "'m'" in str(info.value)


def test_input_needs_a_source(flow: Dataflow) -> None:
    with pytest.raises(TypeError, match="Source"):
        op.input("inp", flow, [1, 2, 3])  # type: ignore[arg-type]


def test_run_main_needs_a_dataflow() -> None:
    with pytest.raises(TypeError, match="Dataflow"):
        run_main("not a flow")  # type: ignore[arg-type]


# --- user exceptions inside callbacks -------------------------------------


def _raise(boom: Boom) -> Callable[..., Any]:
    def f(*_args: Any) -> Any:
        raise boom

    return f


def _lazy(boom: Boom) -> Callable[..., Any]:
    def f(*_args: Any) -> Any:
        yield 1
        raise boom

    return f


class _Logic(op.StatefulLogic[Any, Any, None]):
    """Raises ``boom`` from the method named ``where``."""

    def __init__(self, where: str, boom: Boom) -> None:
        self.where = where
        self.boom = boom

    def _maybe(self, name: str) -> None:
        if self.where == name:
            raise self.boom

    def on_item(self, value: Any) -> tuple[list[Any], bool]:
        self._maybe("on_item")
        return [value], False

    def on_notify(self) -> tuple[list[Any], bool]:
        self._maybe("on_notify")
        return [], False

    def on_eof(self) -> tuple[list[Any], bool]:
        self._maybe("on_eof")
        return [], False

    def notify_at(self) -> datetime | None:
        self._maybe("notify_at")
        if self.where == "notify_at_naive":
            return datetime(2000, 1, 1)
        if self.where == "on_notify":
            return datetime(2000, 1, 1, tzinfo=UTC)
        return None

    def snapshot(self) -> None:
        return None


def _stateful(where: str) -> Callable[[Boom], Callable[[Stream[Any]], Stream[Any]]]:
    def make(boom: Boom) -> Callable[[Stream[Any]], Stream[Any]]:
        if where == "builder":
            return lambda s: op.stateful("step", s, _raise(boom))
        return lambda s: op.stateful("step", s, lambda _r: _Logic(where, boom))

    return make


# name -> (makes `stream -> stream` that fails with the given Boom, needs keyed input)
CALLBACKS: dict[str, tuple[Callable[[Boom], Callable[[Stream[Any]], Any]], bool]] = {
    "map": (lambda b: lambda s: op.map("step", s, _raise(b)), False),
    "filter": (lambda b: lambda s: op.filter("step", s, _raise(b)), False),
    "filter_map": (lambda b: lambda s: op.filter_map("step", s, _raise(b)), False),
    "flat_map": (lambda b: lambda s: op.flat_map("step", s, _raise(b)), False),
    "flat_map_lazy": (lambda b: lambda s: op.flat_map("step", s, _lazy(b)), False),
    "flat_map_batch": (lambda b: lambda s: op.flat_map_batch("step", s, _raise(b)), False),
    "flat_map_batch_lazy": (lambda b: lambda s: op.flat_map_batch("step", s, _lazy(b)), False),
    "key_on": (lambda b: lambda s: op.key_on("step", s, _raise(b)), False),
    "map_value": (lambda b: lambda s: op.map_value("step", s, _raise(b)), True),
    "filter_value": (lambda b: lambda s: op.filter_value("step", s, _raise(b)), True),
    "flat_map_value": (lambda b: lambda s: op.flat_map_value("step", s, _raise(b)), True),
    "filter_map_value": (lambda b: lambda s: op.filter_map_value("step", s, _raise(b)), True),
    "branch": (lambda b: lambda s: op.branch("step", s, _raise(b)).trues, False),
    "inspect": (lambda b: lambda s: op.inspect("step", s, _raise(b)), False),
    "inspect_debug": (lambda b: lambda s: op.inspect_debug("step", s, _raise(b)), False),
    "enrich_getter": (
        lambda b: lambda s: op.enrich_cached("step", s, _raise(b), lambda c, x: c.get(x)),
        False,
    ),
    "enrich_mapper": (
        lambda b: lambda s: op.enrich_cached("step", s, str, _raise(b)),
        False,
    ),
    "stateful_map": (lambda b: lambda s: op.stateful_map("step", s, _raise(b)), True),
    "stateful_flat_map": (lambda b: lambda s: op.stateful_flat_map("step", s, _raise(b)), True),
    "stateful_builder": (_stateful("builder"), True),
    "stateful_on_item": (_stateful("on_item"), True),
    "stateful_on_notify": (_stateful("on_notify"), True),
    "stateful_on_eof": (_stateful("on_eof"), True),
    "stateful_notify_at": (_stateful("notify_at"), True),
    "fold_final_builder": (
        lambda b: lambda s: op.fold_final("step", s, _raise(b), lambda a, v: a),
        True,
    ),
    "fold_final_folder": (lambda b: lambda s: op.fold_final("step", s, list, _raise(b)), True),
    "reduce_final": (lambda b: lambda s: op.reduce_final("step", s, _raise(b)), True),
    "count_final": (lambda b: lambda s: op.count_final("step", s, _raise(b)), False),
    "max_final_by": (lambda b: lambda s: op.max_final("step", s, by=_raise(b)), True),
    "min_final_by": (lambda b: lambda s: op.min_final("step", s, by=_raise(b)), True),
}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", list(CALLBACKS))
def test_user_exception_is_chained_and_names_the_step(name: str, workers: int) -> None:
    make, keyed = CALLBACKS[name]
    boom = Boom(f"user failure in {name}")
    items: list[Any] = [(f"k{i % 2}", i) for i in range(6)] if keyed else list(range(6))
    flow = Dataflow("test")
    s = op.redistribute("spread", op.input("inp", flow, TestingSource(items, batch_size=2)))
    op.output("out", make(boom)(s), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        run(flow, workers)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert names_step(str(err), "test.step"), str(err)
    assert err.__cause__ is boom


@pytest.mark.parametrize("workers", [1, 2])
def test_notify_at_returning_a_naive_datetime(workers: int) -> None:
    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([("a", 1)]))
    op.output("out", op.stateful("step", s, lambda _r: _Logic("notify_at_naive", Boom())), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        run(flow, workers)
    assert names_step(str(info.value), "test.step")
    assert isinstance(info.value.__cause__, TypeError)
    assert "timezone" in str(info.value.__cause__)


@pytest.mark.parametrize("fuse", [True, False])
def test_fused_chain_names_the_failing_step(fuse: bool) -> None:
    boom = Boom("third")
    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([1, 2, 3]))
    s = op.map("first", s, lambda x: x + 1)
    s = op.filter("second", s, lambda x: x > 0)
    s = op.map("third", s, lambda x: _raise(boom)() if x == 3 else x)
    s = op.map("fourth", s, str)
    op.output("out", s, TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        execute(flow, fuse=fuse)
    assert names_step(str(info.value), "test.third")
    for other in ("first", "second", "fourth"):
        assert not names_step(str(info.value), f"test.{other}")
    assert info.value.__cause__ is boom
    assert "item 3" in str(info.value), "the message shows the failing item"


# --- sources and sinks ----------------------------------------------------


class _Part(StatefulSourcePartition[int, int]):
    def __init__(self, where: str, boom: Boom) -> None:
        self.where = where
        self.boom = boom
        self.n = 0

    def next_batch(self) -> Any:
        self.n += 1
        if self.n > 3:
            raise StopIteration()
        if self.where == "next_batch" and self.n == 2:
            raise self.boom
        if self.where == "next_batch_lazy" and self.n == 2:
            return _lazy(self.boom)()
        if self.where == "next_batch_not_iterable":
            return 5
        return [self.n]

    def next_awake(self) -> datetime | None:
        if self.where == "next_awake":
            raise self.boom
        if self.where == "next_awake_naive":
            return datetime(2000, 1, 1)
        return None

    def snapshot(self) -> int:
        return self.n

    def close(self) -> None:
        if self.where == "close":
            raise self.boom


class _FixedSource(FixedPartitionedSource[int, int]):
    def __init__(self, where: str, boom: Boom) -> None:
        self.where = where
        self.boom = boom

    def list_parts(self) -> list[str]:
        if self.where == "list_parts":
            raise self.boom
        return ["one", "two"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
        if self.where == "build_part":
            raise self.boom
        return _Part(self.where, self.boom)


class _StatelessPart(StatelessSourcePartition[int]):
    def __init__(self, inner: _Part) -> None:
        self.inner = inner

    def next_batch(self) -> Any:
        return self.inner.next_batch()

    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()

    def close(self) -> None:
        self.inner.close()


class _DynSource(DynamicSource[int]):
    def __init__(self, where: str, boom: Boom) -> None:
        self.where = where
        self.boom = boom

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StatelessPart:
        if self.where == "build":
            raise self.boom
        return _StatelessPart(_Part(self.where, self.boom))


SOURCE_FAILURES = ["next_batch", "next_awake", "list_parts", "build_part", "close"]


def _fails_at(flow: Dataflow, workers: int, step: str, boom: Boom) -> None:
    """Running ``flow`` on ``workers`` raises a `BytewaxRuntimeError` naming ``step``, caused by ``boom``."""
    with pytest.raises(BytewaxRuntimeError) as info:
        run(flow, workers)
    assert names_step(str(info.value), step), str(info.value)
    assert info.value.__cause__ is boom


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("where", SOURCE_FAILURES)
def test_fixed_source_failures(where: str, workers: int) -> None:
    boom = Boom(where)
    flow = Dataflow("test")
    op.output("out", op.input("src", flow, _FixedSource(where, boom)), TestingSink([]))
    _fails_at(flow, workers, "test.src", boom)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("where", ["build", "next_batch", "next_awake", "close"])
def test_dynamic_source_failures(where: str, workers: int) -> None:
    boom = Boom(where)
    flow = Dataflow("test")
    op.output("out", op.input("src", flow, _DynSource(where, boom)), TestingSink([]))
    _fails_at(flow, workers, "test.src", boom)


@pytest.mark.parametrize("where", ["next_batch_not_iterable", "next_awake_naive"])
def test_source_returning_the_wrong_type(where: str) -> None:
    flow = Dataflow("test")
    op.output("out", op.input("src", flow, _FixedSource(where, Boom())), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert names_step(str(info.value), "test.src")
    assert isinstance(info.value.__cause__, TypeError)


def test_source_batch_generator_failing_lazily() -> None:
    boom = Boom("lazy")
    flow = Dataflow("test")
    op.output("out", op.input("src", flow, _FixedSource("next_batch_lazy", boom)), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert names_step(str(info.value), "test.src")
    assert info.value.__cause__ is boom


class _SinkPart(StatelessSinkPartition[Any], StatefulSinkPartition[Any, None]):
    def __init__(self, where: str, boom: Boom) -> None:
        self.where = where
        self.boom = boom

    def write_batch(self, items: list[Any]) -> None:
        if self.where == "write_batch":
            raise self.boom

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        if self.where == "close":
            raise self.boom


class _DynSink(DynamicSink[Any]):
    def __init__(self, where: str, boom: Boom) -> None:
        self.where = where
        self.boom = boom

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SinkPart:
        if self.where == "build":
            raise self.boom
        return _SinkPart(self.where, self.boom)


class _FixedSink(FixedPartitionedSink[Any, None]):
    def __init__(self, where: str = "", boom: Boom | None = None) -> None:
        self.where = where
        self.boom = boom or Boom()

    def list_parts(self) -> list[str]:
        if self.where == "list_parts":
            raise self.boom
        return ["a", "b", "c"]

    def part_fn(self, item_key: str) -> int:
        if self.where == "part_fn":
            raise self.boom
        return len(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SinkPart:
        if self.where == "build_part":
            raise self.boom
        return _SinkPart(self.where, self.boom)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "where",
    [
        "build",
        "write_batch",
        "close",
    ],
)
def test_dynamic_sink_failures(where: str, workers: int) -> None:
    boom = Boom(where)
    flow = Dataflow("test")
    op.output("sink", op.input("src", flow, TestingSource(range(4))), _DynSink(where, boom))
    _fails_at(flow, workers, "test.sink", boom)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("where", ["list_parts", "build_part", "part_fn", "write_batch"])
def test_partitioned_sink_failures(where: str, workers: int) -> None:
    boom = Boom(where)
    flow = Dataflow("test")
    items = [(str(i) * (i % 3 + 1), i) for i in range(6)]
    op.output("sink", op.input("src", flow, TestingSource(items)), _FixedSink(where, boom))
    _fails_at(flow, workers, "test.sink", boom)


# --- failures on one worker stop the others -------------------------------


@pytest.mark.parametrize("workers", [2, 3])
def test_failure_on_one_worker_stops_the_cluster(workers: int) -> None:
    """Worker 0 has the only input; the failure is on another worker mid-stream."""
    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([(str(i), i) for i in range(200)], batch_size=3))
    failing_key = "137"

    def check(state: int | None, v: int) -> tuple[int, int]:
        if v == int(failing_key):
            raise Boom(failing_key)
        return v, v

    op.output("out", op.stateful_map("step", s, check), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        cluster_main(flow, [], 0, epoch_interval=timedelta(0), worker_count_per_proc=workers)
    assert names_step(str(info.value), "test.step")
    assert f'for key "{failing_key}"' in str(info.value), "the message names the key"


def test_failure_while_other_workers_wait_on_a_slow_source() -> None:
    """One worker fails while the others are parked waiting for `next_awake`."""

    class Slow(StatelessSourcePartition[int]):
        def __init__(self, worker: int) -> None:
            self.worker = worker
            self.sent = False

        def next_batch(self) -> list[int]:
            if self.worker == 1 and not self.sent:
                self.sent = True
                return [-1]
            return []

        def next_awake(self) -> datetime:
            return datetime.now(UTC) + timedelta(seconds=60)

    class Src(DynamicSource[int]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Slow:
            return Slow(worker_index)

    flow = Dataflow("test")
    s = op.map("step", op.input("inp", flow, Src()), lambda x: 1 // (x + 1))
    op.output("out", s, TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        cluster_main(flow, [], 0, worker_count_per_proc=3)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_error_message_of_raises_operator() -> None:
    flow = Dataflow("test")
    s = op.input("inp", flow, TestingSource([1, 2, 3]))
    op.output("out", s, TestingSink([]))
    op.raises("never", op.filter("big", s, lambda x: x > 2))
    with pytest.raises(BytewaxRuntimeError) as info:
        run_main(flow)
    assert names_step(str(info.value), "test.never")
    assert "3" in str(info.value)
