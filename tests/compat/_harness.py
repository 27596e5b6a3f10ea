"""Differential harness: run a Bytewax program under Bytewax 0.21.1 and under Headrace.

A *program* is a Python file in ``tests/compat/programs/`` written against the
``bytewax`` API exactly as a Bytewax user would. Comment lines at its top
starting with ``# compat:`` say how it is run (see ``tests/compat/README.md``):

``# compat: run ARGS``
    One step: ``python ARGS`` in the program's temp directory. Several ``run``
    lines make a sequence (recovery: init, crash, resume). ``{pkg}`` becomes
    ``bytewax`` or ``headrace``, ``{mod}`` the program's module name, ``{file}``
    its file name. Without a ``run`` line the program runs as a script.
``# compat: stderr last`` / ``# compat: stderr chain``
    Also compare stderr: Bytewax's last exception line (``last``: the error
    ``pytest.raises(match=...)`` sees), or the chain's lines in order
    (``chain``: the causes and the last line, without Bytewax's internal
    ``BytewaxRuntimeError`` wrappers between them), each as a *prefix* of a
    Headrace exception line, so Headrace may add a hint after Bytewax's
    words. Rust source locations (``(src/x.rs:1:2): ``) are dropped from
    Bytewax's lines and ``headrace`` is read as ``bytewax`` in Headrace's.
``# compat: env NAME=VALUE``
    An environment variable for every step.
``# compat: bytewax-flag``
    Also run the unchanged program through ``python -m headrace.run --bytewax``.

Stdout and exit status of every step are compared exactly (no sorting).
Headrace runs a copy of the program with ``bytewax`` replaced by ``headrace``
(as a word); Bytewax runs it unchanged in its own virtualenv, made once at
``~/.cache/headrace-compat/bytewax-venv``. Bytewax's results are cached per
program content in ``~/.cache/headrace-compat/expected/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

BYTEWAX_VERSION = "0.21.1"
# Bump when the way programs are run changes, so cached Bytewax results are redone.
CACHE_VERSION = "1"
PROGRAMS = Path(__file__).parent / "programs"
STEP_TIMEOUT = 120.0

_RUST_LOCATION = re.compile(r"\(src/[\w/]+\.rs:\d+:\d+\): ")
_WRAPPER = "bytewax.errors.BytewaxRuntimeError: "
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)(: |$)")


def cache_root() -> Path:
    """Where the Bytewax venv and the expected outputs live (``$HEADRACE_COMPAT_CACHE``).

    >>> cache_root().name
    'headrace-compat'
    """
    env = os.environ.get("HEADRACE_COMPAT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "headrace-compat"


@dataclasses.dataclass(frozen=True)
class Spec:
    """How one program is run, read from its ``# compat:`` header.

    >>> s = Spec.parse("# compat: run -m {pkg}.run {mod}:flow -w 2\\n# compat: stderr last\\nx = 1\\n")
    >>> s.steps, s.stderr, s.bytewax_flag
    ((['-m', '{pkg}.run', '{mod}:flow', '-w', '2'],), 'last', False)
    """

    steps: tuple[list[str], ...]
    stderr: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    bytewax_flag: bool = False
    # Deliberate differences: (Bytewax's stdout text, what Headrace prints instead).
    differs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Spec:
        """Read the header of a program's text; a program without one runs as a script.

        >>> Spec.parse("print(1)\\n").steps
        (['{file}'],)
        """
        steps: list[list[str]] = []
        stderr: str | None = None
        env: list[tuple[str, str]] = []
        flag = False
        differs: list[tuple[str, str]] = []
        for line in text.splitlines():
            if not line.startswith("# compat:"):
                continue
            word, _, rest = line[len("# compat:") :].strip().partition(" ")
            rest = rest.strip()
            if word == "run":
                steps.append(shlex.split(rest))
            elif word == "stderr":
                if rest not in ("last", "chain"):
                    raise ValueError(f"'# compat: stderr' takes 'last' or 'chain', not {rest!r}")
                stderr = rest
            elif word == "env":
                name, _, value = rest.partition("=")
                env.append((name, value))
            elif word == "bytewax-flag":
                flag = True
            elif word == "differs":
                old, sep, new = rest.partition(" => ")
                if not sep or not old:
                    raise ValueError(f"'# compat: differs' takes 'BYTEWAX => HEADRACE', not {rest!r}")
                differs.append((old, new))
            else:
                raise ValueError(f"unknown '# compat:' directive {word!r} in {line!r}")
        return cls(tuple(steps) or (["{file}"],), stderr, tuple(env), flag, tuple(differs))


@dataclasses.dataclass
class Step:
    """What one step printed and returned."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def to_headrace(text: str) -> str:
    """Rewrite a Bytewax program's imports for Headrace (the word ``bytewax`` only).

    >>> to_headrace("import bytewax.operators as op  # bytewax_x stays")
    'import headrace.operators as op  # bytewax_x stays'
    """
    return re.sub(r"\bbytewax\b", "headrace", text)


def exception_lines(stderr: str, *, headrace: bool) -> list[str]:
    """The exception lines of a traceback on ``stderr``, normalized for comparing.

    >>> exception_lines("Traceback...\\nbytewax.errors.BoomError: (src/a.rs:1:2): boom\\n", headrace=False)
    ['bytewax.errors.BoomError: boom']
    >>> exception_lines("headrace.errors.BoomError: boom (hint)\\n", headrace=True)
    ['bytewax.errors.BoomError: boom (hint)']
    """
    out = []
    for line in stderr.splitlines():
        if _EXCEPTION_LINE.match(line):
            line = _RUST_LOCATION.sub("", line)
            out.append(re.sub(r"\bheadrace\b", "bytewax", line) if headrace else line)
    return out


def stderr_mismatch(mode: str, expected: str, actual: str) -> str | None:
    """Compare Bytewax's and Headrace's stderr in ``mode``; None if they agree, else why not.

    Each of Bytewax's exception lines (the last one, or the whole chain) must
    be a prefix of one of Headrace's, in order.

    >>> stderr_mismatch("last", "ValueError: bad id\\n", "x\\nValueError: bad id; try y\\n") is None
    True
    >>> stderr_mismatch("last", "ValueError: bad id\\n", "TypeError: bad id\\n")
    "Bytewax's exception line 'ValueError: bad id' is not a prefix of any of ['TypeError: bad id']"
    """
    want = exception_lines(expected, headrace=False)
    got = exception_lines(actual, headrace=True)
    if mode == "last":
        want = want[-1:]
    else:
        # Bytewax's own wrappers between the cause and the outermost error
        # ("error while iterating through batch") are its internals: skipped.
        want = [w for w in want[:-1] if not w.startswith(_WRAPPER)] + want[-1:]
    if not want:
        return "Bytewax printed no exception line on stderr"
    i = 0
    for line in want:
        while i < len(got) and not got[i].startswith(line):
            i += 1
        if i == len(got):
            return f"Bytewax's exception line {line!r} is not a prefix of any of {got!r}"
        i += 1
    return None


_venv_lock = threading.Lock()
# Headrace's CLI serves metrics on port 3030 by default: two CLI programs at once
# would fight over it, so the harness runs one at a time (scripts run alongside).
_cli_lock = threading.Lock()


def bytewax_python() -> Path:
    """Bytewax's interpreter: its venv is made once (``pip install bytewax==0.21.1``) and probed."""
    venv = cache_root() / "bytewax-venv"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m, bytewax; print(m.version('bytewax'))"]
    with _venv_lock:
        ok = python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip()
        if ok != BYTEWAX_VERSION:
            venv.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            pip = [str(python), "-m", "pip", "install", "-q", f"bytewax=={BYTEWAX_VERSION}"]
            subprocess.run(pip, check=True)
            version = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
            if version != BYTEWAX_VERSION:
                raise RuntimeError(f"{venv}: bytewax {version!r} installed, not {BYTEWAX_VERSION}")
    return python


def _env(spec: Spec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BYTEWAX_", "HEADRACE_"))}
    env.pop("PYTHONPATH", None)
    env.update(PYTHONHASHSEED="0", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", RUST_BACKTRACE="0")
    env.update(dict(spec.env))
    return env


def run_program(path: Path, impl: str) -> list[Step]:
    """Run a program's steps under ``impl``: ``bytewax``, ``headrace``, or ``headrace-flag``.

    ``headrace-flag`` runs the unchanged program with ``-m headrace.run --bytewax``.
    """
    text = path.read_text()
    spec = Spec.parse(text)
    python = str(bytewax_python()) if impl == "bytewax" else sys.executable
    pkg = "bytewax" if impl == "bytewax" else "headrace"
    source = to_headrace(text) if impl == "headrace" else text
    uses_cli = any(a.startswith("{pkg}.") for raw in spec.steps for a in raw) or '"-m"' in text
    with _cli_lock if uses_cli and impl != "bytewax" else contextlib.nullcontext():
        return _run_steps(path, spec, python, pkg, source, impl)


def _run_steps(path: Path, spec: Spec, python: str, pkg: str, source: str, impl: str) -> list[Step]:
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix=f"compat-{path.stem}-") as tmp:
        (Path(tmp) / path.name).write_text(source)
        for raw in spec.steps:
            args = [a.format(pkg=pkg, mod=path.stem, file=path.name) for a in raw]
            if impl == "headrace-flag":
                if "headrace.run" not in args:
                    raise ValueError(f"{path.name}: bytewax-flag needs every step to use -m {{pkg}}.run")
                args.insert(args.index("headrace.run") + 1, "--bytewax")
            try:
                p = subprocess.run(
                    [python, *args],
                    cwd=tmp,
                    env=_env(spec),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=STEP_TIMEOUT,
                )
                steps.append(Step(args, p.returncode, p.stdout, p.stderr))
            except subprocess.TimeoutExpired as e:
                out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
                err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
                steps.append(Step(args, -999, out, err + f"\n[compat: timed out after {STEP_TIMEOUT}s]"))
                break
    return steps


def expected_steps(path: Path) -> list[Step]:
    """Bytewax's results for a program, from the cache when the program is unchanged.

    ``HEADRACE_COMPAT_REFRESH=1`` ignores the cache.
    """
    key = hashlib.sha256(f"{CACHE_VERSION}\0{BYTEWAX_VERSION}\0".encode() + path.read_bytes()).hexdigest()
    cached = cache_root() / "expected" / f"{path.stem}-{key[:24]}.json"
    if cached.exists() and not os.environ.get("HEADRACE_COMPAT_REFRESH"):
        return [Step(**s) for s in json.loads(cached.read_text())]
    steps = run_program(path, "bytewax")
    if any(s.returncode == -999 for s in steps):
        # Bytewax itself hung (seen once, in cli_keyboard_interrupt, on a
        # fresh machine under heavy load, never here in 5 direct runs): a hang of
        # the reference is not the behaviour to compare with, so run it once more.
        steps = run_program(path, "bytewax")
    if all(s.returncode != -999 for s in steps):
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps([dataclasses.asdict(s) for s in steps], indent=1))
        tmp.replace(cached)
    return steps


def compare(path: Path, expected: list[Step], actual: list[Step]) -> list[str]:
    """Every difference between Bytewax's steps and Headrace's, as readable lines (empty: none).

    >>> a = [Step(["x.py"], 0, "1\\n2\\n", "")]
    >>> compare(Path("x.py"), a, [Step(["x.py"], 0, "2\\n1\\n", "")])
    ['step 1 (python x.py): stdout differs:\\n--- bytewax\\n+++ headrace\\n+2\\n 1\\n-2']
    """
    import difflib

    spec = Spec.parse(path.read_text()) if path.exists() else Spec((["{file}"],))
    problems: list[str] = []
    if len(expected) != len(actual):
        problems.append(f"bytewax ran {len(expected)} steps, headrace {len(actual)}")
    for n, (want, got) in enumerate(zip(expected, actual, strict=False), 1):
        where = f"step {n} (python {' '.join(got.args)})"
        for old, new in spec.differs:
            want = dataclasses.replace(want, stdout=want.stdout.replace(old, new))
        if want.stdout != got.stdout:
            diff = difflib.unified_diff(
                want.stdout.splitlines(), got.stdout.splitlines(), "bytewax", "headrace", lineterm="", n=2
            )
            body = "\n".join(line for line in diff if not line.startswith("@@"))
            problems.append(f"{where}: stdout differs:\n{body}")
        if want.returncode != got.returncode:
            tail = "\n".join(got.stderr.strip().splitlines()[-3:])
            status = f"exit status {got.returncode}, bytewax {want.returncode}"
            problems.append(f"{where}: {status}; headrace stderr ends:\n{tail}")
        if spec.stderr:
            why = stderr_mismatch(spec.stderr, want.stderr, got.stderr)
            if why:
                problems.append(f"{where}: stderr: {why}")
    return problems
