"""Flatten a `Dataflow`'s step tree into core steps and check it can run."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, NoReturn

from headrace.dataflow import Dataflow, MultiPort, Operator, SinglePort
from headrace.errors import BytewaxRuntimeError


@dataclass
class CoreStep:
    """One core step: what the engine actually runs."""

    step_id: str
    kind: str
    conf: dict[str, Any]
    inputs: list[str]
    outputs: dict[str, str]
    index: int = 0
    # How Bytewax 0.21 names this step in runtime errors (see
    # `headrace.dataflow._bytewax_nesting`); only for messages.
    display_id: str = ""

    @property
    def shown(self) -> str:
        """The display id quoted as Bytewax's errors quote step ids (see `quoted`).

        >>> CoreStep("f.k.flat_map_batch", "flat_map_batch", {}, [], {}, 0,
        ...          "f.k.map.flat_map_batch").shown
        '"f.k.map.flat_map_batch"'
        """
        return quoted(self.display_id or self.step_id)


@dataclass
class Plan:
    """The flattened, validated dataflow."""

    flow_id: str
    steps: list[CoreStep]
    consumers: dict[str, list[CoreStep]] = field(default_factory=dict)
    producer: dict[str, CoreStep] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A digest of the step graph: equal for equal dataflows.

        >>> import headrace.operators as op
        >>> from headrace.testing import TestingSource, TestingSink
        >>> def build():
        ...     f = Dataflow("d")
        ...     op.output("o", op.input("i", f, TestingSource([1])), TestingSink([]))
        ...     return f
        >>> build_plan(build()).fingerprint() == build_plan(build()).fingerprint()
        True
        """
        h = hashlib.sha256(self.flow_id.encode())
        for s in self.steps:
            h.update(f"|{s.step_id}:{s.kind}:{','.join(s.inputs)}".encode())
        return h.hexdigest()[:16]


def quoted(text: str) -> str:
    r"""``text`` in double quotes, escaped as Rust's ``{:?}`` does (how Bytewax shows ids and keys).

    >>> print(quoted("f.step"), quoted('say "hi"\n'), quoted("it's"))
    "f.step" "say \"hi\"\n" "it's"
    """
    out = ['"']
    for ch in text:
        esc = _RUST_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    out.append('"')
    return "".join(out)


_RUST_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def _walk(ops: list[Operator], out: list[Operator]) -> None:
    for op in ops:
        if op.core is not None:
            out.append(op)
        else:
            _walk(op.substeps, out)


def _port_streams(port: SinglePort | MultiPort[Any]) -> list[str]:
    if isinstance(port, SinglePort):
        return [port.stream_id]
    return [port.stream_ids[k] for k in sorted(port.stream_ids)]


def _prune(steps: list[CoreStep]) -> list[CoreStep]:
    """Drop Headrace's own side-effect-free steps whose output nothing reads.

    Such steps are marked with a ``_headrace_pure`` mapper (e.g. the `window`
    operator's split of its events into ``late`` and ``meta``): running them
    would only build lists that are thrown away. User steps always run.
    """
    while True:
        read = {inp for s in steps for inp in s.inputs}
        dead = [
            s
            for s in steps
            if s.kind == "flat_map_batch"
            and getattr(s.conf.get("mapper"), "_headrace_pure", False)
            and not any(out in read for out in s.outputs.values())
        ]
        if not dead:
            return steps
        steps = [s for s in steps if s not in dead]


def _build_error(reason: str) -> NoReturn:
    """Fail the build as Bytewax does: its error, caused by a `ValueError` with the reason.

    Not a `ValueError` itself: tests written for Bytewax nest
    ``raises(RuntimeError)`` around ``raises(ValueError, match=...)``, which
    pass only when the outer error is not one.
    """
    raise BytewaxRuntimeError(f"error building production dataflow: {reason}") from ValueError(reason)


def _check_dead_letters_read(steps: list[CoreStep]) -> None:
    """Fail the build if a step sends dead letters (``on_error="dead_letter"``) that nothing reads."""
    read = {inp for s in steps for inp in s.inputs}
    for s in steps:
        owner = getattr(s.conf.get("mapper"), "_headrace_dead_letters", None)
        if owner is not None and s.outputs["down"] not in read:
            _build_error(
                f'step {owner!r} has `on_error="dead_letter"` but no `dead_letters` step reads '
                "its dead letters; declare `op.dead_letters(...)` after it and send that to an output"
            )


def build_plan(flow: Dataflow) -> Plan:
    """Flatten and validate ``flow``; raise `BytewaxRuntimeError` saying what to add.

    As in Bytewax, a flow needs an input and an output or inspect step.

    >>> build_plan(Dataflow("empty"))
    Traceback (most recent call last):
    ...
    headrace.errors.BytewaxRuntimeError: error building production dataflow: \
Dataflow needs to contain at least one input step; add with `headrace.operators.input` \
(dataflow 'empty' has none)
    """
    if not isinstance(flow, Dataflow):
        msg = f"expected a headrace Dataflow; got {type(flow).__name__} {flow!r}"
        raise TypeError(msg)
    ops: list[Operator] = []
    _walk(flow.substeps, ops)
    steps: list[CoreStep] = []
    for i, op in enumerate(ops):
        assert op.core is not None
        inputs: list[str] = []
        for port in op.inp_ports.values():
            inputs.extend(_port_streams(port))
        outputs = {
            name: port.stream_id for name, port in op.out_ports.items() if isinstance(port, SinglePort)
        }
        steps.append(CoreStep(op.step_id, op.core, op.conf, inputs, outputs, i, op.display_id or op.step_id))
    if not any(s.kind == "input" for s in steps):
        _build_error(
            "Dataflow needs to contain at least one input step; add with "
            f"`headrace.operators.input` (dataflow {flow.flow_id!r} has none)"
        )
    if not any(s.kind in ("output", "inspect_debug") for s in steps):
        _build_error(
            "Dataflow needs to contain at least one output or inspect step; add with "
            "`headrace.operators.output` or `headrace.operators.inspect` (dataflow "
            f"{flow.flow_id!r} has none, so nothing would run; e.g. output to `StdOutSink()`)"
        )
    _check_dead_letters_read(steps)
    plan = Plan(flow.flow_id, _prune(steps))
    for s in plan.steps:
        for out in s.outputs.values():
            plan.producer[out] = s
        for inp in s.inputs:
            plan.consumers.setdefault(inp, []).append(s)
    for s in plan.steps:
        for inp in s.inputs:
            if inp not in plan.producer:
                msg = f"step {s.step_id!r} reads stream {inp!r}, which no step produces"
                raise ValueError(msg)
    return plan
