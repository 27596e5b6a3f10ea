"""Fuse chains of stateless steps into one function per batch.

A chain like ``map -> filter -> map_value`` is compiled into a single list
comprehension, so a batch costs one Python loop instead of one per step.
Each stage sits on its own source line of the generated code; when a stage
fails, the traceback's line number says which step it was and the frame's
locals give the item, so errors name the step exactly as if unfused.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from headrace.errors import BytewaxRuntimeError

BatchFn = Callable[[list[Any]], list[Any]]

_KEYED = frozenset(
    {"map_value", "filter_value", "filter_map_value", "flat_map_value", "key_rm"}
)


@dataclass
class Stage:
    """One stateless step of a chain."""

    step_id: str
    kind: str  # a fusable kind, "batch" (opaque flat_map_batch), "inspect" or "noop"
    fn: Callable[..., Any]


class EpochRef:
    """Mutable holder of the worker's current epoch, read by inspect stages."""

    __slots__ = ("epoch",)

    def __init__(self) -> None:
        self.epoch = 1


def _clauses(i: int, kind: str, a: str) -> tuple[list[str], str]:
    """Comprehension clauses for stage ``i`` reading var ``a``; returns (clauses, out var)."""
    b = f"x{i + 1}"
    f = f"f{i}"
    if kind == "map":
        return [f"for {b} in [{f}({a})]"], b
    if kind == "filter":
        return [f"if {f}({a})"], a
    if kind == "filter_map":
        return [f"for {b} in [{f}({a})] if {b} is not None"], b
    if kind == "flat_map":
        return [f"for {b} in {f}({a})"], b
    if kind == "map_value":
        return [f"for k{i}, v{i} in [{a}] for {b} in [(k{i}, {f}(v{i}))]"], b
    if kind == "filter_value":
        return [f"for k{i}, v{i} in [{a}] if {f}(v{i})"], a
    if kind == "filter_map_value":
        return [
            f"for k{i}, v{i} in [{a}] for w{i} in [{f}(v{i})] if w{i} is not None "
            f"for {b} in [(k{i}, w{i})]"
        ], b
    if kind == "flat_map_value":
        return [f"for k{i}, v{i} in [{a}] for w{i} in {f}(v{i}) for {b} in [(k{i}, w{i})]"], b
    if kind == "key_on":
        return [f"for {b} in [({f}({a}), {a})]"], b
    if kind == "key_rm":
        return [f"for k{i}, {b} in [{a}]"], b
    if kind == "inspect":
        return [f"for u{i} in [{f}(s{i}, {a}, ctx.epoch, wi)]"], a
    raise AssertionError(kind)


def _compile_segment(
    stages: list[Stage], ctx: EpochRef, worker_index: int
) -> tuple[BatchFn, types.CodeType, dict[int, int]]:
    """Compile item-level stages into one comprehension function."""
    lines = ["def fused(batch):", "    return ["]
    body: list[str] = []
    line_of_stage: dict[int, int] = {}
    var = "x0"
    body.append("        for x0 in batch")
    for i, st in enumerate(stages):
        clauses, var = _clauses(i, st.kind, var)
        for c in clauses:
            body.append("        " + c)
            line_of_stage[len(lines) + len(body)] = i
    lines.append(f"        {var}")
    lines.extend(body)
    lines.append("    ]")
    src = "\n".join(lines)
    env: dict[str, Any] = {"ctx": ctx, "wi": worker_index}
    for i, st in enumerate(stages):
        env[f"f{i}"] = st.fn
        env[f"s{i}"] = st.step_id
    code = compile(src, f"<headrace fused {stages[0].step_id}>", "exec")
    exec(code, env)
    fn = env["fused"]
    # Line numbers: `lines` has 2 header lines + output var line before body.
    fixed = {ln + 1: i for ln, i in line_of_stage.items()}
    return fn, code, fixed


def _fused_failure(
    exc: BaseException, stages: list[Stage], line_of_stage: dict[int, int], filename: str
) -> BytewaxRuntimeError:
    tb = exc.__traceback__
    frame_tb = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            frame_tb = tb
        tb = tb.tb_next
    if frame_tb is None:
        return BytewaxRuntimeError(f"error in fused steps starting at {stages[0].step_id!r}")
    idx = line_of_stage.get(frame_tb.tb_lineno, 0)
    stage = stages[idx]
    item = frame_tb.tb_frame.f_locals.get(f"x{_input_var(stages, idx)}")
    raised_here = frame_tb.tb_next is None
    if raised_here and stage.kind in _KEYED and not (type(item) is tuple and len(item) == 2):
        cause = TypeError(
            f"step {stage.step_id!r} expects `(key, value)` 2-tuples; got "
            f"{type(item).__name__} {item!r}; use `key_on` or `map` to make (str, value) pairs"
        )
        cause.__cause__ = exc
        err = BytewaxRuntimeError(f"bad item in step {stage.step_id!r}: {cause}")
        err.__cause__ = cause
        return err
    if raised_here and stage.kind in ("flat_map", "flat_map_value"):
        cause = TypeError(
            f"`mapper` in step {stage.step_id!r} must return an iterable; {exc}"
        )
        cause.__cause__ = exc
        err = BytewaxRuntimeError(f"error calling `mapper` in step {stage.step_id!r}: {cause}")
        err.__cause__ = cause
        return err
    what = "inspector" if stage.kind == "inspect" else "mapper"
    err = BytewaxRuntimeError(
        f"error calling `{what}` in step {stage.step_id!r} on item {item!r}: "
        f"{type(exc).__name__}: {exc}"
    )
    err.__cause__ = exc
    return err


def _input_var(stages: list[Stage], idx: int) -> int:
    """Index of the variable that stage ``idx`` reads (filters don't rename)."""
    var = 0
    for i in range(idx):
        if stages[i].kind not in ("filter", "filter_value", "inspect"):
            var = i + 1
    return var


def _wrap_batch_stage(st: Stage) -> BatchFn:
    mapper = st.fn
    step_id = st.step_id

    def run(batch: list[Any]) -> list[Any]:
        try:
            out = mapper(batch)
        except Exception as exc:
            raise BytewaxRuntimeError(
                f"error calling `mapper` in step {step_id!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if type(out) is list:
            return out
        if not hasattr(out, "__iter__"):
            msg = f"`mapper` in step {step_id!r} must return an iterable; got {type(out).__name__}"
            raise BytewaxRuntimeError(msg) from TypeError(msg)
        try:
            return list(out)
        except Exception as exc:
            raise BytewaxRuntimeError(
                f"error iterating what `mapper` returned in step {step_id!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    return run


def _wrap_segment(stages: list[Stage], ctx: EpochRef, worker_index: int) -> BatchFn:
    fn, code, line_of_stage = _compile_segment(stages, ctx, worker_index)

    def run(batch: list[Any]) -> list[Any]:
        try:
            return fn(batch)
        except BytewaxRuntimeError:
            raise
        except Exception as exc:
            err = _fused_failure(exc, stages, line_of_stage, code.co_filename)
            raise err from err.__cause__

    return run


def compile_chain(stages: list[Stage], ctx: EpochRef, worker_index: int, fuse: bool = True) -> list[BatchFn]:
    """Turn a chain of stages into a list of batch functions to apply in order.

    Runs of item-level stages become one fused comprehension each (or one
    comprehension per stage when ``fuse`` is false); opaque ``flat_map_batch``
    mappers are called on the whole batch.

    >>> ctx = EpochRef()
    >>> fns = compile_chain([Stage("a", "map", lambda x: x + 1),
    ...                      Stage("b", "filter", lambda x: x % 2 == 0)], ctx, 0)
    >>> len(fns), fns[0]([1, 2, 3])
    (1, [2, 4])
    """
    fns: list[BatchFn] = []
    run: list[Stage] = []

    def flush() -> None:
        if run:
            if fuse:
                fns.append(_wrap_segment(list(run), ctx, worker_index))
            else:
                fns.extend(_wrap_segment([s], ctx, worker_index) for s in run)
            run.clear()

    for st in stages:
        if st.kind == "noop":
            continue
        if st.kind == "batch":
            flush()
            fns.append(_wrap_batch_stage(st))
        else:
            run.append(st)
    flush()
    return fns
