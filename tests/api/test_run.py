"""The runner: import strings, the CLI's errors and exit codes, cli_main."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from headrace._imports import locate_dataflow
from headrace.dataflow import Dataflow
from headrace.errors import ImportStringError
from headrace.run import _parser, cli_main, main

ROOT = Path(__file__).resolve().parents[2]
MOD = "tests.support.flows.import_targets"


def test_import_string_forms() -> None:
    assert locate_dataflow(MOD).flow_id == "made_3"  # module: attribute `flow`
    assert locate_dataflow(f"{MOD}:other_flow").flow_id == "made_1"
    assert locate_dataflow(f'{MOD}:make(2, prefix="y")').flow_id == "made_2"
    path = ROOT / "tests" / "support" / "flows" / "import_targets.py"
    assert locate_dataflow(f"{path}:other_flow").flow_id == "made_1"
    assert isinstance(locate_dataflow(str(path)), Dataflow)


@pytest.mark.parametrize(
    ("import_str", "message"),
    [
        ("no_such_pkg.mod:flow", "No module named 'no_such_pkg'; can't import module 'no_such_pkg.mod'"),
        (f"{MOD}:missing", f"Failed to find attribute 'missing' in '{MOD}'. Dataflows in it:"),
        (
            f"{MOD}:not_a_flow",
            f"A valid Bytewax dataflow was not obtained from '{MOD}:not_a_flow': it is a int",
        ),
        (f"{MOD}:make(", "Failed to parse 'make(' as an attribute name or function call"),
        (f"{MOD}:make(len)", "Failed to parse arguments as literal values: 'make(len)'"),
        (f"{MOD}:flow()", "is not callable"),
        ("tests/support/flows/nope.py:flow", "no such file"),
    ],
)
def test_bad_import_strings_say_what_was_tried(import_str: str, message: str) -> None:
    with pytest.raises(ImportStringError) as info:
        locate_dataflow(import_str)
    assert message in str(info.value)


def _cli(import_str: str) -> subprocess.CompletedProcess[str]:
    """``python -m headrace.run import_str`` from the project root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "headrace.run", import_str, "--metrics-port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _flow_file(path: Path, *lines: str) -> str:
    """Write a dataflow module (``lines`` after the usual imports); its import string."""
    path.write_text(
        "\n".join(
            [
                "import headrace.operators as op",
                "from headrace.dataflow import Dataflow",
                "from headrace.testing import TestingSource",
                *lines,
            ]
        )
        + "\n"
    )
    return f"{path}:flow"


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_cli_exit_code_and_message_for_a_bad_import_string() -> None:
    """Bytewax's exit status (1) and last line, with Headrace's hint after it, and no traceback."""
    res = _cli(f"{MOD}:missing")
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == (
        f"AttributeError: Failed to find attribute 'missing' in '{MOD}'. Dataflows in it: "
        "['flow', 'other_flow']"
    )
    assert "Traceback" not in res.stderr
    res = _cli("no_such_pkg.mod:flow")
    assert res.returncode == 1
    assert res.stderr.startswith("ModuleNotFoundError: No module named 'no_such_pkg'; ")


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_cli_runs_a_dataflow_and_fails_with_exit_1_on_errors(tmp_path: Path) -> None:
    res = _cli(
        _flow_file(
            tmp_path / "bad_flow.py",
            "from headrace.connectors.stdio import StdOutSink",
            "flow = Dataflow('bad')",
            "s = op.map('boom', op.input('i', flow, TestingSource([1])), lambda x: 1 / 0)",
            "op.output('o', s, StdOutSink())",
        )
    )
    assert res.returncode == 1
    assert "bad.boom" in res.stderr and "ZeroDivisionError" in res.stderr
    # The error already quotes its cause: no "caused by" line repeats it.
    assert res.stderr.rstrip().splitlines()[-1].startswith("error: error calling `mapper`")
    assert "caused by:" not in res.stderr


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_cli_error_ends_with_the_causes_the_message_does_not_quote(tmp_path: Path) -> None:
    """A connector's reason reaches the last lines (and so a pod's termination message)."""
    res = _cli(
        _flow_file(
            tmp_path / "unreachable_flow.py",
            "from headrace.outputs import DynamicSink",
            "class Sink(DynamicSink):",
            "    def build(self, step_id, worker_index, worker_count):",
            "        try:",
            "            raise ConnectionRefusedError(111, 'Connection refused')",
            "        except OSError as exc:",
            "            raise ConnectionError('db at db:5432 is unreachable; is it running?') from exc",
            "flow = Dataflow('unreachable')",
            "op.output('o', op.input('i', flow, TestingSource([1])), Sink())",
        )
    )
    assert res.returncode == 1
    assert res.stderr.rstrip().splitlines()[-3:] == [
        "error: error building sink in step 'unreachable.o'",
        "caused by: ConnectionError: db at db:5432 is unreachable; is it running?",
        "caused by: ConnectionRefusedError: [Errno 111] Connection refused",
    ], res.stderr[-1500:]


def test_main_and_cli_main_in_process() -> None:
    from tests.support.flows import import_targets

    import_targets.OUT.clear()
    assert main([f'{MOD}:make(2, prefix="m")', "--metrics-port", "0"]) == 0
    assert import_targets.OUT == ["m0", "m1"]
    import_targets.OUT.clear()
    cli_main(import_targets.make(2, "c"), workers_per_process=2)
    assert sorted(import_targets.OUT) == ["c0", "c1"]


def test_bytewax_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYTEWAX_WORKERS_PER_PROCESS", "3")
    monkeypatch.setenv("HEADRACE_KEY_GROUPS", "64")
    args = _parser().parse_args(["m:f", "-r", "./state", "-s", "2", "-b", "30"])
    assert args.workers_per_process == 3
    assert args.key_groups == 64
    assert args.recovery == "./state"
    assert args.snapshot_interval.total_seconds() == 2
    assert args.backup_interval.total_seconds() == 30
    args = _parser().parse_args(["m:f", "--recovery-directory", "d", "-w", "1"])
    assert args.recovery == "d" and args.workers_per_process == 1


def test_exchange_flush_flag_env_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from headrace._engine._execute import _config

    assert _parser().parse_args(["m:f"]).exchange_flush_ms == timedelta(milliseconds=20)
    args = _parser().parse_args(["m:f", "--exchange-flush-ms", "0.5"])
    assert args.exchange_flush_ms == timedelta(microseconds=500)
    monkeypatch.setenv("HEADRACE_EXCHANGE_FLUSH_MS", "0")
    assert _parser().parse_args(["m:f"]).exchange_flush_ms == timedelta(0)
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["m:f", "--exchange-flush-ms", bad])
    config = _config(None, True, 256, None, timedelta(milliseconds=3))
    assert config.exchange_flush_seconds == 0.003
    with pytest.raises(ValueError, match="exchange_flush must not be negative"):
        _config(None, True, 256, None, timedelta(milliseconds=-1))


def test_cli_runs_with_no_exchange_flush_delay() -> None:
    from tests.support.flows import import_targets

    import_targets.OUT.clear()
    argv = [f'{MOD}:make(6, prefix="x")', "-w", "2", "--exchange-flush-ms", "0", "--metrics-port", "0"]
    assert main(argv) == 0
    assert sorted(import_targets.OUT) == [f"x{i}" for i in range(6)]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("processes", ["1", "2"])
def test_closed_stdout_stops_with_one_line_and_sigpipe_status(processes: str) -> None:
    """``headrace.run ... | head``: the reader went away, so stop as Unix tools do.

    The exit status is a shell's for SIGPIPE (141) and stderr has one line
    per process, not a traceback.
    """
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headrace.run",
            "examples/wordcount.py:flow",
            "-p",
            processes,
            "--metrics-port",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    p.stdout.close()  # before the counts are written at the end of the input
    _, err = p.communicate(timeout=100)
    assert p.returncode == 141, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and all("standard output was closed (broken pipe)" in ln for ln in lines), err


def _endless_flow(tmp_path: Path) -> str:
    return _flow_file(
        tmp_path / "endless_flow.py",
        "from datetime import timedelta",
        "from headrace.connectors.demo import RandomMetricSource",
        "from headrace.connectors.stdio import StdOutSink",
        "flow = Dataflow('endless')",
        "s = op.input('i', flow, RandomMetricSource('m', interval=timedelta(milliseconds=5)))",
        "op.output('o', op.map('name', s, lambda kv: kv[0]), StdOutSink())",
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("processes", "sig", "to_group", "code"),
    [
        pytest.param("1", "SIGINT", False, 130, id="1-SIGINT"),
        pytest.param("1", "SIGTERM", False, 0, id="1-SIGTERM"),
        # A terminal's Ctrl-C signals the whole foreground process group.
        pytest.param("2", "SIGINT", True, 130, id="p2-ctrl-c"),
        pytest.param("2", "SIGINT", False, 130, id="p2-SIGINT-parent"),
        pytest.param("2", "SIGTERM", False, 0, id="p2-SIGTERM"),
    ],
)
@pytest.mark.slow
def test_stop_signals_stop_cleanly_with_the_conventional_status(
    tmp_path: Path, processes: str, sig: str, to_group: bool, code: int
) -> None:
    """Ctrl-C stops at the epoch boundary and exits 130; SIGTERM (Kubernetes) exits 0."""
    import os
    import signal

    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headrace.run",
            _endless_flow(tmp_path),
            "-p",
            processes,
            "--metrics-port",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert p.stdout is not None
    try:
        assert p.stdout.readline() == "m\n"  # running
        signum = getattr(signal, sig)
        if to_group:
            os.killpg(p.pid, signum)
        else:
            p.send_signal(signum)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == code, err
    assert set(out.split()) <= {"m"}
    stops = [ln for ln in err.splitlines() if ln.strip()]
    assert len(stops) == int(processes), err  # one line per process, no "failed", no traceback
    assert all(f"received {sig}: stopping at the next epoch boundary" in ln for ln in stops), err


def _pid1_command() -> list[str] | None:
    """A prefix that runs a command as PID 1 of a new PID namespace (as in a container), if allowed."""
    import os
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return None
    probe = subprocess.run([unshare, "--pid", "--fork", "true"], capture_output=True, check=False)
    return [unshare, "--pid", "--fork", "--kill-child=KILL"] if probe.returncode == 0 else None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("as_pid1", [False, True], ids=["process", "pid1"])
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_sigterm_while_the_flow_imports_exits_at_once(tmp_path: Path, as_pid1: bool) -> None:
    """A pod deleted while its module imports: SIGTERM ends the run at once with 143, even as PID 1
    (which ignores any signal it has no handler for: the kubelet would wait for its SIGKILL)."""
    import os
    import signal
    import time

    prefix: list[str] = []
    if as_pid1:
        found = _pid1_command()
        if found is None:
            pytest.skip("needs root and unshare(1) to run a process as PID 1 of its own namespace")
        prefix = found
    marker = tmp_path / "importing"
    flow = _flow_file(
        tmp_path / "slow_import.py",
        "import pathlib, time",
        f"pathlib.Path({str(marker)!r}).write_text(str(__import__('os').getpid()))",
        "time.sleep(60)",
        "flow = Dataflow('slow')",
    )
    p = subprocess.Popen(
        [*prefix, sys.executable, "-m", "headrace.run", flow, "--metrics-port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text():
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        own_pid = int(marker.read_text())
        assert own_pid == 1 if as_pid1 else own_pid == p.pid
        # The worker itself gets the signal (inside the namespace: the child of unshare).
        target = (
            p.pid if not as_pid1 else int(Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()[0])
        )
        os.kill(target, signal.SIGTERM)
        out, err = p.communicate(timeout=20)  # the flow's import would sleep for 60 s
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 143, err
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.endswith(" WARNING headrace.run: received SIGTERM before the dataflow started: exiting"), err


@pytest.mark.timeout(120)
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_a_stop_that_hangs_prints_every_threads_stack(tmp_path: Path) -> None:
    """A user function that holds the epoch boundary: the watchdog shows where, then the run stops."""
    import os
    import signal

    flow = _flow_file(
        tmp_path / "slow_step.py",
        "import time",
        "from headrace.connectors.stdio import StdOutSink",
        "def slow_step(x):",
        "    if x == 2:",
        "        time.sleep(4)",
        "    return x",
        "flow = Dataflow('slow')",
        "s = op.input('i', flow, TestingSource([1, 2]))",
        "op.inspect('seen', s, lambda step, x: print(x, flush=True))",
        "op.output('o', op.map('wait', s, slow_step), StdOutSink())",
    )
    p = subprocess.Popen(
        [sys.executable, "-m", "headrace.run", flow, "--metrics-port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "HEADRACE_STOP_STACKS_AFTER": "1"},
    )
    assert p.stdout is not None
    try:
        assert p.stdout.readline() == "1\n"
        assert p.stdout.readline() == "1\n"
        assert p.stdout.readline() == "2\n"  # slow_step(2) is sleeping now
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, err
    assert out == "2\n"
    assert "received SIGTERM: stopping at the next epoch boundary" in err
    assert "Timeout (0:00:01)!" in err
    assert 'slow_step.py", line 8 in slow_step' in err, err  # in time.sleep(4)
