"""The test suite's own rule: no module under ``tests/`` imports a test module.

What two test modules share lives in `tests.support` (fixtures registered by
``tests/conftest.py``, plain helpers imported from there), so a test module
can be moved, renamed or run alone without breaking another.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _module_name(path: Path) -> str:
    return ".".join(("tests", *path.relative_to(TESTS).with_suffix("").parts))


def _imported(path: Path) -> set[str]:
    """The modules ``path`` imports, as absolute dotted names (``from a import b`` gives ``a.b`` too)."""
    package = _module_name(path).rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_no_test_module_imports_another() -> None:
    sources = [p for p in TESTS.rglob("*.py") if "programs" not in p.relative_to(TESTS).parts]
    test_modules = {_module_name(p) for p in sources if p.name.startswith("test_")}
    found = sorted(
        f"{p.relative_to(TESTS.parent)} imports {name}"
        for p in sources
        for name in _imported(p)
        if name in test_modules and name != _module_name(p)
    )
    assert found == [], "move what is shared to tests/support/:\n" + "\n".join(found)
