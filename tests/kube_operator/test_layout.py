"""The operator package's layout: its layers, its settings, its use of the engine.

Static checks on the source (no import side effects): each module imports
only modules above it in `LAYERS` (the map in docs/architecture.md, so
there are no import cycles), only `config` reads the environment, and the
engine is used only through its face, ``headrace._engine``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "headrace_operator"

# Lowest first: a module may import only modules listed before it.
LAYERS = [
    "config",
    "events",
    "metrics",
    "election",
    "schema",
    "spec",
    "status",
    "crd",
    "manifests",
    "autoscaler",
    "step_errors",
    "observation",
    "diagnosis",
    "outcome",
    "kept",
    "target",
    "output_gap",
    "transitions",
    "conditions",
    "health",
    "rollback",
    "early_start",
    "reconcile",
    "_kube",
    "console",
    "handlers",
    "main",
]


def _trees() -> dict[str, ast.Module]:
    """Each module's tree; a subpackage (``console/``) counts as one module, its files together."""
    out = {
        path.stem: ast.parse(path.read_text())
        for path in sorted(PACKAGE.glob("*.py"))
        if path.stem != "__init__"
    }
    for sub in sorted(p.parent for p in PACKAGE.glob("*/__init__.py")):
        body = [node for path in sorted(sub.glob("*.py")) for node in ast.parse(path.read_text()).body]
        out[sub.name] = ast.Module(body=body, type_ignores=[])
    return out


def _imports(tree: ast.Module) -> set[str]:
    """Every module name imported anywhere in ``tree`` (also inside functions)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "headrace_operator":
                out |= {f"headrace_operator.{alias.name}" for alias in node.names}
            else:
                out.add(node.module)
    return out


def test_every_module_is_in_the_layer_map() -> None:
    assert sorted(_trees()) == sorted(LAYERS)


def test_each_module_imports_only_modules_above_it() -> None:
    upward = []
    for name, tree in _trees().items():
        for imported in _imports(tree):
            parts = imported.split(".")
            if parts[0] != "headrace_operator" or len(parts) < 2 or parts[1] == name:
                continue  # not the operator, or a subpackage's own modules
            if LAYERS.index(parts[1]) >= LAYERS.index(name):
                upward.append(f"{name} -> {parts[1]}")
    assert upward == []


def test_only_config_reads_the_environment() -> None:
    readers = []
    for name, tree in _trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                readers.append(name)
    assert sorted(set(readers)) == ["config"]


def test_the_engine_is_used_only_through_its_face() -> None:
    engine = sorted(
        {
            imported
            for tree in _trees().values()
            for imported in _imports(tree)
            if imported == "headrace" or imported.startswith("headrace.")
        }
    )
    assert engine == ["headrace._engine"]


def test_the_architecture_page_lists_the_layers_in_order() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Operator", 1)[1]
    block = section.split("```", 2)[1]
    names = [m.group(1) for m in re.finditer(r"^(\w+)\s", block, re.MULTILINE)]
    assert names == LAYERS
