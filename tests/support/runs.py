"""Real ``headrace.run`` processes of the recovery word count, and checks of their output.

The flow is `tests.support.flows.recovery_flows.running_counts`: it reads
the ``in-*.txt`` files under ``HR_IN`` and writes ``word n`` running counts
under ``HR_OUT``; exactly-once output means each word's counts are
``1, 2, ..., total`` with nothing lost or repeated.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.procs import children, lines_in, wait_for_output

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: the working directory (and ``PYTHONPATH``) of the processes."""

RECOVERY_FLOW = "tests.support.flows.recovery_flows:running_counts()"
"""The import string of the word count that `launch` and `run_cli` run."""


def write_input(d: Path, files: int = 4, lines: int = 1000) -> dict[str, int]:
    """Write ``files`` input files of ``lines`` random lines to ``d``; return each word's count."""
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    counts: collections.Counter[str] = collections.Counter()
    for f in range(files):
        rows = []
        for _ in range(lines):
            words = [f"w{rng.randrange(60)}" for _ in range(rng.randrange(1, 6))]
            counts.update(words)
            rows.append(" ".join(words))
        (d / f"in-{f}.txt").write_text("\n".join(rows) + "\n")
    return dict(counts)


def many_keys_input(d: Path, files: int = 4, lines: int = 1500, words: int = 50) -> dict[str, int]:
    """Input whose epochs change tens of thousands of keys (written off the hot path)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    counts: dict[str, int] = {}
    for f in range(files):
        rows = []
        for _ in range(lines):
            row = [f"k{rng.randrange(400_000)}" for _ in range(words)]
            for w in row:
                counts[w] = counts.get(w, 0) + 1
            rows.append(" ".join(row))
        (d / f"in-{f}.txt").write_text("\n".join(rows) + "\n")
    return counts


def check_output(out_dir: Path, counts: dict[str, int]) -> None:
    """Assert that the running counts under ``out_dir`` are exactly once: ``1..counts[word]`` each."""
    seen: dict[str, list[int]] = collections.defaultdict(list)
    for f in out_dir.iterdir():
        for line in f.read_text().splitlines():
            word, n = line.split()
            seen[word].append(int(n))
    assert set(seen) == set(counts)
    for word, ns in seen.items():
        assert ns == list(range(1, counts[word] + 1)), f"{word}: {ns[:20]}..."


def launch(args: list[str], env: dict[str, str], flow: str = RECOVERY_FLOW) -> subprocess.Popen[str]:
    """Start ``python -m headrace.run FLOW ARGS --metrics-port 0`` (pipes for stdout and stderr)."""
    return subprocess.Popen(
        [sys.executable, "-m", "headrace.run", flow, *args, "--metrics-port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the word count to its end (at most 120 s) and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "headrace.run", RECOVERY_FLOW, *args, "--metrics-port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment, ``HR_IN``/``HR_OUT`` under ``tmp_path``, the root on ``PYTHONPATH``, ``extra``.

    The root's ``runtime/`` goes on it too: the processes run this checkout's
    engine even where another checkout is installed (a git worktree).
    """
    env = dict(os.environ)
    path = os.pathsep.join([str(ROOT), str(ROOT / "runtime")])
    env.update({"HR_IN": str(tmp_path / "in"), "HR_OUT": str(tmp_path / "out"), "PYTHONPATH": path})
    env.update(extra)
    return env


def run_with_kills(
    start: Callable[[], subprocess.Popen[str]],
    out_dir: Path,
    rng: random.Random,
    more: tuple[int, int] = (20, 200),
    *,
    timeout: float = 120,
    ok_codes: tuple[int, ...] = (),
) -> int:
    """Start runs with ``start()`` until one exits 0, SIGKILLing a worker of the first two; return the kills.

    Each of the first two runs that has workers is killed mid-run: once
    ``out_dir`` holds ``rng.randrange(*more)`` lines more than when it
    started (or the run has exited), one of its child processes, chosen by
    ``rng``, gets SIGKILL; the kill counts if the run was still going. Every
    run that fails must say ``lost process`` or ``failed`` on stderr, or exit
    with one of ``ok_codes`` (a kill that lands as a run finishes leaves
    nothing to report). Six runs at most, then the test fails; each may take
    ``timeout`` seconds. The caller asserts what the output must be.

    A run that ends before any output is not killed:

    >>> def quick() -> subprocess.Popen[str]:
    ...     return subprocess.Popen([sys.executable, "-c", "pass"], stderr=subprocess.PIPE, text=True)
    >>> run_with_kills(quick, Path("/nonexistent"), random.Random(1))
    0
    """
    kills = 0
    for _attempt in range(6):
        p = start()
        if kills < 2:
            # Mid-run: once this run has written some output, not at a guessed time.
            wait_for_output(p, out_dir, lines_in(out_dir) + rng.randrange(*more))
            kids = children(p)
            if p.poll() is None and kids:
                os.kill(rng.choice(kids), signal.SIGKILL)
                kills += 1
        _, err = p.communicate(timeout=timeout)
        if p.returncode == 0:
            return kills
        assert "lost process" in err or "failed" in err or p.returncode in ok_codes, (
            p.returncode,
            err[-3000:],
        )
    pytest.fail("the dataflow never completed")


def run_rescaled(store: str, env: dict[str, str], out_dir: Path) -> None:
    """Run the word count on 2 processes, then 3, then 1, resuming from ``store`` each time.

    The 2- and 3-process runs each get SIGTERM once ``out_dir`` holds 100
    lines more than when they started (each must still be running then); the
    1-process run goes to its end. Every run must exit 0; the caller checks
    the output.
    """
    for procs in ("2", "3"):
        p = launch(["-p", procs, "-r", store, "--epoch-interval", "0.1"], env)
        wait_for_output(p, out_dir, lines_in(out_dir) + 100)
        assert p.poll() is None, "the run ended before it could be rescaled"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
    p = launch(["-p", "1", "-r", store, "--epoch-interval", "0.1"], env)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
