"""Dataflow diagrams: rendered records, Mermaid, PlantUML, JSON and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow, Stream, operator
from headrace.testing import TestingSink, TestingSource
from headrace.visualize import (
    RenderedOperator,
    RenderedPort,
    to_json,
    to_mermaid,
    to_plantuml,
    to_rendered,
)


def _branchy_flow() -> Dataflow:
    flow = Dataflow("vf")
    s = op.input("inp", flow, TestingSource(["a b", "c"]))
    b = op.branch("br", s, lambda x: len(x) > 1)
    w = op.flat_map("split", b.trues, str.split)
    m = op.merge("m", w, b.falses)
    op.output("out", m, TestingSink([]))
    return flow


def _ports(rendered: RenderedOperator) -> dict[str, RenderedPort]:
    out: dict[str, RenderedPort] = {}

    def walk(o: RenderedOperator) -> None:
        for p in [*o.inp_ports, *o.out_ports]:
            out[p.port_id] = p
        for sub in o.substeps:
            walk(sub)

    walk(rendered)
    return out


def test_rendered_steps_have_names_types_and_ids() -> None:
    rendered = to_rendered(_branchy_flow())
    assert rendered.flow_id == "vf"
    assert [(o.step_name, o.op_type, o.step_id) for o in rendered.substeps] == [
        ("inp", "input", "vf.inp"),
        ("br", "branch", "vf.br"),
        ("split", "flat_map", "vf.split"),
        ("m", "merge", "vf.m"),
        ("out", "output", "vf.out"),
    ]


def test_from_port_ids_point_at_the_upstream_ports() -> None:
    rendered = to_rendered(_branchy_flow())
    ports: dict[str, RenderedPort] = {}
    for o in rendered.substeps:
        ports.update(_ports(o))
    assert ports["vf.br.up"].from_port_ids == ["vf.inp.down"]
    assert ports["vf.split.up"].from_port_ids == ["vf.br.trues"]
    # A multi-stream port lists one upstream port per stream, in order.
    assert ports["vf.m.ups"].from_port_ids == ["vf.split.down", "vf.br.falses"]
    assert ports["vf.m.ups"].from_stream_ids == ["vf.split.flat_map_batch.down", "vf.br.falses"]
    # Inside a composite: the inner step is fed by the composite's input
    # port, and the composite's output comes from the inner step's port.
    assert ports["vf.split.flat_map_batch.up"].from_port_ids == ["vf.split.up"]
    assert ports["vf.split.flat_map_batch.up"].from_stream_ids == ["vf.br.trues"]
    assert ports["vf.split.down"].from_port_ids == ["vf.split.flat_map_batch.down"]
    # Core steps produce their outputs: nothing feeds an out port of theirs.
    assert ports["vf.inp.down"].from_port_ids == []
    assert ports["vf.inp.down"].from_stream_ids == []


def test_passthrough_operator_output_comes_from_its_input_port() -> None:
    @operator
    def passthrough(step_id: str, up: Stream[Any]) -> Stream[Any]:
        return up

    flow = Dataflow("pt")
    s = op.input("inp", flow, TestingSource([1]))
    s = passthrough("same", s)
    op.output("out", s, TestingSink([]))
    rendered = to_rendered(flow)
    same, out = rendered.substeps[1], rendered.substeps[2]
    assert same.out_ports[0].from_port_ids == ["pt.same.up"]
    # The stream id is the input's, but the step after reads it from `same`.
    assert out.inp_ports[0].from_port_ids == ["pt.same.down"]


def test_json_is_the_rendered_tree_with_type_tags() -> None:
    data = json.loads(to_json(_branchy_flow()))
    assert data["typ"] == "RenderedDataflow"
    assert data["flow_id"] == "vf"
    split = data["substeps"][2]
    assert split["typ"] == "RenderedOperator"
    assert split["op_type"] == "flat_map"
    assert split["substeps"][0]["step_id"] == "vf.split.flat_map_batch"
    up = split["inp_ports"][0]
    assert up == {
        "typ": "RenderedPort",
        "port_name": "up",
        "port_id": "vf.split.up",
        "from_port_ids": ["vf.br.trues"],
        "from_stream_ids": ["vf.br.trues"],
    }


def test_mermaid_draws_top_level_steps_and_edges() -> None:
    assert to_mermaid(_branchy_flow()) == textwrap.dedent(
        """\
        flowchart TD
        subgraph "vf (Dataflow)"
        vf.inp["inp (input)"]
        vf.br["br (branch)"]
        vf.inp -- "down → up" --> vf.br
        vf.split["split (flat_map)"]
        vf.br -- "trues → up" --> vf.split
        vf.m["m (merge)"]
        vf.split -- "down → ups" --> vf.m
        vf.br -- "falses → ups" --> vf.m
        vf.out["out (output)"]
        vf.m -- "down → up" --> vf.out
        end"""
    )


def test_plantuml_recursive_draws_nested_steps() -> None:
    flat = to_plantuml(_branchy_flow())
    nested = to_plantuml(_branchy_flow(), recursive=True)
    assert flat.startswith("@startuml\n") and flat.endswith("\n@enduml")
    assert "component vf.split.flat_map_batch" not in flat
    assert "    vf.br.trues --> vf.split.up : vf.br.trues" in flat
    assert "    component vf.split.flat_map_batch {" in nested
    assert "        vf.split.up --> vf.split.flat_map_batch.up : vf.br.trues" in nested
    assert "    vf.split.flat_map_batch.down --> vf.split.down : vf.split.flat_map_batch.down" in nested
    assert nested.count("{") == nested.count("}")


def _flow_file(tmp_path: Path) -> Path:
    path = tmp_path / "viz_flow.py"
    path.write_text(
        textwrap.dedent(
            """
            import headrace.operators as op
            from headrace.dataflow import Dataflow
            from headrace.testing import TestingSink, TestingSource

            flow = Dataflow("cli")
            s = op.input("inp", flow, TestingSource([1]))
            op.output("out", op.map("m", s, str), TestingSink([]))
            """
        )
    )
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace.visualize", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_cli_prints_mermaid_json_and_plantuml(tmp_path: Path) -> None:
    _flow_file(tmp_path)
    mermaid = _cli("viz_flow:flow", cwd=tmp_path)
    assert mermaid.returncode == 0, mermaid.stderr
    assert mermaid.stdout.startswith('flowchart TD\nsubgraph "cli (Dataflow)"\n')
    assert 'cli.inp -- "down → up" --> cli.m' in mermaid.stdout

    as_json = _cli("--json", "viz_flow.py:flow", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["substeps"][1]["op_type"] == "map"

    puml = _cli("-o", "plantuml", "-r", "viz_flow:flow", cwd=tmp_path)
    assert puml.returncode == 0, puml.stderr
    assert "component cli.m.flat_map_batch {" in puml.stdout


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_cli_bad_import_string_fails_with_a_message(tmp_path: Path) -> None:
    _flow_file(tmp_path)
    proc = _cli("viz_flow:nope", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Failed to find attribute 'nope' in 'viz_flow'." in proc.stderr
    assert "Traceback" not in proc.stderr
