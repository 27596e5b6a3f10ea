"""`reduce_final` kept in a dict, and folded by the chain that feeds it, changes nothing but speed.

`ReduceRun` replaces a `_ReduceFinalLogic` per key; the stateless chain
before the step folds each pair into it directly (`Wiring._fold_into`),
and over more than one worker folds the pairs of keys another worker owns
into that worker's partial results (`Exchange.fold_target`), as the
step's combiner does with what the router sends. Each test runs the same flow both ways, or against
`StatefulRun` driving the logic objects, and compares outputs, snapshot
bytes, resumed state and error messages exactly.
"""

from __future__ import annotations

import pickle
import random
import time
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headrace._engine._basics as basics
import headrace.operators as op
from headrace._engine import execute, group_owner, key_group
from headrace._engine._stateful_run import ReduceRun, StatefulRun
from headrace._engine._wiring import Wiring
from headrace.dataflow import Dataflow
from headrace.errors import BytewaxRuntimeError
from headrace.inputs import FixedPartitionedSource, StatefulSourcePartition
from headrace.recovery import RecoveryConfig
from headrace.testing import TestingSink, TestingSource, run_main
from tests.support.stores import store_at

ZERO = timedelta(0)


def _fold(a: int, b: int) -> int:
    # Not associative: any change in the order of calls changes the result.
    return a * 3 - b


def _fold_loud(a: int, b: int) -> int:
    # Names a global, so it might print: the engine keeps Bytewax's order and does not fold in the chain.
    return _fold(a, b)


def _add(a: int, b: int) -> int:
    return a + b


def _add_loud(a: int, b: int) -> int:
    return _add(a, b)


def _words_flow(
    lines: list[Any], out: list[Any], reducer: Any = _fold, name: str = "wc", batch_size: int = 3
) -> Dataflow:
    flow = Dataflow(name)
    s = op.input("inp", flow, TestingSource(lines, batch_size=batch_size))
    s = op.flat_map("split", s, str.split)
    s = op.key_on("key", s, lambda w: w[0])
    s = op.map_value("len", s, len)
    op.output("out", op.reduce_final("sum", s, reducer), TestingSink(out))
    return flow


def _reference(lines: list[str], reducer: Any) -> list[tuple[str, int]]:
    acc: dict[str, int] = {}
    for line in lines:
        for w in line.split():
            k, v = w[0], len(w)
            acc[k] = v if k not in acc else reducer(acc[k], v)
    return sorted(acc.items())


def _folded_steps(flow: Dataflow, workers: int = 1) -> list[bool]:
    """Run ``flow``; for each chain that feeds a stateful step, whether it folds into it."""
    seen: list[Any] = []
    original = Wiring._fold_into

    def spy(self: Wiring, first: Any, stages: Any, step: Any) -> Any:
        got = original(self, first, stages, step)
        seen.append(got is not None)
        return got

    Wiring._fold_into = spy  # type: ignore[method-assign]
    try:
        execute(flow, epoch_interval=ZERO, workers_per_process=workers)
    finally:
        Wiring._fold_into = original  # type: ignore[method-assign]
    return seen


_LINES = st.lists(
    st.lists(st.sampled_from(["ab", "abc", "b", "bcd", "c", "ca", "d"]), max_size=6).map(" ".join),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(lines=_LINES, fuse=st.booleans(), loud=st.booleans(), workers=st.sampled_from([1, 2]))
def test_same_output_as_a_plain_fold(lines: list[str], fuse: bool, loud: bool, workers: int) -> None:
    # Over two workers the combiner pre-reduces (and values from two
    # workers interleave): only an associative, commutative reducer is exact there.
    reducer = [[_fold, _fold_loud], [_add, _add_loud]][workers - 1][loud]
    out: list[Any] = []
    execute(_words_flow(lines, out, reducer), workers_per_process=workers, fuse=fuse, epoch_interval=ZERO)
    assert sorted(out) == _reference(lines, reducer)
    # End of input emits in key order on each worker, as Bytewax does.
    if workers == 1:
        assert out == sorted(out)


def test_the_chain_folds_only_where_nothing_can_tell() -> None:
    assert _folded_steps(_words_flow(["ab b"], [])) == [True]
    assert _folded_steps(_words_flow(["ab b"], [], _fold_loud)) == [False]
    flow = Dataflow("ttl")
    s = op.key_on("key", op.input("inp", flow, TestingSource(["a"])), lambda w: w)
    op.output("out", op.reduce_final("sum", s, _fold, ttl=timedelta(hours=1)), TestingSink([]))
    assert _folded_steps(flow) == [False]


def _drive(run: StatefulRun, batches: list[list[tuple[str, int]]]) -> tuple[list[Any], list[Any], list[Any]]:
    """Feed ``batches``; return (snapshot after them, outputs at EOF, snapshot after EOF)."""
    outs: list[Any] = []
    run.push = outs.extend
    for batch in batches:
        run.deliver(batch)
    first = sorted(run.snapshot_entries(8))
    run.on_eof()
    return first, outs, sorted(run.snapshot_entries(8))


def _sum_step(reducer: Any = _fold) -> Any:
    flow = Dataflow("d")
    s = op.input("inp", flow, TestingSource([("a", 1)]))
    op.output("out", op.reduce_final("sum", s, reducer), TestingSink([]))
    from headrace._engine._plan import build_plan

    return next(step for step in build_plan(flow).steps if step.kind == "stateful_batch")


def test_same_snapshots_and_eof_as_the_logic_objects() -> None:
    rng = random.Random(7)
    batches = [
        [(rng.choice("abcde"), rng.randint(0, 9)) for _ in range(rng.randint(1, 12))] for _ in range(20)
    ]
    step = _sum_step()
    plain = _drive(StatefulRun(step, None, True, True), batches)
    folded = _drive(ReduceRun(step, None, True, True), batches)
    assert folded == plain
    assert dict((k, pickle.loads(b)) for _, _, k, b in plain[0])["a"][0] is True
    assert all(blob == b"" for *_, blob in plain[2])


def test_restores_what_the_logic_objects_snapshot() -> None:
    step = _sum_step()
    states = {
        "a": pickle.dumps((True, 5)),
        "b": pickle.dumps((False, None)),
        "c": pickle.dumps(("headrace.ttl.v1", 1.0, (True, 2))),
    }
    runs = []
    for kind in (StatefulRun, ReduceRun):
        run = kind(step, None, True, True)
        run.restore(states)
        runs.append(_drive(run, [[("b", 4), ("d", 1)]]))
    assert runs[0] == runs[1]
    assert runs[1][1] == [("a", 5), ("b", 4), ("c", 2), ("d", 1)]


def test_resume_after_abort_folds_on_from_the_committed_state(location: str) -> None:
    lines = ["ab b", "abc", TestingSource.ABORT(), "bcd ab", "c"]
    config = RecoveryConfig(location)
    out: list[Any] = []
    run_main(_words_flow(lines, out, name="rec", batch_size=1), epoch_interval=ZERO, recovery_config=config)
    assert out == []
    stored = store_at(location, "rec").load("rec.sum.stateful_batch", range(256))
    blobs = {k: pickle.loads(b) for states in stored.values() for k, b in states.items()}
    assert blobs == {"a": (True, _fold(2, 3)), "b": (True, 1)}
    out2: list[Any] = []
    run_main(_words_flow(lines, out2, name="rec", batch_size=1), epoch_interval=ZERO, recovery_config=config)
    real = [line for line in lines if isinstance(line, str)]
    assert out2 == _reference(real, _fold)


@pytest.mark.parametrize("reducer", [lambda a, b: a + b, lambda a, b: len(str(a)) and a + b])
def test_a_failing_reducer_fails_in_the_same_words(reducer: Any) -> None:
    def run(fuse: bool) -> str:
        flow = Dataflow("err")
        s = op.input("inp", flow, TestingSource([("a", 1), ("b", 2), ("a", "x")]))
        s = op.key_on("key", op.map("unpack", s, lambda kv: kv), lambda kv: kv[0])
        s = op.map_value("v", s, lambda kv: kv[1])
        op.output("out", op.reduce_final("sum", s, reducer), TestingSink([]))
        with pytest.raises(BytewaxRuntimeError) as info:
            execute(flow, fuse=fuse)
        assert isinstance(info.value.__cause__, TypeError)
        return str(info.value)

    fused = run(True)
    assert fused == run(False)
    assert fused == (
        'error calling `StatefulBatchLogic.on_batch` in step "err.sum.fold_final.stateful.stateful_batch" '
        "for key \"a\": TypeError: unsupported operand type(s) for +: 'int' and 'str'"
    )


def test_a_failing_reducer_fails_as_with_the_logic_objects() -> None:
    step = _sum_step(lambda a, b: a + b)
    errors = []
    for kind in (StatefulRun, ReduceRun):
        run = kind(step, None, False, True)
        with pytest.raises(BytewaxRuntimeError) as info:
            run.deliver([("b", 1), ("a", 1), ("a", None)])
        errors.append((str(info.value), type(info.value.__cause__)))
    assert errors[0] == errors[1]


def _split_gen(line: str) -> Any:
    return (w for w in line.split())


def _split_tuple(line: str) -> tuple[str, ...]:
    return tuple(line.split())


@pytest.mark.parametrize("shape", ["list", "generator", "tuple", "filtered", "no_fan_out"])
def test_the_steps_count_the_same_items_folded_or_not(shape: str) -> None:
    from prometheus_client import REGISTRY

    lines = ["ab b abc", "", "b c", "ca ca ca d"]
    step_ids = ("m.sum.stateful_batch", "m.split.flat_map_batch", "m.key.flat_map_batch")

    def counts(fuse: bool) -> list[Any]:
        seen: list[Any] = []

        def look(kv: Any) -> Any:
            if not seen:  # inside the run, after every fold: the series still exist
                for sid in step_ids:
                    for name in ("item_inp_count_total", "item_out_count_total"):
                        seen.append(REGISTRY.get_sample_value(name, {"step_id": sid, "worker_index": "0"}))
            return kv

        flow = Dataflow("m")
        s = op.input("inp", flow, TestingSource(lines, batch_size=3))
        if shape == "no_fan_out":
            s = op.key_on("key", s, lambda w: w[:1] or "-")
        else:
            split = {"list": str.split, "generator": _split_gen, "tuple": _split_tuple}.get(shape, str.split)
            s = op.flat_map("split", s, split)
            if shape == "filtered":
                s = op.filter("long", s, lambda w: len(w) > 1)
            s = op.key_on("key", s, lambda w: w[0])
        s = op.map_value("one", s, lambda _w: 1)
        out: list[Any] = []
        op.output("out", op.map("look", op.reduce_final("sum", s, _add), look), TestingSink(out))
        execute(flow, fuse=fuse)
        assert out == sorted(out)
        return [seen, out]

    folded = counts(True)
    assert folded == counts(False)
    assert folded[0][0] == sum(n for _, n in folded[1])  # the step's items in: every pair folded


def _owner(key: str) -> int:
    return group_owner(key_group(key, 256), 256, 2)


def test_over_two_workers_the_chain_folds_a_combinable_reducer() -> None:
    # The one source partition is worker 0's: only its chain is built.
    assert _folded_steps(_words_flow(["ab b"], [], _add), workers=2) == [True]
    assert _folded_steps(_words_flow(["ab b"], [], _add_loud), workers=2) == [False]


@pytest.mark.parametrize("fuse", [True, False])
def test_over_two_workers_the_sender_folds_each_key_in_order(
    monkeypatch: pytest.MonkeyPatch, fuse: bool
) -> None:
    # One source partition: worker 0 reads everything; with no flush before
    # the end, each key the other worker owns crosses once, as one partial
    # folded in item order, so even a non-associative reducer comes out exact.
    monkeypatch.setattr(basics, "EXCHANGE_FLUSH_SECONDS", 3600.0)
    rng = random.Random(3)
    words = ["ab", "abc", "b", "bcd", "c", "ca", "d", "e", "fg", "h"]
    lines = [" ".join(rng.choice(words) for _ in range(5)) for _ in range(200)]
    assert {_owner(w[0]) for w in words} == {0, 1}
    out: list[Any] = []
    execute(_words_flow(lines, out, _fold), workers_per_process=2, fuse=fuse)
    assert sorted(out) == _reference(lines, _fold)


def test_over_two_workers_the_step_counts_what_its_chain_folds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prometheus_client import REGISTRY

    monkeypatch.setattr(basics, "EXCHANGE_FLUSH_SECONDS", 3600.0)
    lines = ["ab b abc", "", "b c", "ca ca ca d", "e fg h"] * 7
    step_ids = ("wc2.sum.stateful_batch", "wc2.split.flat_map_batch")

    def counts(fuse: bool) -> list[Any]:
        # A worker's output comes after its own end of input, so the last
        # reading (each worker has some output) sees both workers' final counts.
        readings: list[list[Any]] = []

        def look(kv: Any) -> Any:
            readings.append(
                [
                    REGISTRY.get_sample_value(name, {"step_id": sid, "worker_index": w})
                    for sid in step_ids
                    for name in ("item_inp_count_total", "item_out_count_total")
                    for w in ("0", "1")
                ]
            )
            return kv

        out: list[Any] = []
        flow = Dataflow("wc2")
        s = op.input("inp", flow, TestingSource(lines, batch_size=3))
        s = op.flat_map("split", s, str.split)
        s = op.key_on("key", s, lambda w: w[0])
        s = op.map_value("len", s, len)
        op.output("out", op.map("look", op.reduce_final("sum", s, _add), look), TestingSink(out))
        execute(flow, workers_per_process=2, fuse=fuse)
        assert sorted(out) == _reference(lines, _add)
        return readings[-1]

    folded, unfolded = counts(True), counts(False)
    # Everything but the step's items in is the same.
    assert folded[2:] == unfolded[2:]
    pairs = sum(len(line.split()) for line in lines)
    remote = sum(_owner(w[0]) for line in lines for w in line.split())
    partials = len({w[0] for line in lines for w in line.split() if _owner(w[0]) == 1})
    # The step's items in on worker 1: one partial per key it owns. On
    # worker 0: the pairs its chain folded, or unfolded, those the router kept.
    assert folded[:2] == [pairs, partials]
    assert unfolded[:2] == [pairs - remote, partials]


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("owner", [0, 1])
def test_over_two_workers_a_failing_reducer_fails_in_the_same_words(fuse: bool, owner: int) -> None:
    key = next(k for k in "abcdefgh" if _owner(k) == owner)
    flow = Dataflow("err2")
    s = op.input("inp", flow, TestingSource([(key, 1), ("z", 2), (key, "x")]))
    s = op.key_on("key", op.map("unpack", s, lambda kv: kv), lambda kv: kv[0])
    s = op.map_value("v", s, lambda kv: kv[1])
    op.output("out", op.reduce_final("sum", s, lambda a, b: a + b), TestingSink([]))
    with pytest.raises(BytewaxRuntimeError) as info:
        execute(flow, fuse=fuse, workers_per_process=2)
    assert isinstance(info.value.__cause__, TypeError)
    assert str(info.value) == (
        'error calling `StatefulBatchLogic.on_batch` in step "err2.sum.fold_final.stateful.stateful_batch" '
        f"for key \"{key}\": TypeError: unsupported operand type(s) for +: 'int' and 'str'"
    )


@pytest.mark.parametrize("fuse", [True, False])
def test_over_two_workers_resume_after_abort_folds_on_from_the_committed_state(
    location: str, fuse: bool
) -> None:
    lines = ["ab b e", "abc fg", "h", TestingSource.ABORT(), "bcd ab h", "c e"]
    config = RecoveryConfig(location)
    name = f"rec2{int(fuse)}"

    def run() -> list[Any]:
        out: list[Any] = []
        flow = _words_flow(lines, out, _add, name=name, batch_size=1)
        execute(flow, workers_per_process=2, fuse=fuse, epoch_interval=ZERO, recovery=config)
        return out

    assert run() == []
    stored = store_at(location, name).load(f"{name}.sum.stateful_batch", range(256))
    blobs = {k: pickle.loads(b) for states in stored.values() for k, b in states.items()}
    assert blobs == {"a": (True, 5), "b": (True, 1), "e": (True, 1), "f": (True, 2), "h": (True, 1)}
    real = [line for line in lines if isinstance(line, str)]
    assert sorted(run()) == _reference(real, _add)


class _AfterPartial(StatefulSourcePartition[Any, None]):
    def __init__(self, items: list[Any], wait_for: str | None) -> None:
        self.items = items
        self.wait_for = wait_for
        self.deadline = time.monotonic() + 10.0

    def next_batch(self) -> list[Any]:
        if not self.items:
            raise StopIteration
        if self.wait_for is not None:
            from prometheus_client import REGISTRY

            got = REGISTRY.get_sample_value(
                "item_inp_count_total", {"step_id": self.wait_for, "worker_index": "1"}
            )
            if not got:
                assert time.monotonic() < self.deadline, "the partial never reached worker 1"
                return []
        items, self.items = self.items, []
        return items

    def snapshot(self) -> None:
        return None


class _TwoParts(FixedPartitionedSource[Any, None]):
    """Partition "a" (worker 0) sends its items at once; "b" (worker 1) only
    once worker 1's step has taken in the partial of "a"'s items."""

    def __init__(self, first: list[Any], then: list[Any], step_id: str) -> None:
        self.parts = {"a": (first, None), "b": (then, step_id)}

    def list_parts(self) -> list[str]:
        return ["a", "b"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _AfterPartial:
        items, wait_for = self.parts[for_part]
        return _AfterPartial(list(items), wait_for)


@pytest.mark.parametrize("last", [10, "x"])
def test_a_key_first_seen_as_a_partial_folds_on_from_it(last: Any) -> None:
    # Worker 1 owns the key; its step makes the key's cell from worker 0's
    # partial, then its own chain folds into that same cell.
    key = next(k for k in "abcdefgh" if _owner(k) == 1)
    flow = Dataflow("late1")
    source = _TwoParts([(key, 1), (key, 2)], [(key, last)], "late1.sum.stateful_batch")
    s = op.key_on("key", op.input("inp", flow, source), lambda kv: kv[0])
    s = op.map_value("v", s, lambda kv: kv[1])
    out: list[Any] = []
    op.output("out", op.reduce_final("sum", s, _add), TestingSink(out))
    if last == "x":
        with pytest.raises(BytewaxRuntimeError) as info:
            execute(flow, workers_per_process=2)
        step = "late1.sum.fold_final.stateful.stateful_batch"
        assert str(info.value) == (
            f'error calling `StatefulBatchLogic.on_batch` in step "{step}" for key "{key}": '
            "TypeError: unsupported operand type(s) for +: 'int' and 'str'"
        )
    else:
        execute(flow, workers_per_process=2)
        assert out == [(key, 13)]
