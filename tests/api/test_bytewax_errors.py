"""Errors a Bytewax program (or its tests) can match: Bytewax's exception types and words.

Each message below was observed from Bytewax 0.21.1 itself; Headrace may add a
hint after Bytewax's words, never change them, so ``pytest.raises(...,
match=...)`` written against Bytewax keeps passing.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.errors import BytewaxRuntimeError
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("value", [1, None, "yes", 0.0])
def test_branch_predicate_must_return_a_bool(workers: int, value: Any, cause_chain: Any) -> None:
    flow = Dataflow("h")
    b = op.branch("br", op.input("inp", flow, TestingSource([1, 2])), lambda x: value)
    out: list[Any] = []
    op.output("t", b.trues, TestingSink(out))
    op.output("f", b.falses, TestingSink(out))
    with pytest.raises(
        BytewaxRuntimeError, match=r'^return value of `predicate` in step "h\.br" must be a `bool`'
    ) as info:
        if workers == 1:
            run_main(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert isinstance(info.value.__cause__, TypeError)
    assert out == []


def test_branch_predicate_returning_bools_splits() -> None:
    flow = Dataflow("h")
    b = op.branch("br", op.input("inp", flow, TestingSource([1, 2, 3])), lambda x: x % 2 == 1)
    odd: list[int] = []
    even: list[int] = []
    op.output("t", b.trues, TestingSink(odd))
    op.output("f", b.falses, TestingSink(even))
    run_main(flow)
    assert (odd, even) == ([1, 3], [2])


# --- a flow's terminal steps ------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("terminal", ["inspect", "inspect_debug"])
def test_a_flow_whose_only_terminal_step_is_inspect_runs(
    workers: int, terminal: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = Dataflow("insp")
    s = op.map("m", op.input("inp", flow, TestingSource([1, 2])), lambda x: x * 10)
    seen: list[Any] = []
    if terminal == "inspect":
        op.inspect("look", s, lambda step_id, x: seen.append((step_id, x)))
    else:
        op.inspect_debug("look", s, lambda step_id, x, _epoch, _w: seen.append((step_id, x)))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert sorted(seen) == [("insp.look", 10), ("insp.look", 20)]


def test_default_inspect_prints_like_bytewax(capsys: pytest.CaptureFixture[str]) -> None:
    flow = Dataflow("insponly")
    op.inspect("insp", op.map("m", op.input("inp", flow, TestingSource([1, 2])), lambda x: x * 10))
    run_main(flow)
    assert capsys.readouterr().out == "insponly.insp: 10\ninsponly.insp: 20\n"


@pytest.mark.parametrize(
    ("build", "words"),
    [
        pytest.param(lambda flow: None, "at least one input step", id="empty"),
        pytest.param(
            lambda flow: op.map("m", op.input("inp", flow, TestingSource([1])), str),
            "at least one output or inspect step",
            id="no-output",
        ),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_flow_that_cannot_run_fails_at_build_in_bytewax_words(build: Any, words: str, workers: int) -> None:
    flow = Dataflow("f")
    build(flow)
    with pytest.raises(BytewaxRuntimeError) as info:
        if workers == 1:
            run_main(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
    # Bytewax: BytewaxRuntimeError("error building production dataflow") from
    # ValueError("Dataflow needs to contain at least one ... step; add with ...").
    assert str(info.value).startswith("error building production dataflow")
    cause = info.value.__cause__
    assert isinstance(cause, ValueError)
    assert str(cause).startswith(f"Dataflow needs to contain {words}; add with `")
    assert "'f'" in str(cause)  # Headrace's hint: which dataflow
    # Not a ValueError itself: Bytewax's own test nests raises(RuntimeError)
    # around raises(ValueError, match=...), which passes only then.
    assert not isinstance(info.value, ValueError)


# --- building a dataflow ----------------------------------------------------


def _flow_and_stream() -> tuple[Dataflow, Any]:
    flow = Dataflow("f")
    return flow, op.input("inp", flow, TestingSource([1, 2]))


BUILD_ERRORS = [
    pytest.param(
        lambda f, s: Dataflow("a.b"), ValueError, "flow ID can't contain a period `.`", id="flow-id-period"
    ),
    pytest.param(
        lambda f, s: Dataflow(cast(str, 123)), TypeError, "'flow_id' must be a `str`", id="flow-id-int"
    ),
    pytest.param(lambda f, s: op.map(123, s, str), TypeError, "'step_id' must be a `str`", id="step-id-int"),
    pytest.param(
        lambda f, s: op.map(None, s, str), TypeError, "'step_id' must be a `str`", id="step-id-none"
    ),
    pytest.param(
        lambda f, s: s.then(op.map, b"x", str),
        TypeError,
        "'step_id' must be a `str`",
        id="then-step-id-bytes",
    ),
    pytest.param(
        lambda f, s: op.map("a.b", s, str),
        ValueError,
        "'step_id' can't contain any periods '.'",
        id="step-id-period",
    ),
    pytest.param(
        lambda f, s: op.input("inp", f, TestingSource([1])),
        ValueError,
        "step 'f.inp' already exists; do you have two steps with the same ID?",
        id="duplicate-input",
    ),
    pytest.param(
        lambda f, s: op.count_final("c", s, str) and op.count_final("c", s, str),
        ValueError,
        "step 'f.c' already exists; do you have two steps with the same ID?",
        id="duplicate-composite",
    ),
    pytest.param(
        lambda f, s: op.map("m", [s], str),
        TypeError,
        "'up' argument must be a `Stream`; got a <class 'list'> instead; did you "
        "forget to unpack the result of an operator that returns multiple streams?",
        id="list-for-stream",
    ),
    pytest.param(
        lambda f, s: op.map("m", f, str),
        TypeError,
        "'up' argument must be a `Stream`; got a <class 'headrace.dataflow.Dataflow'>",
        id="dataflow-for-stream",
    ),
    pytest.param(
        lambda f, s: op.key_on("k", up=None, key=str),
        TypeError,
        "'up' argument must be a `Stream`; got a <class 'NoneType'> instead",
        id="keyword-none",
    ),
    pytest.param(
        lambda f, s: op.merge("m", s, 5),
        TypeError,
        "'ups' *args all must be a `Stream`; got a <class 'int'> instead",
        id="merge-int",
    ),
    pytest.param(
        lambda f, s: op.join("j", op.key_on("k", s, str), [s]),
        TypeError,
        "'sides' *args all must be a `Stream`; got a <class 'list'> instead",
        id="join-list",
    ),
    pytest.param(
        lambda f, s: op.map(5, [s], str),
        TypeError,
        "'up' argument must be a `Stream`",
        id="stream-checked-before-step-id",
    ),
]


@pytest.mark.parametrize(("build", "exc", "words"), BUILD_ERRORS)
def test_dataflow_construction_errors_use_bytewax_words(build: Any, exc: type[Exception], words: str) -> None:
    flow, s = _flow_and_stream()
    before = [sub.step_id for sub in flow.substeps]
    with pytest.raises(exc) as info:
        build(flow, s)
    assert type(info.value) is exc
    assert str(info.value).startswith(words), str(info.value)
    assert [sub.step_id for sub in flow.substeps][: len(before)] == before


def test_custom_operator_stream_parameters_are_checked() -> None:
    from headrace.dataflow import Stream, operator

    @operator
    def double(step_id: str, up: Stream[int]) -> Stream[int]:
        return op.map("m", up, lambda x: x * 2)

    @operator
    def unannotated(step_id, up):
        return op.map("m", up, lambda x: x * 2)

    flow, s = _flow_and_stream()
    with pytest.raises(TypeError, match=r"^'up' argument must be a `Stream`; got a <class 'int'>"):
        double("d", 5)
    out: list[int] = []
    op.output("out", op.merge("all", double("d", s), unannotated("u", s)), TestingSink(out))
    run_main(flow)
    assert sorted(out) == [2, 2, 4, 4]


def test_a_stream_smuggled_into_an_operator_fails_as_bytewax() -> None:
    """Bytewax: AssertionError "inconsistent stream scoping; ..." (its own test matches it)."""
    from headrace.dataflow import Stream, operator

    @operator
    def test_op(step_id: str, up: Stream[Any], not_allowed: list[Stream[Any]]) -> Stream[Any]:
        return op.merge("merge", up, *not_allowed)

    flow = Dataflow("test_df")
    inp1 = op.input("inp1", flow, TestingSource([]))
    inp2 = op.input("inp2", flow, TestingSource([]))
    with pytest.raises(AssertionError, match=r"^inconsistent stream scoping; step 'merge'"):
        test_op("test_op", inp1, [inp2])
    other = op.input("inp", Dataflow("other"), TestingSource([]))
    with pytest.raises(ValueError, match=r"^inconsistent stream scoping; .*dataflow 'other'"):
        op.merge("m", inp1, other)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    ("item", "words"),
    [
        (1, "`(key, value)` 2-tuple from upstream for routing; got a `int` instead"),
        ((1, 2), "`str` keys in `(key, value)` from upstream; got a `int` instead"),
    ],
)
def test_unkeyed_input_to_a_stateful_step_is_a_type_error(workers: int, item: Any, words: str) -> None:
    """Bytewax raises a TypeError (the API reference promises one); Headrace's is also its error."""
    flow = Dataflow("nk")
    s = op.input("inp", flow, TestingSource([item]))
    op.output("out", op.stateful_map("sm", s, lambda st, v: (st, v)), TestingSink([]))
    with pytest.raises(TypeError) as info:
        if workers == 1:
            run_main(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert isinstance(info.value, BytewaxRuntimeError)
    assert str(info.value).startswith(
        f'step "nk.sm.stateful_flat_map.stateful.stateful_batch" requires {words}'
    )


def test_an_operator_called_with_bad_arguments_says_so_as_bytewax() -> None:
    """Bytewax: TypeError "operator 'join' called incorrectly; see cause above" from the bind error."""
    _flow, s = _flow_and_stream()
    with pytest.raises(TypeError) as info:
        op.join("j", s, s, running=True)  # 0.19's keyword, renamed in 0.21
    assert str(info.value) == "operator 'join' called incorrectly; see cause above"
    assert isinstance(info.value.__cause__, TypeError)
    assert str(info.value.__cause__) == "got an unexpected keyword argument 'running'"
    with pytest.raises(TypeError, match=r"^operator 'map' called incorrectly") as info:
        op.map("m", s)
    assert str(info.value.__cause__) == "missing a required argument: 'mapper'"


def test_join_modes_are_exported() -> None:
    import typing

    from headrace.operators import JoinEmitMode, JoinInsertMode

    assert typing.get_args(JoinInsertMode) == ("first", "last", "product")
    assert typing.get_args(JoinEmitMode) == ("complete", "final", "running")


# --- connector arguments ----------------------------------------------------


def test_kafka_connectors_check_brokers_and_topics_in_bytewax_words() -> None:
    from headrace.connectors.kafka import KafkaSink, KafkaSource
    from headrace.connectors.kafka import operators as kop

    cases = [
        (lambda: KafkaSource("localhost:9092", ["t"]), "brokers must be an iterable and not a string"),
        (lambda: KafkaSource(["localhost:9092"], "t"), "topics must be an iterable and not a string"),
        (lambda: KafkaSource("localhost:9092", "t"), "brokers must be an iterable and not a string"),
        (lambda: KafkaSink("localhost:9092", "t"), "brokers must be an iterable and not a string"),
        (
            lambda: kop.input("k", Dataflow("k"), brokers="b:1", topics=["t"]),
            "brokers must be an iterable and not a string",
        ),
        (
            lambda: kop.input("k", Dataflow("k"), brokers=["b:1"], topics="t"),
            "topics must be an iterable and not a string",
        ),
        (lambda: KafkaSource(cast(Any, 5), ["t"]), "brokers must be an iterable of 'host:port' strings"),
    ]
    for build, words in cases:
        with pytest.raises(TypeError) as info:
            build()
        assert str(info.value).startswith(words), str(info.value)


def test_random_metric_source_interval_must_be_a_timedelta() -> None:
    from headrace.connectors.demo import RandomMetricSource

    with pytest.raises(TypeError, match="interval must be a `timedelta`; got int 5"):
        RandomMetricSource("m", interval=cast(Any, 5))
