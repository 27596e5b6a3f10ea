"""Fusing chains of stateless steps changes nothing but speed.

Hypothesis draws random, well-typed chains of item-level operators (plus
`inspect_debug` and an opaque `flat_map_batch`), random inputs and batch
sizes. The same chain runs fused, unfused, and through a plain-Python
reference; outputs, what each inspector saw, and errors must agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headrace.operators as op
from headrace._engine import execute
from headrace._engine._fuse import EpochRef, Stage, compile_chain
from headrace.dataflow import Dataflow, Stream
from headrace.errors import BytewaxRuntimeError
from headrace.testing import TestingSink, TestingSource

pytestmark = pytest.mark.timeout(120)

PLAIN_KINDS = ["map", "filter", "filter_map", "flat_map", "flatten", "key_on", "inspect", "batch"]
KEYED_KINDS = [
    "map_value",
    "filter_value",
    "filter_map_value",
    "flat_map_value",
    "key_rm",
    "inspect",
    "batch",
]


@dataclass(frozen=True)
class Step:
    """One drawn operator with its integer parameters ``a`` and ``b`` (b >= 2)."""

    kind: str
    a: int
    b: int
    boom: bool = False  # raise ValueError on items the step would see with v % 5 == 0


def _maybe_boom(step: Step, v: int) -> None:
    if step.boom and v % 5 == 0:
        msg = f"boom on {v}"
        raise ValueError(msg)


def item_fn(step: Step) -> Callable[..., Any]:
    """The user function of an item-level step (plain ints or `(str, int)` pairs)."""
    a, b, kind = step.a, step.b, step.kind

    def mapper(x: int) -> int:
        _maybe_boom(step, x)
        return x * a + b

    def predicate(x: int) -> bool:
        _maybe_boom(step, x)
        return x % b != 0

    def filter_mapper(x: int) -> int | None:
        _maybe_boom(step, x)
        return None if x % b == 0 else x - a

    def flat_mapper(x: int) -> list[int]:
        _maybe_boom(step, x)
        return [x + i * a for i in range(x % b)]

    def to_list(x: int) -> list[int]:
        _maybe_boom(step, x)
        return [x, -x, x + a][: x % b]

    def key(x: int) -> str:
        _maybe_boom(step, x)
        return f"k{x % b}"

    return {
        "map": mapper,
        "map_value": mapper,
        "filter": predicate,
        "filter_value": predicate,
        "filter_map": filter_mapper,
        "filter_map_value": filter_mapper,
        "flat_map": flat_mapper,
        "flat_map_value": flat_mapper,
        "flatten": to_list,
        "key_on": key,
    }.get(kind, mapper)


@st.composite
def chains(draw: st.DrawFn, max_len: int = 8, allow_boom: bool = False) -> list[Step]:
    steps: list[Step] = []
    keyed = False
    boom_at = draw(st.integers(-1, max_len - 1)) if allow_boom else -1
    for i in range(draw(st.integers(0, max_len))):
        kind = draw(st.sampled_from(KEYED_KINDS if keyed else PLAIN_KINDS))
        boom = i == boom_at and kind not in ("inspect", "batch", "key_rm")
        steps.append(Step(kind, draw(st.integers(-3, 3)), draw(st.integers(2, 4)), boom))
        if kind == "key_on":
            keyed = True
        elif kind == "key_rm":
            keyed = False
    return steps


items_st = st.lists(st.integers(-20, 20), max_size=30)
batch_size_st = st.integers(1, 7)


# --- the plain-Python reference ------------------------------------------


def reference(steps: list[Step], items: list[int], batch_size: int) -> tuple[list[Any], dict[int, list[Any]]]:
    """Apply ``steps`` batch by batch; return outputs and what each inspect step saw."""
    out: list[Any] = []
    seen: dict[int, list[Any]] = {i: [] for i, s in enumerate(steps) if s.kind == "inspect"}
    for start in range(0, len(items), batch_size):
        batch: list[Any] = items[start : start + batch_size]
        for i, step in enumerate(steps):
            if not batch:
                break
            batch = _apply(step, i, batch, seen)
        out.extend(batch)
    return out, seen


def _apply(step: Step, i: int, batch: list[Any], seen: dict[int, list[Any]]) -> list[Any]:
    f = item_fn(step)
    kind = step.kind
    if kind == "map":
        return [f(x) for x in batch]
    if kind == "filter":
        return [x for x in batch if f(x)]
    if kind == "filter_map":
        return [y for y in map(f, batch) if y is not None]
    if kind == "flat_map":
        return [y for x in batch for y in f(x)]
    if kind == "flatten":
        return [y for x in batch for y in f(x)]
    if kind == "key_on":
        return [(f(x), x) for x in batch]
    if kind == "map_value":
        return [(k, f(v)) for k, v in batch]
    if kind == "filter_value":
        return [(k, v) for k, v in batch if f(v)]
    if kind == "filter_map_value":
        return [(k, w) for k, v in batch for w in [f(v)] if w is not None]
    if kind == "flat_map_value":
        return [(k, w) for k, v in batch for w in f(v)]
    if kind == "key_rm":
        return [v for _k, v in batch]
    if kind == "inspect":
        seen[i].extend(batch)
        return batch
    if kind == "batch":
        return batch[::-1]
    raise AssertionError(kind)


# --- the same chain as a dataflow ----------------------------------------


def build(
    steps: list[Step], items: list[int], batch_size: int
) -> tuple[Dataflow, list[Any], dict[int, list[Any]]]:
    flow = Dataflow("fusion")
    out: list[Any] = []
    seen: dict[int, list[Any]] = {}
    s: Stream[Any] = op.input("inp", flow, TestingSource(items, batch_size=batch_size))
    for i, step in enumerate(steps):
        sid = f"s{i}_{step.kind}"
        f = item_fn(step)
        kind = step.kind
        if kind in ("map", "filter", "filter_map", "flat_map", "key_on"):
            s = getattr(op, kind)(sid, s, f)
        elif kind in ("map_value", "filter_value", "filter_map_value", "flat_map_value"):
            s = getattr(op, kind)(sid, s, f)
        elif kind == "flatten":
            s = op.flatten(sid, op.map(f"{sid}_lists", s, f))
        elif kind == "key_rm":
            s = op.key_rm(sid, s)
        elif kind == "inspect":
            seen[i] = []
            s = op.inspect(sid, s, lambda _sid, x, i=i: seen[i].append(x))
        elif kind == "batch":
            s = op.flat_map_batch(sid, s, lambda xs: xs[::-1])
        else:
            raise AssertionError(kind)
    op.output("out", s, TestingSink(out))
    return flow, out, seen


def run_chain(
    steps: list[Step], items: list[int], batch_size: int, fuse: bool
) -> tuple[list[Any], dict[int, list[Any]], BaseException | None]:
    flow, out, seen = build(steps, items, batch_size)
    try:
        execute(flow, workers_per_process=1, epoch_interval=None, fuse=fuse)
    except BytewaxRuntimeError as exc:
        return out, seen, exc
    return out, seen, None


SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(chains(), items_st, batch_size_st)
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_fused_unfused_and_reference_agree(steps: list[Step], items: list[int], bs: int) -> None:
    expected, expected_seen = reference(steps, items, bs)
    fused, fused_seen, err1 = run_chain(steps, items, bs, fuse=True)
    unfused, unfused_seen, err2 = run_chain(steps, items, bs, fuse=False)
    assert err1 is None and err2 is None
    assert fused == expected
    assert unfused == expected
    assert fused_seen == expected_seen
    assert unfused_seen == expected_seen


def _failing_step_id(steps: list[Step], items: list[int], bs: int) -> str | None:
    """The step id the reference says fails first (the only `boom` step), or None."""
    try:
        reference(steps, items, bs)
    except ValueError:
        i = next(i for i, s in enumerate(steps) if s.boom)
        kind = steps[i].kind
        return f"fusion.s{i}_{kind}" + ("_lists" if kind == "flatten" else "")
    return None


@SETTINGS
@given(chains(allow_boom=True), items_st, batch_size_st)
def test_errors_name_the_same_step_fused_or_not(steps: list[Step], items: list[int], bs: int) -> None:
    failing = _failing_step_id(steps, items, bs)
    for fuse in (True, False):
        out, _seen, err = run_chain(steps, items, bs, fuse=fuse)
        if failing is None:
            assert err is None
            assert out == reference(steps, items, bs)[0]
        else:
            assert err is not None, f"fuse={fuse}: expected a failure in {failing}"
            assert f'"{failing}.' in str(err), (fuse, str(err))
            assert isinstance(err.__cause__, ValueError)
            assert str(err.__cause__).startswith("boom on ")


# --- compile_chain directly: many more examples, no engine around it ------


def _stage(i: int, step: Step, seen: dict[int, list[Any]]) -> list[Stage]:
    f = item_fn(step)
    sid = f"s{i}"
    if step.kind == "flatten":
        return [Stage(sid + "_lists", "map", f), Stage(sid, "flat_map", lambda x: x)]
    if step.kind == "key_rm":
        return [Stage(sid, "key_rm", lambda x: x)]
    if step.kind == "inspect":
        seen[i] = []
        return [Stage(sid, "inspect", lambda _s, x, _e, _w, i=i: seen[i].append(x))]
    if step.kind == "batch":
        return [Stage(sid, "batch", lambda xs: xs[::-1])]
    return [Stage(sid, step.kind, f)]


@settings(max_examples=300, deadline=None)
@given(chains(max_len=10), st.lists(items_st, max_size=4))
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_compile_chain_fused_equals_unfused(steps: list[Step], batches: list[list[int]]) -> None:
    results = []
    for fuse in (True, False):
        seen: dict[int, list[Any]] = {}
        stages = [st_ for i, s in enumerate(steps) for st_ in _stage(i, s, seen)]
        fns = compile_chain(stages, EpochRef(), 0, fuse)
        if fuse:
            opaque = sum(1 for s in stages if s.kind in ("batch", "inspect"))
            # Item-level runs between opaque batch steps and inspects (which
            # run alone, over the whole batch) become one function each.
            assert len(fns) <= 2 * opaque + 1
        out = []
        for batch in batches:
            b: list[Any] = list(batch)
            for fn in fns:
                b = fn(b)
            out.append(b)
        results.append((out, seen))
    assert results[0] == results[1]


def test_fusion_merges_item_level_steps_into_one_function() -> None:
    stages = [
        Stage("a", "map", lambda x: x + 1),
        Stage("b", "filter", lambda x: x % 2 == 0),
        Stage("c", "key_on", str),
        Stage("d", "map_value", lambda v: v * 10),
        Stage("e", "key_rm", lambda x: x),
    ]
    fused = compile_chain(stages, EpochRef(), 0, True)
    unfused = compile_chain(stages, EpochRef(), 0, False)
    assert len(fused) == 1
    assert len(unfused) == len(stages)
    assert fused[0]([1, 2, 3]) == [20, 40]
