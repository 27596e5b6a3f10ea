"""Fuse chains of stateless steps into one function per batch.

A chain like ``map -> filter -> map_value`` is compiled into a single list
comprehension, so a batch costs one Python loop instead of one per step.
Each stage sits on its own source line of the generated code; when a stage
fails, the traceback's line number says which step it was and the frame's
locals give the item, so errors name the step exactly as if unfused.

From Python 3.12 a list comprehension is inlined into its function (PEP 709)
and its loop variables are gone from the frame once an exception leaves it,
so there the chain is compiled into a plain loop instead, whose locals stay.

A chain that feeds a stateful step ends by grouping its (key, value) pairs
(`compile_grouping_chain`); one that feeds a `reduce_final` the wiring lets
it fold into may instead end by folding each pair into the step's dict of
running values (`ReduceTarget`, from `_stateful_run.ReduceRun`); with more
than one worker, a pair whose key another worker owns is folded into that
worker's combiner cell instead (`RemoteCells`, from `_exchange`).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from headrace._engine._plan import quoted
from headrace.errors import BytewaxRuntimeError

BatchFn = Callable[[list[Any]], list[Any]]

# PEP 709: from 3.12 a comprehension's variables leave the frame with an exception.
_INLINED_COMPREHENSIONS = sys.version_info >= (3, 12)

_KEYED = frozenset({"map_value", "filter_value", "filter_map_value", "flat_map_value", "key_rm"})


@dataclass
class Stage:
    """One stateless step of a chain."""

    step_id: str
    kind: str  # a fusable kind, "batch" (opaque flat_map_batch), "inspect" or "noop"
    fn: Callable[..., Any]
    # The step's id as Bytewax names it in errors (`CoreStep.display_id`).
    display_id: str = ""

    @property
    def shown(self) -> str:
        """The step as runtime errors show it: Bytewax's id, double-quoted.

        >>> Stage("f.k.flat_map_batch", "key_on", str, "f.k.map.flat_map_batch").shown
        '"f.k.map.flat_map_batch"'
        """
        return quoted(self.display_id or self.step_id)


@dataclass
class ReduceTarget:
    """Where a chain folds its pairs: ``cells[k][0] = reducer(cells[k][0], v)``, in item order.

    A key without a cell gets ``[v]``. ``failed(key, exc)`` is the error
    for a reducer that raised; ``dirty``, when a store snapshots the step,
    gets every key folded; with ``count`` the chain returns how many pairs
    it folded (for the metrics).
    """

    cells: dict[str, list[Any]]
    reducer: Callable[[Any, Any], Any]
    failed: Callable[[str, BaseException], BaseException]
    dirty: set[str] | None
    count: bool
    # With more than one worker: the keys other workers own (see `RemoteCells`).
    remote: RemoteCells | None = None


@dataclass
class RemoteCells:
    """Where a folding chain puts the pairs of keys another worker owns (`_exchange`).

    ``new_key(k, v)`` takes the first value of a key the chain's lookup
    misses: it stores it where the key's owner says, and returns 1 (and
    adds 1 to ``folded[0]``, the partials buffered) if that is another
    worker. Two shapes:

    - ``unified`` (no snapshots to track): ``cells`` holds every key the
      chain folded since its partials were last sent, mapped to its cell,
      this worker's running value or the owner's partial result: the
      chain folds as on one worker, with one lookup per pair.
    - otherwise ``cells`` holds only the partials, looked up after the
      step's own dict misses, so that only this worker's keys are marked
      changed for the snapshot.
    """

    cells: dict[str, list[Any]]
    new_key: Callable[[str, Any], int]
    folded: list[int]
    unified: bool = False


class EpochRef:
    """Mutable holder of the worker's current epoch, read by inspect stages."""

    __slots__ = ("epoch",)

    def __init__(self) -> None:
        self.epoch = 1


# A value flowing through generated code is either one variable ("v", name)
# or a (key, value) pair kept in two variables ("kv", k, v) that is only
# packed into a tuple when a stage needs the whole item. `key_on` followed by
# `map_value` therefore never builds and unpacks an intermediate tuple.
Cur = tuple[str, ...]


def _item(cur: Cur) -> str:
    return cur[1] if cur[0] == "v" else f"({cur[1]}, {cur[2]})"


def _pair(i: int, cur: Cur) -> tuple[list[str], str, str, tuple[str, ...]]:
    """Clauses to view ``cur`` as a (key, value) pair, the two names, and flags."""
    if cur[0] == "kv":
        return [], cur[1], cur[2], cur[3:]
    return [f"for k{i}, v{i} in [{cur[1]}]"], f"k{i}", f"v{i}", ()


def _clauses(i: int, kind: str, cur: Cur) -> tuple[list[str], Cur]:
    """Comprehension clauses for stage ``i`` reading ``cur``; returns (clauses, new cur)."""
    b = f"x{i + 1}"
    f = f"f{i}"
    if kind in ("map", "filter", "filter_map", "flat_map", "key_on", "inspect"):
        a = _item(cur)
        if kind == "map":
            return [f"for {b} in [{f}({a})]"], ("v", b)
        if kind == "filter":
            return [f"if {f}({a})"], cur
        if kind == "filter_map":
            return [f"for {b} in [{f}({a})]", f"if {b} is not None"], ("v", b)
        if kind == "flat_map":
            return [f"for {b} in {f}({a})"], ("v", b)
        if kind == "key_on":
            pre = []
            if cur[0] == "kv":  # bind the packed item once: it is the new value
                pre = [f"for {b} in [{a}]"]
                a = b
            # `type(k) is str`: Python 3.11 specialises the call (cheaper than `k.__class__`).
            check = f"if type(k{i}) is str or badkey(s{i}, f{i}, k{i})"
            # The 4th element marks a key checked to be a str.
            return [*pre, f"for k{i} in [{f}({a})]", check], ("kv", f"k{i}", a, "str")
        return [f"for u{i} in [{f}(s{i}, {a}, ctx.epoch, wi)]"], cur
    pre, k, v, flags = _pair(i, cur)
    if kind == "map_value":
        return [*pre, f"for w{i} in [{f}({v})]"], ("kv", k, f"w{i}", *flags)
    if kind == "filter_value":
        return [*pre, f"if {f}({v})"], ("kv", k, v, *flags)
    if kind == "filter_map_value":
        return [*pre, f"for w{i} in [{f}({v})]", f"if w{i} is not None"], ("kv", k, f"w{i}", *flags)
    if kind == "flat_map_value":
        return [*pre, f"for w{i} in {f}({v})"], ("kv", k, f"w{i}", *flags)
    if kind == "key_rm":
        return pre, ("v", v)
    raise AssertionError(kind)


def _plan_clauses(stages: list[Stage]) -> tuple[list[tuple[int, Cur, str]], Cur]:
    out: list[tuple[int, Cur, str]] = []
    cur: Cur = ("v", "x0")
    for i, st in enumerate(stages):
        clauses, nxt = _clauses(i, st.kind, cur)
        out.extend((i, cur, c) for c in clauses)
        cur = nxt
    return out, cur


def groups_by_checked_key(stages: list[Stage]) -> bool:
    """Whether the chain ends in a (str key, value) pair it can group itself.

    >>> groups_by_checked_key([Stage("k", "key_on", str), Stage("m", "map_value", len)])
    True
    >>> groups_by_checked_key([Stage("m", "map", str)])
    False
    """
    _, cur = _plan_clauses(stages)
    return cur[0] == "kv" and cur[3:] == ("str",)


def _statement(clause: str) -> str:
    """A comprehension clause as a statement: ``for x in [e]`` binds, ``if`` skips."""
    if clause.startswith("if "):
        return f"if not ({clause[3:]}): continue"
    target, sep, rest = clause[4:].partition(" in [")
    if sep and rest.endswith("]") and rest.count("[") == rest.count("]") - 1:
        return f"{target} = {rest[:-1]}"
    return clause + ":"


def _loop_body(
    lines: list[str],
    planned: list[tuple[int, Cur, str]],
    line_of_stage: dict[int, tuple[int, Cur]],
    count_at: int | None = None,
) -> str:
    """Append the stages' statements inside ``for x0 in batch:``; return the innermost indent.

    Records, for each generated line, the stage and its input (for error reports).
    With ``count_at``, the fan-out stage of that index adds how many items
    it returned to ``n`` (a list's or tuple's length at once; any other
    iterable counts into ``ncell[0]`` as it is iterated, lazily as before).
    """
    indent = "        "
    for i, c_in, clause in planned:
        stmt = _statement(clause)
        if i == count_at and stmt.startswith("for ") and f" in f{i}(" in stmt:
            target, _, expr = stmt[4:-1].partition(" in ")
            it = f"it{i}"
            body = [
                f"{it} = {expr}",
                f"if type({it}) is list or type({it}) is tuple: n += len({it})",
                f"else: {it} = counted(iter({it}), ncell)",
                f"for {target} in {it}:",
            ]
        else:
            body = [stmt]
        for line in body:
            lines.append(indent + line)
            line_of_stage[len(lines)] = (i, c_in)
        if stmt.endswith(":"):
            indent += "    "
    return indent


_FAN_OUT = frozenset({"flat_map", "flat_map_value"})
_FILTERS = frozenset({"filter", "filter_map", "filter_value", "filter_map_value"})


def _counting(stages: list[Stage]) -> tuple[str, int | None]:
    """How a folding loop counts its pairs: ``("batch", None)`` (one per input
    item), ``("fan", i)`` (stage i's fan-out, nothing after it filters) or
    ``("item", None)`` (one by one).

    >>> _counting([Stage("k", "key_on", str), Stage("m", "map_value", len)])
    ('batch', None)
    >>> _counting([Stage("s", "flat_map", str.split), Stage("k", "key_on", str)])
    ('fan', 0)
    >>> _counting([Stage("s", "flat_map", str.split), Stage("f", "filter", bool), Stage("k", "key_on", str)])
    ('item', None)
    """
    fans = [i for i, st in enumerate(stages) if st.kind in _FAN_OUT]
    last = fans[-1] if fans else -1
    if any(st.kind in _FILTERS for st in stages[last + 1 :]):
        return "item", None
    return ("fan", last) if fans else ("batch", None)


def _counted(items: Any, cell: list[int]) -> Any:
    """Yield ``items``, counting them into ``cell[0]``.

    >>> cell = [0]; list(_counted(iter("ab"), cell)), cell
    (['a', 'b'], [2])
    """
    for item in items:
        cell[0] += 1
        yield item


def _compile_segment(
    stages: list[Stage],
    ctx: EpochRef,
    worker_index: int,
    group: bool = False,
    reduce: ReduceTarget | None = None,
) -> tuple[BatchFn, types.CodeType, dict[int, tuple[int, Cur]]]:
    """Compile item-level stages into one function over a batch.

    By default a list comprehension returning the output items. With
    ``group`` (the chain ends in a checked key pair and feeds a stateful
    step) a loop returning ``{key: [values]}`` directly, so items are never
    packed into tuples only to be unpacked again by the grouping. With
    ``reduce`` (and ``group``) a loop folding each pair into
    ``reduce.values`` and returning the number of pairs (0 without
    ``reduce.count``).

    Returns the function, its code object, and for each generated source
    line the stage it belongs to and that stage's input (for error reports).
    """
    planned, cur = _plan_clauses(stages)
    line_of_stage: dict[int, tuple[int, Cur]] = {}
    if not group and not _INLINED_COMPREHENSIONS:
        lines = ["def fused(batch):", "    return [", f"        {_item(cur)}", "        for x0 in batch"]
        for i, c_in, clause in planned:
            lines.append("        " + clause)
            line_of_stage[len(lines)] = (i, c_in)
        lines.append("    ]")
    elif not group:
        # A loop, so a failing stage's input is still in the frame's locals.
        lines = ["def fused(batch):", "    out = []", "    for x0 in batch:"]
        indent = _loop_body(lines, planned, line_of_stage)
        lines += [f"{indent}out.append({_item(cur)})", "    return out"]
    elif reduce is not None:
        # Count the pairs (for the metrics) per batch or per fan-out where
        # that is exact: a counter bumped per item costs a tenth of a word count.
        how, at = _counting(stages) if reduce.count else ("none", None)
        start = "len(batch)" if how == "batch" else "0"
        lines = ["def fused(batch):", f"    n = {start}", "    ncell = [0]", "    for x0 in batch:"]
        indent = _loop_body(lines, planned, line_of_stage, at)
        k, v = cur[1], cur[2]
        fold = [
            "try:",
            f"    acc[0] = red(acc[0], {v})",
            "except Exception as exc:",
            f"    raise rfail({k}, exc) from exc",
        ]
        dadd = [f"dadd({k})"] if reduce.dirty is not None else []
        if reduce.remote is None or reduce.remote.unified:
            new = f"rcells[{k}] = [{v}]" if reduce.remote is None else f"newkey({k}, {v})"
            body = [f"acc = rget({k})", "if acc is None:", f"    {new}", "else:"]
            body += [f"    {line}" for line in fold] + dadd
            end = ["    return n + ncell[0]"]
        else:
            # A key is this worker's (its running value), another's (a
            # partial since the last flush), or new (`RemoteCells.new_key`).
            body = [f"acc = rget({k})", "if acc is None:", f"    acc = xget({k})", "    if acc is None:"]
            body += [f"        newkey({k}, {v})", "    else:"]
            body += [f"        {line}" for line in fold] + ["else:"]
            body += [f"    {line}" for line in fold + dadd]
            end = ["    return n + ncell[0]"]
        lines += [*([f"{indent}n += 1"] if how == "item" else []), *(indent + b for b in body), *end]
    else:
        lines = ["def fused(batch):", "    groups = {}", "    get = groups.get", "    for x0 in batch:"]
        indent = _loop_body(lines, planned, line_of_stage)
        k, v = cur[1], cur[2]
        lines += [
            f"{indent}vs = get({k})",
            f"{indent}if vs is None:",
            f"{indent}    groups[{k}] = [{v}]",
            f"{indent}else:",
            f"{indent}    vs.append({v})",
            "    return groups",
        ]
    env: dict[str, Any] = {
        "ctx": ctx,
        "wi": worker_index,
        "badkey": _bad_key,
        "type": type,
        "str": str,
        "list": list,
        "tuple": tuple,
        "len": len,
        "iter": iter,
        "counted": _counted,
    }
    if reduce is not None:
        env.update(
            rget=reduce.cells.get,
            rcells=reduce.cells,
            red=reduce.reducer,
            rfail=reduce.failed,
            dadd=None if reduce.dirty is None else reduce.dirty.add,
        )
        if reduce.remote is not None and reduce.remote.unified:
            env.update(rget=reduce.remote.cells.get, newkey=reduce.remote.new_key)
        elif reduce.remote is not None:
            env.update(xget=reduce.remote.cells.get, newkey=reduce.remote.new_key)
    for i, st in enumerate(stages):
        env[f"f{i}"] = st.fn
        env[f"s{i}"] = st.step_id
    if lines[1] != "    return [":
        # A loop: every name it reads is a local (keyword-only defaults),
        # cheaper per item than a global.
        lines[0] = "def fused(batch, *, " + ", ".join(f"{name}={name}" for name in env) + "):"
    src = "\n".join(lines)
    code = compile(src, f"<headrace fused {stages[0].step_id}>", "exec")
    exec(code, env)
    return env["fused"], code, line_of_stage


def _bad_key(step_id: str, key_fn: Callable[..., Any], k: Any) -> bool:
    if isinstance(k, str):  # a str subclass is fine
        return True
    from headrace.dataflow import f_repr

    outer = step_id.rsplit(".", 1)[0]
    msg = f"return value of `key` {f_repr(key_fn)} in step {outer!r} must be a `str`; got a {type(k)} instead"
    raise TypeError(msg)


def _fused_failure(
    exc: BaseException,
    stages: list[Stage],
    line_of_stage: dict[int, tuple[int, Cur]],
    filename: str,
) -> BytewaxRuntimeError:
    tb = exc.__traceback__
    frame_tb = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            frame_tb = tb
        tb = tb.tb_next
    if frame_tb is None:
        return BytewaxRuntimeError(f"error calling `mapper` in step {stages[0].shown}")
    if frame_tb.tb_lineno not in line_of_stage:
        # Python attributes a nested loop's iteration to the comprehension's
        # first line: a generator returned by a flat_map failed while iterated.
        return _lazy_failure(exc, stages, frame_tb)
    idx, cur = line_of_stage[frame_tb.tb_lineno]
    stage = stages[idx]
    local = frame_tb.tb_frame.f_locals
    item = local.get(cur[1]) if cur[0] == "v" else (local.get(cur[1]), local.get(cur[2]))
    raised_here = frame_tb.tb_next is None
    # Bytewax's words first ("error calling `mapper` in step "f.s.flat_map_batch"",
    # "error calling inspector in step ..."), then the item and the cause.
    if raised_here and stage.kind in _KEYED and not (type(item) is tuple and len(item) == 2):
        cause = TypeError(
            f"step {_user_step(stage)!r} expects `(key, value)` 2-tuples; got "
            f"{type(item).__name__} {item!r}; use `key_on` or `map` to make (str, value) pairs"
        )
        cause.__cause__ = exc
        err = BytewaxRuntimeError(f"error calling `mapper` in step {stage.shown}: TypeError: {cause}")
        err.__cause__ = cause
        return err
    if raised_here and stage.kind in ("flat_map", "flat_map_value"):
        if getattr(stage.fn, "_headrace_flatten", False):
            # Bytewax's own words for `flatten` fed a non-iterable item.
            cause = TypeError(
                f"step {_user_step(stage)!r} requires upstream to be iterables; got a {type(item)} instead"
            )
        else:
            cause = TypeError(f"`mapper` in step {_user_step(stage)!r} must return an iterable; {exc}")
        cause.__cause__ = exc
        err = BytewaxRuntimeError(f"error calling `mapper` in step {stage.shown}: TypeError: {cause}")
        err.__cause__ = cause
        return err
    what = "inspector" if stage.kind == "inspect" else "`mapper`"
    err = BytewaxRuntimeError(
        f"error calling {what} in step {stage.shown} on item {item!r}: {type(exc).__name__}: {exc}"
    )
    err.__cause__ = exc
    return err


def _user_step(stage: Stage) -> str:
    """The id of the operator the user called, for hints (``f.s`` for ``f.s.flat_map_batch``).

    >>> _user_step(Stage("f.s.flat_map_batch", "map", len))
    'f.s'
    >>> _user_step(Stage("f.s", "batch", len))
    'f.s'
    """
    sid = stage.step_id
    if not sid.endswith(".flat_map_batch"):
        return sid
    # `flatten` is one level deeper: flatten -> flat_map -> flat_map_batch.
    levels = 2 if getattr(stage.fn, "_headrace_flatten", False) else 1
    return sid.rsplit(".", levels)[0]


def _lazy_failure(exc: BaseException, stages: list[Stage], frame_tb: Any) -> BytewaxRuntimeError:
    if frame_tb.tb_next is None and isinstance(exc, TypeError):
        # Iterating failed in the comprehension itself: `flatten` got an
        # item that is not iterable?
        local = frame_tb.tb_frame.f_locals
        for i, cur, _clause in _plan_clauses(stages)[0]:
            st = stages[i]
            if getattr(st.fn, "_headrace_flatten", False):
                item = local.get(cur[1]) if cur[0] == "v" else (local.get(cur[1]), local.get(cur[2]))
                if not hasattr(item, "__iter__"):
                    cause = TypeError(
                        f"step {_user_step(st)!r} requires upstream to be iterables; "
                        f"got a {type(item)} instead"
                    )
                    cause.__cause__ = exc
                    err = BytewaxRuntimeError(
                        f"error calling `mapper` in step {st.shown}: TypeError: {cause}"
                    )
                    err.__cause__ = cause
                    return err
    inner = frame_tb.tb_next.tb_frame.f_code if frame_tb.tb_next is not None else None
    lazy = [s for s in stages if s.kind in ("flat_map", "flat_map_value")]
    stage = next((s for s in stages if getattr(s.fn, "__code__", None) is inner), None)
    if stage is None:
        stage = lazy[0] if lazy else stages[0]
    err = BytewaxRuntimeError(
        f"error calling `mapper` in step {stage.shown} (while iterating what it returned): "
        f"{type(exc).__name__}: {exc}"
    )
    err.__cause__ = exc
    return err


def _wrap_batch_stage(st: Stage) -> BatchFn:
    mapper = st.fn
    shown = st.shown

    def run(batch: list[Any]) -> list[Any]:
        try:
            out = mapper(batch)
        except Exception as exc:
            raise BytewaxRuntimeError(
                f"error calling `mapper` in step {shown}: {type(exc).__name__}: {exc}"
            ) from exc
        if type(out) is list:
            return out
        if not hasattr(out, "__iter__"):
            why = f"`mapper` must return an iterable; got {type(out).__name__}"
            raise BytewaxRuntimeError(f"error calling `mapper` in step {shown}: {why}") from TypeError(why)
        try:
            return list(out)
        except Exception as exc:
            raise BytewaxRuntimeError(
                f"error calling `mapper` in step {shown} (while iterating what it returned): "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    return run


def _wrap_segment(
    stages: list[Stage],
    ctx: EpochRef,
    worker_index: int,
    group: bool = False,
    reduce: ReduceTarget | None = None,
) -> BatchFn:
    fn, code, line_of_stage = _compile_segment(stages, ctx, worker_index, group, reduce)

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
    mappers are called on the whole batch. An ``inspect`` stage is a
    comprehension of its own, so it prints the whole batch after the stages
    before it and before the stages after it, as in Bytewax.

    >>> ctx = EpochRef()
    >>> fns = compile_chain([Stage("a", "map", lambda x: x + 1),
    ...                      Stage("b", "filter", lambda x: x % 2 == 0)], ctx, 0)
    >>> len(fns), fns[0]([1, 2, 3])
    (1, [2, 4])
    >>> len(compile_chain([Stage("a", "map", str), Stage("i", "inspect", print),
    ...                    Stage("b", "map", len)], ctx, 0))
    3
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
        elif st.kind == "inspect":
            flush()
            run.append(st)
            flush()
        else:
            run.append(st)
    flush()
    return fns


def compile_grouping_chain(
    stages: list[Stage], ctx: EpochRef, worker_index: int, reduce: ReduceTarget | None = None
) -> list[BatchFn] | None:
    """Like `compile_chain`, but the last function returns ``{key: [values]}``.

    Only when the chain ends in item-level stages producing a checked
    ``(str key, value)`` pair (e.g. ``key_on`` then ``map_value``); otherwise
    ``None``. Used when the chain feeds a stateful step. With ``reduce``,
    the last function folds the pairs into ``reduce.values`` instead and
    returns how many it folded (0 without ``reduce.count``).

    >>> stages = [Stage("k", "key_on", lambda w: w[0]), Stage("one", "map_value", lambda w: 1)]
    >>> compile_grouping_chain(stages, EpochRef(), 0)[-1](["ab", "ac", "b"])
    {'a': [1, 1], 'b': [1]}
    >>> counts: dict[str, list[int]] = {}
    >>> into = ReduceTarget(counts, lambda a, b: a + b, ValueError, None, True)
    >>> compile_grouping_chain(stages, EpochRef(), 0, into)[-1](["ab", "ac", "b"]), counts
    (3, {'a': [2], 'b': [1]})
    """
    live = [s for s in stages if s.kind != "noop"]
    tail: list[Stage] = []
    for st in reversed(live):
        if st.kind in ("batch", "inspect"):
            break
        tail.insert(0, st)
    if not tail or not groups_by_checked_key(tail):
        return None
    head = live[: len(live) - len(tail)]
    fns = compile_chain(head, ctx, worker_index) if head else []
    fns.append(_wrap_segment(tail, ctx, worker_index, group=True, reduce=reduce))
    return fns
