"""Zero-edit migration: a program importing ``bytewax.*`` runs on Headrace unchanged."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace import _bytewax_alias

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent("""
    import bytewax.operators as op
    from bytewax.connectors.stdio import StdOutSink
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource

    flow = Dataflow("bw")
    words = op.flat_map("split", op.input("inp", flow, TestingSource(["a b", "b c", "c"])),
                        str.split)
    counts = op.count_final("count", words, lambda w: w)
    op.output("out", op.map("fmt", counts, lambda kv: f"{kv[0]}={kv[1]}"), StdOutSink())
""")
# What Bytewax 0.21.1 prints for PROGRAM (python -m bytewax.run prog:flow).
BYTEWAX_OUTPUT = ["a=1", "b=2", "c=2"]


@pytest.fixture
def program(tmp_path: Path) -> Path:
    (tmp_path / "bw_prog.py").write_text(PROGRAM)
    return tmp_path


def _run(
    cwd: Path, *args: str, env: dict[str, str] | None = None, module: str = "headrace.run"
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != _bytewax_alias.ENV}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT / "runtime"), str(cwd)])
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=100,
        env={**base, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [
        pytest.param(["--bytewax", "bw_prog:flow"], {}, id="flag"),
        pytest.param(["bw_prog:flow"], {"HEADRACE_BYTEWAX_COMPAT": "1"}, id="env"),
        pytest.param(["--bytewax", "./bw_prog.py:flow"], {}, id="path"),
        pytest.param(["--bytewax", "bw_prog:flow", "-p", "2"], {}, id="p2"),
        pytest.param(["--bytewax", "bw_prog:flow", "-w", "2"], {}, id="w2"),
    ],
)
def test_a_bytewax_program_runs_unchanged(program: Path, args: list[str], env: dict[str, str]) -> None:
    res = _run(program, *args, "--metrics-port", "0", env=env)
    assert (res.returncode, res.stderr) == (0, "")
    assert sorted(res.stdout.splitlines()) == BYTEWAX_OUTPUT


def test_headrace_testing_honours_the_environment_variable(program: Path) -> None:
    res = _run(
        program, "bw_prog:flow", "-w", "2", module="headrace.testing", env={"HEADRACE_BYTEWAX_COMPAT": "1"}
    )
    assert (res.returncode, res.stderr) == (0, "")
    assert sorted(res.stdout.splitlines()) == BYTEWAX_OUTPUT


def test_without_the_flag_the_error_says_how(program: Path) -> None:
    res = _run(program, "bw_prog:flow")
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr == (
        "ModuleNotFoundError: No module named 'bytewax'; 'bw_prog' imports 'bytewax', and "
        "Bytewax is not installed; Headrace runs "
        "Bytewax programs unchanged with `python -m headrace.run --bytewax ...` (or "
        "HEADRACE_BYTEWAX_COMPAT=1)\n"
    )


def test_a_real_bytewax_on_the_path_is_named_and_not_used(program: Path, tmp_path: Path) -> None:
    fake = tmp_path / "site" / "bytewax"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise SystemExit('the real bytewax was imported')\n")
    res = _run(
        program,
        "--bytewax",
        "bw_prog:flow",
        "--metrics-port",
        "0",
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT / "runtime"), str(program)])},
    )
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == BYTEWAX_OUTPUT
    assert res.stderr == (
        f"headrace: a real bytewax is installed ({fake}); with --bytewax "
        "(HEADRACE_BYTEWAX_COMPAT=1) its imports run Headrace's modules instead\n"
    )


@pytest.fixture
def alias() -> Iterator[None]:
    _bytewax_alias.install(quiet=True)
    try:
        yield
    finally:
        _bytewax_alias.uninstall()


MODULES = [
    "",
    ".dataflow",
    ".operators",
    ".operators.windowing",
    ".operators.helpers",
    ".testing",
    ".inputs",
    ".outputs",
    ".run",
    ".recovery",
    ".tracing",
    ".errors",
    ".visualize",
    ".connectors",
    ".connectors.stdio",
    ".connectors.files",
    ".connectors.demo",
    ".connectors.kafka",
    ".connectors.kafka.operators",
    ".connectors.kafka.serde",
]


@pytest.mark.usefixtures("alias")
@pytest.mark.parametrize("suffix", MODULES)
def test_bytewax_names_are_the_headrace_modules_themselves(suffix: str) -> None:
    assert importlib.import_module("bytewax" + suffix) is importlib.import_module("headrace" + suffix)


@pytest.mark.usefixtures("alias")
def test_objects_made_through_either_name_are_the_same_types() -> None:
    from bytewax.dataflow import Dataflow as BDataflow
    from bytewax.errors import BytewaxRuntimeError as BError
    from bytewax.testing import TestingSource as BSource

    import headrace.dataflow
    import headrace.errors
    import headrace.operators as op

    flow = BDataflow("x")
    assert isinstance(flow, headrace.dataflow.Dataflow)
    s = op.input("inp", flow, BSource([1]))
    assert isinstance(s, headrace.dataflow.Stream)
    assert BError is headrace.errors.BytewaxRuntimeError


@pytest.mark.usefixtures("alias")
def test_a_bytewax_module_headrace_lacks_is_named() -> None:
    with pytest.raises(ModuleNotFoundError) as info:
        importlib.import_module("bytewax._bytewax")
    assert info.value.name == "bytewax._bytewax"
    assert str(info.value).startswith("No module named 'bytewax._bytewax'")


def test_an_already_imported_real_bytewax_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    monkeypatch.setitem(sys.modules, "bytewax", types.ModuleType("bytewax"))
    with pytest.raises(ImportError, match="a real bytewax is already imported"):
        _bytewax_alias.install()
    assert not _bytewax_alias.installed()
