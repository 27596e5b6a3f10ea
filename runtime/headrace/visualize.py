"""Draw a dataflow's structure: Mermaid, PlantUML or JSON.

`to_rendered` turns the step tree into plain records (`RenderedDataflow`,
`RenderedOperator`, `RenderedPort`) in which every input port says which
upstream ports feed it; the text formats are drawn from those records.

From the command line (Mermaid by default)::

    python -m headrace.visualize examples/wordcount.py:flow
    python -m headrace.visualize --json mymodule:flow
    python -m headrace.visualize -o plantuml -r mymodule:flow

>>> import headrace.operators as op
>>> from headrace.dataflow import Dataflow
>>> from headrace.testing import TestingSource, TestingSink
>>> flow = Dataflow("viz")
>>> s = op.input("inp", flow, TestingSource([1]))
>>> s = op.map("double", s, lambda x: x * 2)
>>> op.output("out", s, TestingSink([]))
>>> print(to_mermaid(flow))
flowchart TD
subgraph "viz (Dataflow)"
viz.inp["inp (input)"]
viz.double["double (map)"]
viz.inp -- "down → up" --> viz.double
viz.out["out (output)"]
viz.double -- "down → up" --> viz.out
end
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from headrace.dataflow import Dataflow, MultiPort, Operator, Port, SinglePort

__all__ = [
    "Dataflow",
    "Operator",
    "RenderedDataflow",
    "RenderedOperator",
    "RenderedPort",
    "to_json",
    "to_mermaid",
    "to_plantuml",
    "to_rendered",
]


@dataclass(frozen=True)
class RenderedPort:
    """A port of a rendered step.

    ``from_port_ids`` are the ports feeding this one at the same nesting
    level: the out ports of sibling steps, or the enclosing step's input
    port for a stream that enters from outside. ``from_stream_ids`` are the
    streams themselves, in the same order. Both are empty for the out ports
    of core steps, which produce their stream.

    >>> RenderedPort("up", "f.map.up", ["f.inp.down"], ["f.inp.down"]).port_name
    'up'
    """

    port_name: str
    port_id: str
    from_port_ids: list[str]
    from_stream_ids: list[str]


@dataclass(frozen=True)
class RenderedOperator:
    """A rendered step: its operator type, names, ports and substeps.

    >>> op = RenderedOperator("map", "double", "f.double", [], [], [])
    >>> op.op_type, op.step_name
    ('map', 'double')
    """

    op_type: str
    step_name: str
    step_id: str
    inp_ports: list[RenderedPort]
    out_ports: list[RenderedPort]
    substeps: list[RenderedOperator] = field(default_factory=list)


@dataclass(frozen=True)
class RenderedDataflow:
    """A rendered dataflow: its id and top-level steps.

    >>> RenderedDataflow("empty", []).flow_id
    'empty'
    """

    flow_id: str
    substeps: list[RenderedOperator]


def _op_type(op: Operator) -> str:
    explicit = getattr(op, "op_type", None)
    return explicit if isinstance(explicit, str) else op.step_name


def _port_streams(port: Port) -> list[str]:
    if isinstance(port, SinglePort):
        return [port.stream_id]
    if isinstance(port, MultiPort):
        return list(port.stream_ids.values())
    return list(getattr(port, "stream_ids", {}).values())


def _render_port(name: str, port: Port, providers: dict[str, str]) -> RenderedPort:
    streams = _port_streams(port)
    return RenderedPort(
        port_name=name,
        port_id=port.port_id,
        from_port_ids=[providers[s] for s in streams if s in providers],
        from_stream_ids=streams,
    )


def _render_scope(substeps: list[Operator], providers: dict[str, str]) -> list[RenderedOperator]:
    """Render sibling steps; ``providers`` maps stream id -> port id feeding it."""
    out: list[RenderedOperator] = []
    for op in substeps:
        inp = [_render_port(name, port, providers) for name, port in op.inp_ports.items()]
        inner = {s: port.port_id for port in op.inp_ports.values() for s in _port_streams(port)}
        children = _render_scope(op.substeps, inner)
        if op.core is None:
            outs = [_render_port(name, port, inner) for name, port in op.out_ports.items()]
        else:
            outs = [RenderedPort(name, port.port_id, [], []) for name, port in op.out_ports.items()]
        out.append(
            RenderedOperator(
                op_type=_op_type(op),
                step_name=op.step_id.rsplit(".", 1)[-1],
                step_id=op.step_id,
                inp_ports=inp,
                out_ports=outs,
                substeps=children,
            )
        )
        # Later producers of the same stream id (a step passing its input
        # through) take over from earlier ones for the steps after them.
        for port in op.out_ports.values():
            for s in _port_streams(port):
                providers[s] = port.port_id
    return out


def to_rendered(flow: Dataflow) -> RenderedDataflow:
    """Turn a dataflow into plain records with resolved port connections.

    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource
    >>> flow = Dataflow("r")
    >>> s = op.input("inp", flow, TestingSource([1]))
    >>> _ = op.map("m", s, str)
    >>> rendered = to_rendered(flow)
    >>> m = rendered.substeps[1]
    >>> m.op_type, m.inp_ports[0].from_port_ids, m.substeps[0].inp_ports[0].from_port_ids
    ('map', ['r.inp.down'], ['r.m.up'])
    """
    return RenderedDataflow(flow.flow_id, _render_scope(flow.substeps, {}))


def _to_plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"typ": type(obj).__name__}
        for f in fields(obj):
            out[f.name] = _to_plain(getattr(obj, f.name))
        return out
    if isinstance(obj, list):
        return [_to_plain(x) for x in obj]
    return obj


def to_json(flow: Dataflow) -> str:
    """The rendered dataflow as indented JSON; each object names its ``typ``.

    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource
    >>> flow = Dataflow("j")
    >>> _ = op.input("inp", flow, TestingSource([1]))
    >>> data = json.loads(to_json(flow))
    >>> data["typ"], data["substeps"][0]["op_type"], data["substeps"][0]["out_ports"][0]["port_id"]
    ('RenderedDataflow', 'input', 'j.inp.down')
    """
    return json.dumps(_to_plain(to_rendered(flow)), indent=2)


def _port_owner(port_id: str) -> tuple[str, str]:
    step_id, _, name = port_id.rpartition(".")
    return step_id, name


def to_mermaid(flow: Dataflow) -> str:
    """A Mermaid flowchart of the top-level steps.

    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource
    >>> flow = Dataflow("m")
    >>> b = op.branch("even", op.input("inp", flow, TestingSource([1])), lambda x: x % 2 == 0)
    >>> merged = op.merge("all", b.trues, b.falses)
    >>> print(to_mermaid(flow))
    flowchart TD
    subgraph "m (Dataflow)"
    m.inp["inp (input)"]
    m.even["even (branch)"]
    m.inp -- "down → up" --> m.even
    m.all["all (merge)"]
    m.even -- "trues → ups" --> m.all
    m.even -- "falses → ups" --> m.all
    end
    """
    rendered = to_rendered(flow)
    lines = ["flowchart TD", f'subgraph "{rendered.flow_id} (Dataflow)"']
    for op in rendered.substeps:
        lines.append(f'{op.step_id}["{op.step_name} ({op.op_type})"]')
        for port in op.inp_ports:
            for from_id in port.from_port_ids:
                from_step, from_name = _port_owner(from_id)
                lines.append(f'{from_step} -- "{from_name} → {port.port_name}" --> {op.step_id}')
    lines.append("end")
    return "\n".join(lines)


def _plantuml_op(op: RenderedOperator, recursive: bool, indent: str, lines: list[str]) -> None:
    inner = indent + "    "
    lines.append(f"{indent}component {op.step_id} [")
    lines.append(f"{inner}{op.step_id} ({op.op_type})")
    lines.append(f"{indent}]")
    lines.append(f"{indent}component {op.step_id} {{")
    for port in op.inp_ports:
        lines.append(f"{inner}portin {port.port_id}")
    for port in op.out_ports:
        lines.append(f"{inner}portout {port.port_id}")
    for port in op.inp_ports:
        for from_id, stream in zip(port.from_port_ids, port.from_stream_ids, strict=False):
            lines.append(f"{inner}{from_id} --> {port.port_id} : {stream}")
    if recursive:
        for sub in op.substeps:
            _plantuml_op(sub, recursive, inner, lines)
        for port in op.out_ports:
            for from_id, stream in zip(port.from_port_ids, port.from_stream_ids, strict=False):
                lines.append(f"{inner}{from_id} --> {port.port_id} : {stream}")
    lines.append(f"{indent}}}")


def to_plantuml(flow: Dataflow, recursive: bool = False) -> str:
    """A PlantUML component diagram; ``recursive`` also draws nested substeps.

    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource
    >>> flow = Dataflow("p")
    >>> _ = op.input("inp", flow, TestingSource([1]))
    >>> print(to_plantuml(flow))
    @startuml
    component p.inp [
        p.inp (input)
    ]
    component p.inp {
        portout p.inp.down
    }
    @enduml
    """
    lines = ["@startuml"]
    for op in to_rendered(flow).substeps:
        _plantuml_op(op, recursive, "", lines)
    lines.append("@enduml")
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m headrace.visualize",
        description=(
            "Print a diagram of a dataflow's structure: Mermaid (https://mermaid.js.org/) "
            "by default, PlantUML, or JSON."
        ),
    )
    parser.add_argument(
        "import_str",
        help="the dataflow: 'module:flow', 'path/to/file.py:flow' or 'module:factory(args)'",
    )
    parser.add_argument(
        "-o",
        "--output-format",
        choices=["json", "mermaid", "plantuml"],
        default="mermaid",
        help="output format (default: mermaid)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (same as --output-format json)")
    parser.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="PlantUML only: also draw the steps nested inside each operator",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print the diagram of the dataflow named by an import string.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny_flow.py"
    >>> _ = path.write_text(
    ...     "import headrace.operators as op\\n"
    ...     "from headrace.dataflow import Dataflow\\n"
    ...     "from headrace.testing import TestingSource\\n"
    ...     "flow = Dataflow('tiny')\\n"
    ...     "op.input('inp', flow, TestingSource([1]))\\n"
    ... )
    >>> main([f"{path}:flow"])
    flowchart TD
    subgraph "tiny (Dataflow)"
    tiny.inp["inp (input)"]
    end
    0
    """
    args = _parse_args(argv)
    # Imported here: the locator pulls in the user's module, which is only
    # needed when running as a command.
    from headrace._imports import locate_dataflow
    from headrace.errors import ImportStringError

    try:
        flow = locate_dataflow(args.import_str)
    except ImportStringError as exc:
        sys.stderr.write(f"python -m headrace.visualize: error: {exc}\n")
        return 2
    fmt = "json" if args.json else args.output_format
    if fmt == "json":
        text = to_json(flow)
    elif fmt == "plantuml":
        text = to_plantuml(flow, recursive=args.recursive)
    else:
        text = to_mermaid(flow)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
