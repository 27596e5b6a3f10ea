"""The snapshot writer: one thread per worker that writes large snapshots off the hot path.

Where this sits: the worker loop (`_worker`) decides at its control
barrier what belongs to an epoch (`_stateful_run.StatefulRun.snapshot_batch`
takes each changed key's state then), and hands a large epoch to this
thread, which pickles the values still unpickled, writes them to the store
(`Store.write_epoch`, one round trip for Redis) and then tells worker 0
(`WRITTEN`); the worker meanwhile runs the next epoch. Worker 0 commits an
epoch only once every worker wrote its part (see `_worker` and
docs/recovery.md), and runs its commits and compactions on its own writer
too, in order, so a compaction never overlaps a commit's checks.

Back-pressure: a worker hands over the next epoch only once the writer is
idle, so at most one epoch per worker is in flight. An error of a job (a
store error, a fenced execution) is kept and raised by the worker at its
next barrier (`raise_error`); the jobs after it are dropped.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger("headrace.worker")


class SnapshotWriter:
    """A thread running jobs in order; the worker waits for it and sees its errors.

    >>> w = SnapshotWriter("demo"); out = []
    >>> w.submit(lambda: out.append(1)); w.submit(lambda: out.append(2))
    >>> w.wait_idle(1.0), out
    (True, [1, 2])
    >>> w.submit(lambda: 1 / 0); _ = w.wait_idle(1.0); w.raise_error()
    Traceback (most recent call last):
    ...
    ZeroDivisionError: division by zero
    >>> w.close()
    """

    def __init__(self, name: str) -> None:
        self._jobs: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"headrace-snapshot-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` after the jobs before it (dropped after an error)."""
        with self._cond:
            self._jobs.append(job)
            self._cond.notify_all()

    @property
    def idle(self) -> bool:
        """No job queued or running."""
        with self._cond:
            return not self._jobs and not self._busy

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queue to empty; return whether it did."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def raise_error(self) -> None:
        """Raise the error of a failed job, if any (once)."""
        error, self.error = self.error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._closed)
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                self._busy = True
            try:
                if self.error is None:
                    job()
            except BaseException as exc:  # kept for the worker: it raises it at its next barrier
                self.error = exc
                with self._cond:
                    self._jobs.clear()
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the thread (waits up to ``timeout`` seconds)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the snapshot writer did not finish within %ss", timeout)
