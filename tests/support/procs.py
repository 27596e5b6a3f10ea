"""Helpers for fault tests that kill processes of a running dataflow."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any


def children(parent: subprocess.Popen[str]) -> list[int]:
    """The pids of ``parent``'s child processes (the workers of ``-p N``)."""
    try:
        out = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True)
    except FileNotFoundError:
        return []
    return [int(x) for x in out.stdout.split()]


def lines_in(out_dir: Path) -> int:
    """Lines written so far to the files of ``out_dir`` (which a sink may still be writing)."""
    total = 0
    if not out_dir.is_dir():
        return 0
    for f in out_dir.iterdir():
        try:
            total += f.read_bytes().count(b"\n")
        except FileNotFoundError:
            pass
    return total


def wait_for_output(p: subprocess.Popen[str], out_dir: Path, lines: int, timeout: float = 60) -> None:
    """Wait until ``out_dir`` holds ``lines`` lines, or ``p`` exits: a kill then lands mid-run."""
    deadline = time.monotonic() + timeout
    while p.poll() is None and lines_in(out_dir) < lines and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_for_commit(p: subprocess.Popen[str], store: Any, epoch: int, timeout: float = 120) -> None:
    """Wait until ``store`` has committed ``epoch`` or a later one; fail if ``p`` exits first."""
    deadline = time.monotonic() + timeout
    while (meta := store.load_meta()) is None or meta.committed_epoch < epoch:
        assert p.poll() is None, p.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no epoch committed"
        time.sleep(0.05)
