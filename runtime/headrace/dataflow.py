"""Dataflow building: `Dataflow`, `Stream`, the `operator` decorator and step ids.

A `Dataflow` is a tree of `Operator` records. Leaf operators are *core*
operators (input, output, flat_map_batch, branch, merge, redistribute,
stateful_batch, inspect_debug, _noop) that the engine knows how to run; every
other operator is a composition of those, recorded as a nested operator whose
substeps carry dotted step ids (``flow.outer.inner``).

Building happens once, in the user's thread, before running; the engine then
flattens the tree into core steps (see `headrace._engine._plan`).

>>> import headrace.operators as op
>>> from headrace.testing import TestingSource, TestingSink, run_main
>>> flow = Dataflow("doc")
>>> s = op.input("inp", flow, TestingSource([1, 2, 3]))
>>> s = s.then(op.map, "double", lambda x: x * 2)
>>> out = []
>>> op.output("out", s, TestingSink(out))
>>> run_main(flow)
>>> out
[2, 4, 6]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import re
import threading
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import (
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    TypeAlias,
    TypeVar,
)

__all__ = [
    "Dataflow",
    "DataflowId",
    "KeyedStream",
    "MultiPort",
    "Operator",
    "Port",
    "SinglePort",
    "Stream",
    "f_repr",
    "operator",
]

X_co = TypeVar("X_co", covariant=True)
P = ParamSpec("P")
R = TypeVar("R")
N = TypeVar("N")
F = TypeVar("F", bound=Callable[..., Any])


def f_repr(f: Callable[..., Any]) -> str:
    """Describe a callable for error messages: its qualified name and line.

    >>> def mapper(x):
    ...     return x
    >>> f_repr(mapper)  # doctest: +ELLIPSIS
    "<function '...mapper' line ...>"
    """
    if isinstance(f, functools.partial):
        return f"<partial of {f_repr(f.func)}>"
    code = getattr(f, "__code__", None)
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None)
    module = getattr(f, "__module__", None)
    if name is None:
        return repr(f)
    full = f"{module}.{name}" if module else name
    if code is not None:
        return f"<function {full!r} line {code.co_firstlineno}>"
    return f"<callable {full!r}>"


class _StreamScopeError(AssertionError, ValueError):
    """Streams of different dataflows or operator scopes were connected.

    An `AssertionError` starting "inconsistent stream scoping", as Bytewax
    raises it (tests match that), and a `ValueError`, as Headrace raised it.

    >>> issubclass(_StreamScopeError, AssertionError), issubclass(_StreamScopeError, ValueError)
    (True, True)
    """


@dataclass(frozen=True)
class DataflowId:
    """The identity of a dataflow, used to tag recovery state.

    >>> DataflowId("wordcount").flow_id
    'wordcount'
    """

    flow_id: str


@dataclass(frozen=True)
class SinglePort:
    """An operator port connected to a single stream.

    >>> SinglePort("flow.step.up", "flow.inp.down").stream_ids
    {'stream': 'flow.inp.down'}
    """

    port_id: str
    stream_id: str

    @property
    def stream_ids(self) -> dict[str, str]:
        """The connected stream ids keyed by a fixed name.

        >>> SinglePort("p", "s").stream_ids
        {'stream': 's'}
        """
        return {"stream": self.stream_id}


@dataclass(frozen=True)
class MultiPort(Generic[N]):
    """An operator port connected to several streams (e.g. `merge`'s `ups`).

    >>> MultiPort("flow.m.ups", {0: "a.down", 1: "b.down"}).stream_ids[1]
    'b.down'
    """

    port_id: str
    stream_ids: dict[N, str]


Port: TypeAlias = SinglePort | MultiPort[Any]


@dataclass
class Operator:
    """One step of a dataflow: a core step or a composition of substeps.

    ``step_name`` is the local name given by the user, ``op_type`` the
    operator's function name. ``inp_ports``/``out_ports`` name the connected
    streams; ``core`` is the
    core operator name for a leaf step (``"flat_map_batch"``...) or ``None``
    for a composite; ``conf`` holds a core step's configuration.

    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource
    >>> flow = Dataflow("d")
    >>> s = op.input("inp", flow, TestingSource([1]))
    >>> op_ = flow.substeps[0]
    >>> op_.step_name, op_.step_id, op_.op_type, op_.core
    ('inp', 'd.inp', 'input', 'input')
    """

    step_name: str
    step_id: str
    substeps: list[Operator] = field(default_factory=list)
    inp_ports: dict[str, Port] = field(default_factory=dict)
    out_ports: dict[str, Port] = field(default_factory=dict)
    core: str | None = None
    conf: dict[str, Any] = field(default_factory=dict, repr=False)
    op_type: str = ""
    # The step's id as Bytewax 0.21 would name it (its operators nest some
    # steps more deeply): used only in runtime error messages, never as a key.
    display_id: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True)
class _Scope:
    """Where new steps are added: the parent step id within one dataflow."""

    parent_id: str
    flow: Dataflow = field(compare=False, hash=False, repr=False)
    parent: Dataflow | Operator = field(compare=False, hash=False, repr=False)


@dataclass
class Dataflow:
    """A dataflow definition: the root of the step tree.

    ``flow_id`` is the first component of every step id and, by default, the
    key under which recovery state is stored.

    >>> Dataflow("my_flow").flow_id
    'my_flow'
    >>> Dataflow("bad.id")
    Traceback (most recent call last):
    ...
    ValueError: flow ID can't contain a period `.`; got 'bad.id': use e.g. 'bad_id'
    """

    flow_id: str
    substeps: list[Operator] = field(default_factory=list)
    _scope: _Scope = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not isinstance(self.flow_id, str):
            msg = f"'flow_id' must be a `str`; got {self.flow_id!r}"
            raise TypeError(msg)
        if not self.flow_id:
            msg = "'flow_id' must not be empty: it names the dataflow and its recovery state"
            raise ValueError(msg)
        if "." in self.flow_id:
            # Bytewax's words, then which id and a fix.
            safe = self.flow_id.replace(".", "_")
            msg = f"flow ID can't contain a period `.`; got {self.flow_id!r}: use e.g. {safe!r}"
            raise ValueError(msg)
        if self._scope is None:
            self._scope = _Scope(self.flow_id, self, self)

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


@dataclass(frozen=True)
class Stream(Generic[X_co]):
    """A handle on the output of a step; pass it to the next operator.

    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource
    >>> flow = Dataflow("d")
    >>> s = op.input("inp", flow, TestingSource([1]))
    >>> s.stream_id
    'd.inp.down'
    >>> s.flow() is flow
    True
    """

    stream_id: str
    _scope: _Scope = field(repr=False, compare=False)

    def flow(self) -> Dataflow:
        """The dataflow this stream belongs to.

        >>> import headrace.operators as op
        >>> from headrace.testing import TestingSource
        >>> flow = Dataflow("d")
        >>> op.input("inp", flow, TestingSource([1])).flow().flow_id
        'd'
        """
        return self._scope.flow

    def _with_scope(self, scope: _Scope) -> Stream[X_co]:
        return Stream(self.stream_id, scope)

    def then(
        self,
        op_fn: Callable[Concatenate[str, Stream[X_co], P], R],
        step_id: str,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R:
        """Chain an operator fluently: ``s.then(op.map, "id", f)``.

        >>> import headrace.operators as op
        >>> from headrace.testing import TestingSource, TestingSink, run_main
        >>> flow = Dataflow("d")
        >>> out = []
        >>> s = op.input("inp", flow, TestingSource(["a"])).then(op.map, "up", str.upper)
        >>> op.output("out", s, TestingSink(out)); run_main(flow); out
        ['A']
        """
        return op_fn(step_id, self, *args, **kwargs)


KeyedStream: TypeAlias = Stream[tuple[str, X_co]]
"""A stream of ``(key, value)`` 2-tuples whose keys are `str`."""


class _BuildState(threading.local):
    stack: list[tuple[Operator, _Scope]]
    nesting: tuple[str, ...]
    rename: str | None

    def __init__(self) -> None:
        self.stack = []
        self.nesting = ()
        self.rename = None


_BUILD = _BuildState()


@contextlib.contextmanager
def _bytewax_nesting(*names: str, step_name: str | None = None) -> Iterator[None]:
    """Show the steps built in this block under Bytewax's extra levels ``names``.

    Bytewax composes some operators from more levels than Headrace does
    (its ``key_on`` calls ``map``, which calls ``flat_map_batch``), and its
    runtime errors name the nested core step: ``"f.key.map.flat_map_batch"``.
    A library operator wraps its inner calls in this block to give them the
    same *display* id (`Operator.display_id`); step ids, which key recovery
    state and metrics, are unchanged. ``step_name`` also shows the (one)
    step built in the block under another local name: Headrace's ``join``
    builds ``stateful_batch("join")`` where Bytewax has
    ``stateful("join")`` -> ``stateful_batch("stateful_batch")``, so
    ``_bytewax_nesting("join", step_name="stateful_batch")``.

    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource
    >>> @operator
    ... def key_first(step_id, up):
    ...     with _bytewax_nesting("map"):
    ...         return op.flat_map_batch("flat_map_batch", up, lambda xs: xs)
    >>> flow = Dataflow("d")
    >>> _ = key_first("k", op.input("i", flow, TestingSource([1])))
    >>> inner = flow.substeps[1].substeps[0]
    >>> inner.step_id, inner.display_id
    ('d.k.flat_map_batch', 'd.k.map.flat_map_batch')
    """
    old, old_rename = _BUILD.nesting, _BUILD.rename
    _BUILD.nesting = old + names
    _BUILD.rename = step_name
    try:
        yield
    finally:
        _BUILD.nesting, _BUILD.rename = old, old_rename


def _display_id_of(parent: Dataflow | Operator, step_id: str) -> str:
    """The display id of a new step ``step_id`` under ``parent`` (see `_bytewax_nesting`)."""
    if isinstance(parent, Operator):
        base = parent.display_id or parent.step_id
    else:
        base = parent.flow_id
    return ".".join((base, *_BUILD.nesting, _BUILD.rename or step_id))


def _current_display_id() -> str:
    """The display id of the operator being built (inside an operator's body).

    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource
    >>> @operator
    ... def show(step_id, up):
    ...     print(_current_display_id())
    ...     return up
    >>> show("s", op.input("i", Dataflow("d"), TestingSource([1])))  # doctest: +ELLIPSIS
    d.s
    Stream(...)
    """
    if not _BUILD.stack:
        msg = "no operator is being built"
        raise AssertionError(msg)
    op = _BUILD.stack[-1][0]
    return op.display_id or op.step_id


def _check_step_id(step_id: object, parent: Dataflow | Operator, parent_id: str) -> None:
    # Each message starts with Bytewax 0.21's words (tests match on them).
    if not isinstance(step_id, str):
        msg = f"'step_id' must be a `str`; got {step_id!r} (in {parent_id!r})"
        raise TypeError(msg)
    if not step_id:
        msg = f"'step_id' must not be empty (in {parent_id!r})"
        raise ValueError(msg)
    if "." in step_id:
        msg = (
            f"'step_id' can't contain any periods '.'; got {step_id!r} in {parent_id!r}: "
            f"use e.g. {step_id.replace('.', '_')!r}"
        )
        raise ValueError(msg)
    full = f"{parent_id}.{step_id}"
    for sub in parent.substeps:
        if sub.step_id == full:
            msg = (
                f"step {full!r} already exists; do you have two steps with the same ID? "
                "Every step needs a unique step_id within its parent: rename one of them"
            )
            raise ValueError(msg)


_STREAM_ANNOTATION = re.compile(r"^(?:\w+\.)*(?:Stream|KeyedStream)(?:\[.*\])?$", re.DOTALL)


def _is_stream_type(annotation: Any) -> bool:
    """Whether a parameter annotation asks for a `Stream` (Bytewax checks those).

    ``Optional[Stream]`` and unions are not checked, as in Bytewax.

    >>> _is_stream_type(Stream[int]), _is_stream_type(KeyedStream[int]), _is_stream_type(int)
    (True, True, False)
    >>> _is_stream_type("Stream[X]"), _is_stream_type("Stream[X] | None")
    (True, False)
    """
    if isinstance(annotation, str):
        return _STREAM_ANNOTATION.match(annotation.strip()) is not None
    return annotation is Stream or typing.get_origin(annotation) is Stream


def _stream_params(fn: Callable[..., Any], sig: inspect.Signature) -> dict[str, bool]:
    """The parameters of operator ``fn`` annotated as `Stream`: name -> is ``*args``."""
    try:
        hints: dict[str, Any] = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: read the strings
        hints = {}
    out: dict[str, bool] = {}
    for name, p in sig.parameters.items():
        if _is_stream_type(hints.get(name, p.annotation)):
            out[name] = p.kind is inspect.Parameter.VAR_POSITIONAL
    return out


def _check_stream_args(
    fn_name: str, step_id: object, streams: dict[str, bool], arguments: dict[str, Any]
) -> None:
    for name, var_positional in streams.items():
        if name not in arguments:
            continue
        values = arguments[name] if var_positional else (arguments[name],)
        for v in values:
            if isinstance(v, Stream):
                continue
            what = f"{name!r} *args all" if var_positional else f"{name!r} argument"
            msg = (
                f"{what} must be a `Stream`; got a {type(v)} instead; did you forget to unpack "
                "the result of an operator that returns multiple streams? "
                f"(operator {fn_name!r}, step_id {step_id!r})"
            )
            raise TypeError(msg)


def _iter_streams(value: Any) -> list[Stream[Any]]:
    if isinstance(value, Stream):
        return [value]
    if isinstance(value, list | tuple):
        return [s for s in value if isinstance(s, Stream)]
    return []


def _rescope(value: Any, scope: _Scope) -> Any:
    """Re-home streams (also inside tuples and dataclasses) in another scope."""
    if isinstance(value, Stream):
        return value._with_scope(scope)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_rescope(v, scope) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: _rescope(getattr(value, f.name), scope)
            for f in dataclasses.fields(value)
            if isinstance(getattr(value, f.name), Stream)
        }
        return dataclasses.replace(value, **changes) if changes else value
    return value


def _out_ports(op: Operator, result: Any) -> dict[str, Port]:
    if isinstance(result, Stream):
        return {"down": SinglePort(f"{op.step_id}.down", result.stream_id)}
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        ports: dict[str, Port] = {}
        for f in dataclasses.fields(result):
            v = getattr(result, f.name)
            if isinstance(v, Stream):
                ports[f.name] = SinglePort(f"{op.step_id}.{f.name}", v.stream_id)
        return ports
    if isinstance(result, tuple):
        return {
            str(i): SinglePort(f"{op.step_id}.{i}", v.stream_id)
            for i, v in enumerate(result)
            if isinstance(v, Stream)
        }
    return {}


def operator(builder: F | None = None, *, _core: bool = False) -> Any:
    """Turn a function into an operator whose inner operator calls nest.

    The function's first parameter is the ``step_id``; `Stream` arguments
    (also ``*args`` of streams) or a `Dataflow` argument say where the step
    goes. Operators called inside become its substeps.

    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource, TestingSink, run_main
    >>> @operator
    ... def add_one_then_double(step_id, up):
    ...     s = op.map("add", up, lambda x: x + 1)
    ...     return op.map("double", s, lambda x: x * 2)
    >>> flow = Dataflow("d")
    >>> s = op.input("inp", flow, TestingSource([1, 2]))
    >>> out = []
    >>> op.output("out", add_one_then_double("calc", s), TestingSink(out))
    >>> run_main(flow); out
    [4, 6]
    >>> [sub.step_id for sub in flow.substeps[1].substeps]
    ['d.calc.add', 'd.calc.double']
    """

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        if not params:
            msg = f"operator {fn.__name__!r} must take a step_id as its first parameter"
            raise TypeError(msg)

        stream_params: list[dict[str, bool]] = []  # resolved at the first call

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as exc:
                # Bytewax's words; the cause says which argument.
                msg = f"operator {fn.__name__!r} called incorrectly; see cause above"
                raise TypeError(msg) from exc
            bound.apply_defaults()
            items = list(bound.arguments.items())
            step_id = items[0][1]
            if not stream_params:
                stream_params.append(_stream_params(fn, sig))
            _check_stream_args(fn.__name__, step_id, stream_params[0], bound.arguments)
            scopes: list[_Scope] = []
            inp_ports: dict[str, Port] = {}
            for name, value in items[1:]:
                if isinstance(value, Dataflow):
                    scopes.append(value._scope)
                    continue
                streams = _iter_streams(value)
                kind = sig.parameters[name].kind
                if isinstance(value, Stream):
                    scopes.append(value._scope)
                elif streams and kind is inspect.Parameter.VAR_POSITIONAL:
                    scopes.extend(s._scope for s in streams)
                else:
                    continue
            if not scopes:
                msg = (
                    f"operator {fn.__name__!r} (step_id {step_id!r}) got no Stream and no "
                    "Dataflow argument; pass the upstream Stream (or the Dataflow for inputs)"
                )
                raise TypeError(msg)
            outer = scopes[0]
            for sc in scopes[1:]:
                if sc.flow is not outer.flow:
                    msg = (
                        f"inconsistent stream scoping; step {step_id!r}: a Stream from "
                        f"dataflow {sc.flow.flow_id!r} was used in dataflow "
                        f"{outer.flow.flow_id!r}; streams can only be connected within the "
                        "dataflow that created them"
                    )
                    raise _StreamScopeError(msg)
                if sc.parent_id != outer.parent_id:
                    msg = (
                        f"inconsistent stream scoping; step {step_id!r}: streams from "
                        f"different operator scopes ({outer.parent_id!r} and "
                        f"{sc.parent_id!r}); an operator can only use streams passed to it "
                        "or created inside it (not nested in other arguments)"
                    )
                    raise _StreamScopeError(msg)
            _check_step_id(step_id, outer.parent, outer.parent_id)
            full_id = f"{outer.parent_id}.{step_id}"
            op = Operator(step_name=step_id, step_id=full_id, op_type=fn.__name__)
            op.display_id = _display_id_of(outer.parent, step_id)
            for name, value in items[1:]:
                if isinstance(value, Stream):
                    inp_ports[name] = SinglePort(f"{full_id}.{name}", value.stream_id)
                elif sig.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
                    streams = _iter_streams(value)
                    if streams:
                        inp_ports[name] = MultiPort(
                            f"{full_id}.{name}", {i: s.stream_id for i, s in enumerate(streams)}
                        )
            op.inp_ports = inp_ports
            outer.parent.substeps.append(op)
            inner = _Scope(full_id, outer.flow, op)
            new_args = [step_id]
            new_kwargs: dict[str, Any] = {}
            for name, value in items[1:]:
                p = sig.parameters[name]
                if isinstance(value, Dataflow):
                    v: Any = value
                elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                    new_args.extend(_rescope(x, inner) for x in value)
                    continue
                elif p.kind is inspect.Parameter.VAR_KEYWORD:
                    new_kwargs.update(value)
                    continue
                else:
                    v = _rescope(value, inner)
                if p.kind is inspect.Parameter.KEYWORD_ONLY:
                    new_kwargs[name] = v
                else:
                    new_args.append(v)
            _BUILD.stack.append((op, inner))
            nesting, rename = _BUILD.nesting, _BUILD.rename
            _BUILD.nesting, _BUILD.rename = (), None
            try:
                result = fn(*new_args, **new_kwargs)
            except BaseException:
                outer.parent.substeps.remove(op)
                raise
            finally:
                _BUILD.stack.pop()
                _BUILD.nesting, _BUILD.rename = nesting, rename
            if _core and op.core is None:
                msg = f"core operator {fn.__name__!r} did not declare its core kind"
                raise AssertionError(msg)
            op.out_ports = _out_ports(op, result)
            return _rescope(result, outer)

        wrapper._headrace_operator = True  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    if builder is not None:
        return decorate(builder)
    return decorate


def _core_step(kind: str, conf: dict[str, Any], out_names: tuple[str, ...] = ("down",)) -> Any:
    """Declare the operator being built as core step ``kind``; return its outputs.

    Only for use inside the body of an ``@operator(_core=True)`` function.
    """
    if not _BUILD.stack:
        msg = "core steps can only be declared while building an operator"
        raise AssertionError(msg)
    op, scope = _BUILD.stack[-1]
    op.core = kind
    op.conf = conf
    return tuple(Stream(f"{op.step_id}.{n}", scope) for n in out_names)
