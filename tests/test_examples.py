"""The examples run end to end and print what their READMEs promise."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HAS_RUNNER = (ROOT / "runtime" / "headrace" / "run.py").exists()

# Imports an example by path and runs it on one worker: the fallback when
# the runner is not there.
_RUN_MAIN = """
import importlib.util, sys
from headrace.testing import run_main
spec = importlib.util.spec_from_file_location("example", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
run_main(module.flow)
"""


def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``examples/<name>.py:flow`` in a subprocess; return its stdout."""
    full_env = {**os.environ, "HEADRACE_METRICS_PORT": "0", **(env or {})}
    if HAS_RUNNER:
        cmd = [sys.executable, "-m", "headrace.run", f"examples/{name}.py:flow", *args]
    else:
        cmd = [sys.executable, "-c", _RUN_MAIN, str(EXAMPLES / f"{name}.py")]
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stderr}"
    return proc.stdout


def expected_counts(text: str) -> Counter[str]:
    return Counter(re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)*", text.lower()))


def parse_counts(lines: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in lines:
        word, _, count = line.rpartition(": ")
        assert word not in counts, f"{word!r} counted twice"
        counts[word] = int(count)
    return counts


@pytest.mark.slow
def test_wordcount_prints_the_counts_of_the_bundled_text() -> None:
    text = (EXAMPLES / "data" / "wordcount.txt").read_text(encoding="utf-8")
    out = run_example("wordcount")
    got = parse_counts(out.splitlines())
    want = expected_counts(text)
    assert got == dict(want)
    assert got["the"] == want["the"] > 10
    assert "miller's" in got


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RUNNER, reason="worker options need the runner")
def test_wordcount_to_a_file_with_two_workers(tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("Dog cat dog\nDOG bird\n\ncat\n", encoding="utf-8")
    out = tmp_path / "counts.txt"
    stdout = run_example(
        "wordcount",
        "-w",
        "2",
        env={"WORDCOUNT_INPUT": str(inp), "WORDCOUNT_OUTPUT": str(out)},
    )
    assert stdout == ""
    assert sorted(out.read_text().splitlines()) == ["bird: 1", "cat: 2", "dog: 3"]


@pytest.mark.slow
def test_custom_source_prints_hot_readings_of_both_sensors() -> None:
    out = run_example("custom_source")
    got = sorted(re.sub(r"^\[worker \d+\] ", "", line) for line in out.splitlines())
    want = sorted(
        f"{sensor}={value}"
        for sensor in ["boiler", "intake"]
        for value in ((i * 7 + len(sensor)) % 50 for i in range(10))
        if value >= 25
    )
    assert got == want
    assert all(line.startswith("[worker 0] ") for line in out.splitlines())


@pytest.mark.skipif(
    importlib.util.find_spec("headrace.operators.windowing") is None,
    reason="headrace.operators.windowing is not there yet",
)
@pytest.mark.slow
def test_windowed_prints_counts_and_sums_per_user_window() -> None:
    out = run_example("windowed")
    assert sorted(out.splitlines()) == [
        "ann window 0 [12:00:00-12:00:10): 3 events",
        "ann window 0 [12:00:00-12:00:10): 60 cents",
        "ann window 1 [12:00:10-12:00:20): 1 events",
        "ann window 1 [12:00:10-12:00:20): 40 cents",
        "ann window 2 [12:00:20-12:00:30): 1 events",
        "ann window 2 [12:00:20-12:00:30): 50 cents",
        "bob window 0 [12:00:00-12:00:10): 1 events",
        "bob window 0 [12:00:00-12:00:10): 5 cents",
        "bob window 1 [12:00:10-12:00:20): 2 events",
        "bob window 1 [12:00:10-12:00:20): 40 cents",
        "bob window 2 [12:00:20-12:00:30): 2 events",
        "bob window 2 [12:00:20-12:00:30): 80 cents",
    ]
