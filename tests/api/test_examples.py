"""The examples run end to end and print what their READMEs promise."""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.kafka_broker import KafkaBroker

ROOT = Path(__file__).resolve().parents[2]
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


# ------------------------------------------------------------------ the example app for Kubernetes

APP = EXAMPLES / "k8s" / "app"


def load_app() -> ModuleType:
    """examples/k8s/app/flows.py, imported by path (it is ``flows`` in the app's image)."""
    spec = importlib.util.spec_from_file_location("example_app_flows", APP / "flows.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_app(flow: str, *args: str, env: dict[str, str]) -> str:
    """``python -m headrace.run flows:<flow>`` from the app's directory, as its README says; stdout."""
    full_env = {**os.environ, "HEADRACE_METRICS_PORT": "0", **env}
    cmd = [sys.executable, "-m", "headrace.run", f"flows:{flow}", *args]
    proc = subprocess.run(cmd, cwd=APP, env=full_env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stderr}"
    return proc.stdout


def test_k8s_app_docstring_examples_pass() -> None:
    """flows.py is outside pytest's doctest paths: its examples run here."""
    module = load_app()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, report=True)
    assert result.failed == 0
    assert result.attempted >= 10


@pytest.mark.slow
def test_k8s_app_sensors_prints_running_averages_with_two_workers() -> None:
    app = load_app()
    env = {
        "SENSORS_PARTS": "2",
        "SENSORS_RATE": "10000",
        "SENSORS_READINGS": "6",
        "SENSORS_REPORT_EVERY": "3",
        "SENSORS_WORK_MS": "0.1",
    }
    out = run_app("sensors", "-w", "2", env=env)

    def mean(sensor: str, n: int) -> str:
        return f"{sum(app.reading(sensor, i) for i in range(n)) / n:.2f}"

    assert sorted(out.splitlines()) == [
        f"{s} readings={n} mean={mean(s, n)}" for s in ["sensor-0", "sensor-1"] for n in [3, 6]
    ]


@pytest.mark.slow
def test_k8s_app_wordcount_to_a_file_with_two_workers(tmp_path: Path) -> None:
    out = tmp_path / "wordcount.txt"
    env = {
        "WORDCOUNT_PARTS": "3",
        "WORDCOUNT_LINES": "20",
        "WORDCOUNT_RATE": "1000",
        "WORDCOUNT_OUTPUT": str(out),
    }
    assert run_app("wordcount", "-w", "2", env=env) == ""
    assert sorted(out.read_text().splitlines()) == sorted(load_app().wordcount_output(3, 20))


@pytest.mark.slow
def test_k8s_app_wordcount_stops_at_its_gate_until_the_gate_opens(tmp_path: Path) -> None:
    out, gate = tmp_path / "wordcount.txt", tmp_path / "gate"
    gate.write_text("4")
    env = {
        **os.environ,
        "HEADRACE_METRICS_PORT": "0",
        "WORDCOUNT_PARTS": "2",
        "WORDCOUNT_LINES": "10",
        "WORDCOUNT_RATE": "1000",
        "WORDCOUNT_OUTPUT": str(out),
        "WORDCOUNT_GATE": str(gate),
    }
    cmd = [sys.executable, "-m", "headrace.run", "flows:wordcount"]
    proc = subprocess.Popen(cmd, cwd=APP, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and out.read_text().count("\n") >= 8:
                break
            time.sleep(0.05)
        # Each partition stopped at the gate's 4 lines, and the run goes on.
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        expected = load_app().wordcount_output(2, 10)
        assert sorted(out.read_text().splitlines()) == sorted(expected[0:4] + expected[10:14])
        gate.write_text("10")
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(out.read_text().splitlines()) == sorted(expected)


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A real broker for the app's Kafka flow."""
    from tests.support.kafka_broker import session_broker

    yield from session_broker(tmp_path_factory)


def test_k8s_app_kafka_wordcount(kafka_broker: KafkaBroker) -> None:
    b = kafka_broker
    src, dst = b.create_topic(partitions=3), b.create_topic(partitions=1)
    b.produce(src, [(None, b"the cat and the hat"), (None, b"The end")])
    env = {"KAFKA_BROKERS": b.bootstrap, "KAFKA_IN_TOPIC": src, "KAFKA_OUT_TOPIC": dst}
    assert run_app("kafka_wordcount()", "-w", "2", env=env) == ""
    got = {m.key().decode(): int(m.value()) for m in b.consume_all(dst)}
    assert got == {"the": 3, "cat": 1, "and": 1, "hat": 1, "end": 1}
