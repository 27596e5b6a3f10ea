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
KNOWN_DIFFERENCES: dict[str, str] = {}


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
