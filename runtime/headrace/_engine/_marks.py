"""Wall-clock marks of a run's start and of its output, committed with the epochs.

Placed in the flow: ``headrace.run`` marks when the process started and when
the flow was imported (`mark`); `_execute` marks when this process's workers
were built, their state restored; each worker notes when its sinks wrote
(`OutputMark`, per epoch) and sends that on its control barrier, so worker 0
knows the first and last output of every epoch across the cluster. Worker 0
adds `commit_fields` to each commit: the recovery store's meta then says
when output last came out (``out:last``), and, for the execution that owns
the store, when its process started, imported, restored and first wrote
output (``run:*``). The Kubernetes operator reads them (`run_marks`) to
measure the output gap of a transition: last output before the stop to the
first output after.

>>> m = OutputMark(); m.wrote(5.0); m.wrote(6.0); (m.first, m.last)
(5.0, 6.0)
>>> f = commit_fields("e1", {"process": 1.0}, True, out_first=0.0, out_last=0.0, first_output=0.0)
>>> sorted(f.items())
[('run:execution', 'e1'), ('run:first_output', '0'), ('run:process', '1.0')]
>>> run_marks({**f, "out:last": "4.5"}).last_output
4.5
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["START", "OutputMark", "RunMarks", "commit_fields", "mark", "run_marks"]

# This process's start marks (wall-clock seconds), by name: process, imported, restored.
START: dict[str, float] = {}


def mark(name: str, at: float | None = None) -> None:
    """Note that this process reached ``name`` of its start now (or ``at``).

    >>> mark("imported", 7.0); START["imported"]
    7.0
    """
    START[name] = time.time() if at is None else at


class OutputMark:
    """When one worker's sinks wrote in the current epoch (0.0: not yet)."""

    __slots__ = ("first", "last")

    def __init__(self) -> None:
        self.first = 0.0
        self.last = 0.0

    def wrote(self, at: float) -> None:
        """A sink wrote a batch at ``at``."""
        self.last = at
        if not self.first:
            self.first = at

    def take(self) -> tuple[float, float]:
        """This epoch's (first, last), and start afresh for the next.

        >>> m = OutputMark(); m.wrote(2.0); m.take(), m.take()
        ((2.0, 2.0), (0.0, 0.0))
        """
        got = (self.first, self.last)
        self.first = self.last = 0.0
        return got


def commit_fields(
    execution_id: str,
    start: Mapping[str, float],
    first_commit: bool,
    out_first: float,
    out_last: float,
    first_output: float,
) -> dict[str, str]:
    """The meta fields a commit adds: the run's start marks (its first commit), its
    first output (once), and the last output of the epoch (when it had any).

    ``first_output`` is the run's first output noted before this epoch (0.0: none).

    >>> commit_fields("e1", {}, first_commit=False, out_first=3.0, out_last=4.0, first_output=0.0)
    {'out:last': '4.0', 'run:first_output': '3.0'}
    >>> commit_fields("e1", {}, first_commit=False, out_first=5.0, out_last=6.0, first_output=3.0)
    {'out:last': '6.0'}
    """
    out: dict[str, str] = {}
    if first_commit:
        out["run:execution"] = execution_id
        for name, at in start.items():
            out[f"run:{name}"] = repr(at)
        out["run:first_output"] = "0"
    if out_last:
        out["out:last"] = repr(out_last)
        if not first_output:
            out["run:first_output"] = repr(out_first)
    return out


@dataclass
class RunMarks:
    """What a store's meta says of output and of the owning execution's start (0.0: unknown)."""

    last_output: float = 0.0
    execution: str = ""
    first_output: float = 0.0
    start: dict[str, float] = field(default_factory=dict)


def run_marks(fields: Mapping[str, str]) -> RunMarks:
    """The marks among a store's meta fields.

    >>> run_marks({"run:execution": "e", "run:restored": "2.5", "committed_epoch": "3"}).start
    {'restored': 2.5}
    """
    got = RunMarks(execution=fields.get("run:execution", ""))
    for key, value in fields.items():
        try:
            at = float(value)
        except ValueError:
            continue
        if key == "out:last":
            got.last_output = at
        elif key == "run:first_output":
            got.first_output = at
        elif key.startswith("run:") and key != "run:execution":
            got.start[key[4:]] = at
    return got
