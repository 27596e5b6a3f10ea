"""The output gap of a transition: last output before the stop to the first output after.

Placed in the flow: the workers commit, with their epochs, when output last
came out and when the execution that owns the store started, imported,
restored and first wrote output (headrace's ``_engine._marks``); `_kube`
reads them into `StoreInfo` with the rest of the store's meta. When a
transition's new pods start, `transitions.start` notes the old pods' last
output and execution (`note_start`); once all pods are Ready,
`transitions.arrived` turns the transition into a `TransitionRecord`
(``status.lastTransitions``), and `follow` fills in the gap and its phases
as soon as the new execution's first output is committed, then posts the
transition's completion event with them (after `WAIT` at the latest,
without them).

The phases are the differences of consecutive marks, each clamped to lie
between the one before and the first output, so they always add up to the
gap::

    last output -> new pods applied -> process started -> imported -> restored -> first output
         stop          pods start          imports          restore      first epoch

>>> gap, ph = measure(100.0, 101.0, RunInfo("e2", 101.5, 102.0, 102.25, 103.0))
>>> gap, ph.stop, ph.pods_start, ph.imports, ph.restore, ph.first_epoch
(3.0, 1.0, 0.5, 0.5, 0.25, 0.75)
"""

from __future__ import annotations

from headrace_operator.observation import RunInfo, StoreInfo
from headrace_operator.status import GapPhases, TransitionRecord, TransitionStatus, iso_ms, parse_iso

__all__ = ["KEEP", "WAIT", "describe", "measure", "new_run", "note_start", "record", "settle"]

WAIT = 30.0
"""Seconds after all pods got Ready that a completion event waits for the first output."""
KEEP = 5
"""Finished transitions kept in ``status.lastTransitions``."""


def measure(last_output: float, applied: float, run: RunInfo) -> tuple[float, GapPhases]:
    """The gap (seconds) from ``last_output`` to ``run``'s first output, and its phases.

    A mark the run lacks (0.0) gives its phase 0, and a mark out of order
    (clocks) is clamped, so the phases add up to the gap.

    >>> measure(10.0, 11.0, RunInfo("e", first_output=14.0))[1]
    GapPhases(stop=1.0, pods_start=0.0, imports=0.0, restore=0.0, first_epoch=3.0)
    """
    end = run.first_output
    bounds = [last_output]
    for at in (applied, run.process, run.imported, run.restored, end):
        bounds.append(min(max(at or bounds[-1], bounds[-1]), end))
    # Rounded as offsets from the start: the rounded phases still add up.
    off = [round(b - last_output, 3) for b in bounds]
    d = [round(off[i + 1] - off[i], 3) for i in range(5)]
    return off[-1], GapPhases(stop=d[0], pods_start=d[1], imports=d[2], restore=d[3], first_epoch=d[4])


def note_start(tr: TransitionStatus, store: StoreInfo | None, now: float, stopped: bool) -> None:
    """New pods are applied for ``tr``: note when, and (after a stop) the old pods'
    last output and execution, which the new pods' commits replace in the store."""
    tr.pods_started_at = iso_ms(now)
    if not stopped or store is None or not store.ok or tr.previous_execution is not None:
        return
    tr.previous_execution = store.execution_id
    tr.last_output_at = iso_ms(store.last_output_at) if store.last_output_at else None


def new_run(rec: TransitionRecord, store: StoreInfo | None) -> RunInfo | None:
    """The new execution's marks once it committed its first output (else ``None``).

    >>> rec = TransitionRecord(previous_execution="e1")
    >>> new_run(rec, StoreInfo(execution_id="e2", run=RunInfo("e2", first_output=5.0))).execution
    'e2'
    >>> new_run(rec, StoreInfo(execution_id="e1", run=RunInfo("e1", first_output=5.0))) is None
    True
    """
    if store is None or not store.ok or store.run is None:
        return None
    run = store.run
    if run.execution != store.execution_id or run.execution == rec.previous_execution:
        return None
    return run if run.first_output > 0 else None


def record(tr: TransitionStatus, took: float, now: float) -> TransitionRecord:
    """The record of ``tr``, whose pods are all Ready ``took`` seconds after it began."""
    return TransitionRecord(
        type=tr.type,
        from_replicas=tr.from_replicas,
        to_replicas=tr.to_replicas,
        started_at=tr.started_at,
        ready_seconds=round(took, 3),
        last_output_at=tr.last_output_at,
        pods_started_at=tr.pods_started_at,
        previous_execution=tr.previous_execution,
        ready_at=iso_ms(now),
    )


def settle(rec: TransitionRecord, store: StoreInfo | None, now: float) -> bool:
    """Fill in ``rec``'s gap if the new run's first output is known; say whether its
    completion event is due now (the gap is known, can't be, or `WAIT` ran out).

    >>> rec = TransitionRecord(last_output_at="1970-01-01T00:01:40.000Z",
    ...                        pods_started_at="1970-01-01T00:01:41.000Z",
    ...                        previous_execution="e1", ready_at="1970-01-01T00:01:45.000Z")
    >>> settle(rec, StoreInfo(execution_id="e2"), 110.0), settle(rec, StoreInfo(execution_id="e2"), 176.0)
    (False, True)
    >>> run = RunInfo("e2", 101.5, 102.0, 102.5, 103.25)
    >>> settle(rec, StoreInfo(execution_id="e2", run=run), 111.0), rec.gap_seconds, rec.first_output_at
    (True, 3.25, '1970-01-01T00:01:43.250Z')
    """
    last = parse_iso(rec.last_output_at)
    if last is None:
        return True  # nothing came out before (a deploy, a resume) or no store to tell
    run = new_run(rec, store)
    if run is not None:
        if run.previous_output:  # what the new run found: the old pods' last commit included
            last = run.previous_output
            rec.last_output_at = iso_ms(last)
        applied = parse_iso(rec.pods_started_at) or last
        rec.gap_seconds, rec.phases = measure(last, applied, run)
        rec.first_output_at = iso_ms(run.first_output)
        return True
    ready = parse_iso(rec.ready_at) or now
    return now - ready >= WAIT


def describe(rec: TransitionRecord) -> str:
    """The gap part of a completion event ("" when unknown).

    >>> describe(TransitionRecord(gap_seconds=3.25, phases=GapPhases(1.0, 0.5, 0.5, 0.5, 0.75)))
    '; output gap 3.2s (stop 1.0s, pods start 0.5s, imports 0.5s, restore 0.5s, first epoch 0.8s)'
    >>> describe(TransitionRecord(last_output_at="1970-01-01T00:00:00.000Z"))
    '; no output yet after the transition'
    """
    if rec.gap_seconds is None:
        return "; no output yet after the transition" if rec.last_output_at else ""
    ph = rec.phases or GapPhases()
    return (
        f"; output gap {rec.gap_seconds:.1f}s (stop {ph.stop:.1f}s, pods start {ph.pods_start:.1f}s, "
        f"imports {ph.imports:.1f}s, restore {ph.restore:.1f}s, first epoch {ph.first_epoch:.1f}s)"
    )
