"""Each program of ``tests/compat/programs/`` prints the same under Bytewax 0.21.1 and Headrace.

One test per program (and one more per program marked ``bytewax-flag``, run
unchanged through ``python -m headrace.run --bytewax``). Known differences
are listed in `KNOWN_DIFFERENCES` as strict expected failures, so a fix
shows up as an XPASS failure and its entry must then go.
"""

from __future__ import annotations

import pytest

from tests.compat import _harness
from tests.compat.conftest import Runner

# program file (or "file --bytewax") -> why Headrace differs today. Item numbers
# refer to issue 18 ("Bytewax programs run unchanged"); "not in items 1-11"
# marks differences the harness found that the issue does not list yet.
_FLAG = "issue 18 item 11: `python -m headrace.run --bytewax` (run a Bytewax program unchanged)"
KNOWN_DIFFERENCES: dict[str, str] = {
    "cli_run_factory.py --bytewax": _FLAG,
    "cli_run_module.py --bytewax": _FLAG,
    "cli_run_redistribute.py --bytewax": _FLAG,
    "cli_run_workers.py --bytewax": _FLAG,
    "cli_metrics_port_in_use.py": "issue 18 item 10: metrics port 3030 in use fails the run (Bytewax runs)",
    "cli_keyboard_interrupt.py": "issue 18 item 10: Ctrl-C during a CLI run exits 0 (Bytewax: 1)",
    "cli_errors.py": (
        "not in items 1-11: missing flow attribute: exit 2 and an 'error:' line "
        "(Bytewax: exit 1, AttributeError: Failed to find attribute ...)"
    ),
    "err_no_input.py": "issue 18 item 9: build error type DataflowBuildError (Bytewax: BytewaxRuntimeError)",
    "err_no_output.py": "issue 18 item 9: build error type DataflowBuildError (Bytewax: BytewaxRuntimeError)",
    "recovery_abort_run_main.py": (
        "issue 18 item 4: resuming at a TestingSource.EOF() goes past it (Bytewax stops there again)"
    ),
}


def _cases() -> list[object]:
    params: list[object] = []
    for path in sorted(_harness.PROGRAMS.glob("*.py")):
        spec = _harness.Spec.parse(path.read_text())
        impls = ["headrace"] + (["headrace-flag"] if spec.bytewax_flag else [])
        for impl in impls:
            case_id = path.name if impl == "headrace" else f"{path.name} --bytewax"
            marks = []
            if case_id in KNOWN_DIFFERENCES:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_DIFFERENCES[case_id]))
            params.append(pytest.param((path.name, impl), id=case_id, marks=marks))
    return params


@pytest.mark.parametrize("case", _cases())
def test_program(case: tuple[str, str], compat_runner: Runner) -> None:
    """Stdout and exit status of every step agree (and stderr's exception lines, where asked)."""
    name, impl = case
    expected, actual = compat_runner.result(name, impl)
    problems = _harness.compare(_harness.PROGRAMS / name, expected, actual)
    assert not problems, "\n\n".join(problems)


def test_known_differences_name_programs() -> None:
    """Every entry of `KNOWN_DIFFERENCES` names a program that exists."""
    names = {p.name for p in _harness.PROGRAMS.glob("*.py")}
    assert [k for k in KNOWN_DIFFERENCES if k.split(" ")[0] not in names] == []
