"""`headrace.dataflow`: building the step tree, step ids, streams, `operator`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import (
    Dataflow,
    DataflowId,
    MultiPort,
    Operator,
    SinglePort,
    Stream,
    f_repr,
    operator,
)
from headrace.testing import TestingSink, TestingSource, run_main

pytestmark = pytest.mark.timeout(30)


def _ids(ops: list[Operator]) -> list[str]:
    return [o.step_id for o in ops]


# --- Dataflow ---------------------------------------------------------------


def test_flow_id_is_kept() -> None:
    assert Dataflow("my_flow").flow_id == "my_flow"
    assert Dataflow("my_flow").substeps == []


@pytest.mark.parametrize("bad", ["a.b", ".", "x."])
def test_flow_id_cannot_contain_a_period(bad: str) -> None:
    with pytest.raises(ValueError, match="period"):
        Dataflow(bad)


@pytest.mark.parametrize(("bad", "exc"), [("", ValueError), (5, TypeError), (None, TypeError)])
def test_flow_id_must_be_a_non_empty_str(bad: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="'flow_id' must"):
        Dataflow(bad)


def test_dataflows_compare_by_identity() -> None:
    a, b = Dataflow("same"), Dataflow("same")
    assert a != b
    assert a == a
    assert len({a, b}) == 2


def test_dataflow_id() -> None:
    assert DataflowId("wc").flow_id == "wc"
    assert DataflowId("wc") == DataflowId("wc")


# --- step ids -------------------------------------------------------------


def test_step_ids_are_dotted_paths(flow: Dataflow) -> None:
    s = op.input("inp", flow, TestingSource([1]))
    m = op.map("double", s, lambda x: x * 2)
    op.output("out", m, TestingSink([]))
    assert _ids(flow.substeps) == ["test.inp", "test.double", "test.out"]
    assert _ids(flow.substeps[1].substeps) == ["test.double.flat_map_batch"]


def test_composite_operators_nest_their_substeps(flow: Dataflow) -> None:
    s = op.input("inp", flow, TestingSource([("a", 1)]))
    op.count_final("count", op.key_rm("unkey", s), str)
    count = flow.substeps[2]
    assert count.step_id == "test.count"
    assert count.core is None
    inner = _ids(count.substeps)
    assert all(i.startswith("test.count.") for i in inner)
    assert len(inner) >= 2


@pytest.mark.parametrize("bad", ["a.b", "x."])
def test_step_id_cannot_contain_a_period(flow: Dataflow, bad: str) -> None:
    with pytest.raises(ValueError, match="period"):
        op.input(bad, flow, TestingSource([1]))
    assert flow.substeps == []


@pytest.mark.parametrize(("bad", "exc"), [(5, TypeError), (None, TypeError), ("", ValueError)])
def test_step_id_must_be_a_non_empty_str(flow: Dataflow, bad: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="'step_id' must"):
        op.input(bad, flow, TestingSource([1]))
    assert flow.substeps == []


def test_same_step_id_in_different_parents_is_fine(flow: Dataflow) -> None:
    s = op.input("inp", flow, TestingSource([1, 2]))
    a = op.map("a", s, lambda x: x + 1)
    b = op.map("b", s, lambda x: x + 2)
    # Both composites have a substep named `flat_map_batch`.
    assert flow.substeps[1].substeps[0].step_id == "test.a.flat_map_batch"
    assert flow.substeps[2].substeps[0].step_id == "test.b.flat_map_batch"
    out: list[int] = []
    op.output("out", op.merge("merge", a, b), TestingSink(out))
    run_main(flow)
    assert sorted(out) == [2, 3, 3, 4]


def test_duplicate_step_id_is_rejected_and_nothing_is_added(flow: Dataflow) -> None:
    s = op.input("inp", flow, TestingSource([1]))
    op.map("m", s, str)
    with pytest.raises(ValueError, match=r"'test\.m' already exists"):
        op.filter("m", s, bool)
    assert _ids(flow.substeps) == ["test.inp", "test.m"]


# --- Stream ---------------------------------------------------------------


def test_stream_ids_and_flow(flow: Dataflow) -> None:
    s = op.input("inp", flow, TestingSource([1]))
    assert s.stream_id == "test.inp.down"
    assert s.flow() is flow
    m = op.map("m", s, str)
    assert m.flow() is flow
    b = op.branch("b", s, bool)
    assert (b.trues.stream_id, b.falses.stream_id) == ("test.b.trues", "test.b.falses")


def test_then_chains_operators(flow: Dataflow) -> None:
    out: list[int] = []
    (
        op.input("inp", flow, TestingSource([1, 2, 3]))
        .then(op.map, "add", lambda x: x + 1)
        .then(op.filter, "even", lambda x: x % 2 == 0)
        .then(op.output, "out", TestingSink(out))
    )
    run_main(flow)
    assert out == [2, 4]
    assert _ids(flow.substeps) == ["test.inp", "test.add", "test.even", "test.out"]


def test_then_passes_keyword_arguments(flow: Dataflow) -> None:
    a = op.input("a", flow, TestingSource([("k", 1)]))
    b = op.input("b", flow, TestingSource([("k", 2)]))
    out: list[Any] = []
    a.then(op.join, "join", b, emit_mode="final").then(op.output, "out", TestingSink(out))
    run_main(flow)
    assert out == [("k", (1, 2))]


def test_stream_is_a_frozen_value(flow: Dataflow) -> None:
    s = op.input("inp", flow, TestingSource([1]))
    with pytest.raises(AttributeError):
        s.stream_id = "other"  # type: ignore[misc]


# --- ports ----------------------------------------------------------------


def test_ports_record_connections(flow: Dataflow) -> None:
    a = op.input("a", flow, TestingSource([1]))
    b = op.input("b", flow, TestingSource([2]))
    m = op.merge("merge", a, b)
    merge = flow.substeps[2]
    assert merge.core == "merge"
    ups = merge.inp_ports["ups"]
    assert isinstance(ups, MultiPort)
    assert ups.stream_ids == {0: "test.a.down", 1: "test.b.down"}
    down = merge.out_ports["down"]
    assert isinstance(down, SinglePort)
    assert down.stream_id == m.stream_id
    mapped = op.map("m", m, str)
    mop = flow.substeps[3]
    assert mop.inp_ports["up"] == SinglePort("test.m.up", m.stream_id)
    assert mop.out_ports["down"].stream_ids == {"stream": mapped.stream_id}


def test_single_port_stream_ids() -> None:
    assert SinglePort("p", "s").stream_ids == {"stream": "s"}


# --- the operator decorator --------------------------------------------------


def test_custom_operator_nests_and_runs(flow: Dataflow) -> None:
    @operator
    def add_then_double(step_id: str, up: Stream[int], n: int = 1) -> Stream[int]:
        s = op.map("add", up, lambda x: x + n)
        return op.map("double", s, lambda x: x * 2)

    out: list[int] = []
    s = op.input("inp", flow, TestingSource([1, 2]))
    op.output("out", add_then_double("calc", s, n=10), TestingSink(out))
    run_main(flow)
    assert out == [22, 24]
    calc = flow.substeps[1]
    assert calc.step_id == "test.calc"
    assert _ids(calc.substeps) == ["test.calc.add", "test.calc.double"]
    assert calc.out_ports["down"].stream_ids == {"stream": "test.calc.double.flat_map_batch.down"}


def test_custom_operator_may_be_nested_in_another(flow: Dataflow) -> None:
    @operator
    def inner(step_id: str, up: Stream[int]) -> Stream[int]:
        return op.map("plus", up, lambda x: x + 1)

    @operator
    def outer(step_id: str, up: Stream[int]) -> Stream[int]:
        return inner("one", inner("two", up))

    out: list[int] = []
    s = op.input("inp", flow, TestingSource([0]))
    op.output("out", outer("o", s), TestingSink(out))
    run_main(flow)
    assert out == [2]
    assert _ids(flow.substeps[1].substeps) == ["test.o.two", "test.o.one"]
    assert _ids(flow.substeps[1].substeps[0].substeps) == ["test.o.two.plus"]


def test_custom_operator_with_star_streams_and_dataclass_output(flow: Dataflow) -> None:
    @dataclass(frozen=True)
    class Split:
        small: Stream[int]
        big: Stream[int]

    @operator
    def split_all(step_id: str, *ups: Stream[int], limit: int) -> Split:
        merged = op.merge("merge", *ups)
        b = op.branch("branch", merged, lambda x: x < limit)
        return Split(b.trues, b.falses)

    a = op.input("a", flow, TestingSource([1, 50]))
    b = op.input("b", flow, TestingSource([7, 70]))
    out = split_all("split", a, b, limit=10)
    assert isinstance(out, Split)
    small: list[int] = []
    big: list[int] = []
    op.output("small", out.small, TestingSink(small))
    op.output("big", out.big, TestingSink(big))
    run_main(flow)
    assert sorted(small) == [1, 7]
    assert sorted(big) == [50, 70]
    split = flow.substeps[2]
    assert set(split.out_ports) == {"small", "big"}
    assert isinstance(split.inp_ports["ups"], MultiPort)


def test_custom_operator_returning_a_tuple_of_streams(flow: Dataflow) -> None:
    @operator
    def pair(step_id: str, up: Stream[int]) -> tuple[Stream[int], Stream[int]]:
        return op.map("neg", up, lambda x: -x), op.map("sq", up, lambda x: x * x)

    neg, sq = pair("pair", op.input("inp", flow, TestingSource([3])))
    out: list[int] = []
    op.output("out", op.merge("merge", neg, sq), TestingSink(out))
    run_main(flow)
    assert sorted(out) == [-3, 9]
    assert set(flow.substeps[1].out_ports) == {"0", "1"}


def test_operator_without_a_stream_or_flow_argument_is_rejected() -> None:
    @operator
    def lonely(step_id: str, n: int) -> None:
        return None

    with pytest.raises(TypeError, match="no Stream"):
        lonely("x", 1)


def test_operator_without_parameters_is_rejected() -> None:
    with pytest.raises(TypeError, match="step_id"):

        @operator
        def nothing() -> None:
            return None


def test_stream_leaked_from_an_operator_body_cannot_be_used_outside(flow: Dataflow) -> None:
    leaked: list[Stream[int]] = []

    @operator
    def leaky(step_id: str, up: Stream[int]) -> Stream[int]:
        inner = op.map("inner", up, lambda x: x)
        leaked.append(inner)
        return op.map("result", inner, lambda x: x)

    s = op.input("inp", flow, TestingSource([1]))
    result = leaky("leaky", s)
    with pytest.raises(ValueError, match="scope"):
        op.merge("merge", result, leaked[0])


def test_failed_operator_body_leaves_no_step(flow: Dataflow) -> None:
    @operator
    def broken(step_id: str, up: Stream[int]) -> Stream[int]:
        op.map("ok", up, str)
        raise RuntimeError("bug in operator body")

    s = op.input("inp", flow, TestingSource([1]))
    with pytest.raises(RuntimeError, match="bug in operator body"):
        broken("broken", s)
    assert _ids(flow.substeps) == ["test.inp"]
    op.map("broken", s, str)


def test_operator_keeps_the_function_metadata() -> None:
    assert op.map.__name__ == "map"
    assert "one-to-one" in (op.map.__doc__ or "")
    assert op.map._headrace_operator is True  # type: ignore[attr-defined]


# --- f_repr ---------------------------------------------------------------


def _named(x: int) -> int:
    return x


def test_f_repr_names_function_and_line() -> None:
    text = f_repr(_named)
    assert "_named" in text
    assert "line" in text
    assert f_repr(functools.partial(_named)).startswith("<partial of ")
    assert "upper" in f_repr(str.upper)
    assert "lambda" in f_repr(lambda x: x)


def test_f_repr_of_a_callable_object() -> None:
    class Call:
        def __call__(self, x: int) -> int:
            return x

    assert isinstance(f_repr(Call()), str)


def test_operator_records_local_name_and_type(flow: Dataflow) -> None:
    """As in Bytewax, ``step_name`` is the id the user gave, not the operator's name."""
    s = op.input("inp", flow, TestingSource([1]))
    op.map("double", s, lambda x: x * 2)
    m = flow.substeps[1]
    assert (m.step_name, m.step_id, m.op_type) == ("double", "test.double", "map")
    inner = m.substeps[0]
    assert (inner.step_name, inner.op_type, inner.core) == (
        "flat_map_batch",
        "flat_map_batch",
        "flat_map_batch",
    )
