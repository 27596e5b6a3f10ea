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

On Linux, with a store another process can open (Redis, Redis Cluster:
`Store.forkable`), a large epoch is not pickled on this thread, which
shares the GIL with the worker: the worker forks at the barrier
(`ForkedJob`, as Redis's own ``BGSAVE``). The child sees the state exactly
as of the barrier (copy-on-write), takes each changed key's state, pickles
it and writes it with a store client of its own, sends back its result (or
its error) through a pipe and leaves with ``os._exit``; this thread just
waits for that (without the GIL) and then tells worker 0, as for a write of
its own. The child dies with the thread that forked it (``PR_SET_PDEATHSIG``,
SIGKILL), so a kill -9 of a worker never leaves a child writing into the
next execution. ``HEADRACE_SNAPSHOT_FORK=0`` keeps every write on this
thread (`fork_enabled`).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

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


# The environment variable that chooses how large epochs are written: "0"
# on this thread (`SnapshotWriter`), anything else (the default) by a forked
# child where the platform and the store allow it.
FORK_ENV = "HEADRACE_SNAPSHOT_FORK"

# Seconds a forked child may take to write one epoch before it is killed
# and the run stops (`ForkedJob.result`); a child that deadlocked on a lock
# another thread of the worker held at the fork would otherwise hang it.
CHILD_TIMEOUT_ENV = "HEADRACE_SNAPSHOT_CHILD_TIMEOUT"
CHILD_TIMEOUT = 300.0

_PR_SET_PDEATHSIG = 1


def child_timeout() -> float:
    """Seconds a forked child may write one epoch (``HEADRACE_SNAPSHOT_CHILD_TIMEOUT``, default 300).

    >>> child_timeout()
    300.0
    >>> import os; os.environ[CHILD_TIMEOUT_ENV] = "soon"; child_timeout()
    Traceback (most recent call last):
    ...
    ValueError: HEADRACE_SNAPSHOT_CHILD_TIMEOUT='soon': must be a number of seconds above 0
    >>> del os.environ[CHILD_TIMEOUT_ENV]
    """
    raw = os.environ.get(CHILD_TIMEOUT_ENV, "").strip()
    if not raw:
        return CHILD_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{CHILD_TIMEOUT_ENV}={raw!r}: must be a number of seconds above 0")
    return value


def _prctl() -> Any:
    """libc's ``prctl`` (Linux), or None where there is none."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def fork_enabled() -> bool:
    """Whether large epochs are written by a forked child: Linux, and not ``HEADRACE_SNAPSHOT_FORK=0``.

    >>> import os; os.environ[FORK_ENV] = "0"; fork_enabled()
    False
    >>> del os.environ[FORK_ENV]; fork_enabled() == sys.platform.startswith("linux")
    True
    """
    return _PRCTL is not None and os.environ.get(FORK_ENV, "1").strip().lower() not in ("0", "no", "false")


class ForkedJob:
    """Run ``fn`` in a forked child; `result` returns what it returned, or raises what it raised.

    The child has the parent's memory as of the fork (copy-on-write) and
    only the forking thread. It never returns into the caller: whatever
    happens it leaves with ``os._exit`` (no ``atexit``, no buffers flushed,
    no destructors: the parent's connections stay untouched). It dies with
    the thread that forked it (SIGKILL), and exits at once if that one was
    already gone. The result travels pickled; an error keeps its type,
    message and cause, and the child's traceback as a note (shown with a
    full traceback, not in a one-line summary).

    >>> job = ForkedJob(lambda: os.getpid()); pid = job.pid
    >>> job.result() == pid != os.getpid()
    True
    >>> try:
    ...     ForkedJob(lambda: 1 / 0).result()
    ... except ZeroDivisionError as exc:
    ...     print(exc, "|", exc.__notes__[0].splitlines()[0])
    division by zero | raised in the process writing the snapshot (pid ...):
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        if _PRCTL is None:
            raise OSError("forked snapshot writes need Linux (fork and prctl)")
        parent = os.getpid()
        r, w = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns about any fork of a process with threads; the
            # child here runs only code of its own and exits without cleanup.
            warnings.filterwarnings("ignore", r".*fork\(\) may lead to deadlocks", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: never returns
            try:
                os.close(r)
                _child(fn, parent, w)
            finally:
                os._exit(70)
        os.close(w)
        self.pid = pid
        self._r = r

    def result(self, timeout: float | None = None, what: str = "a snapshot") -> Any:
        """Wait for the child (without the GIL), reap it, return its result or raise its error.

        A child that has not finished after ``timeout`` seconds (a lock held
        by another thread of the parent at the fork never frees in the
        child) is killed and is a `TimeoutError` naming ``what`` it wrote.

        >>> import time
        >>> ForkedJob(lambda: time.sleep(60)).result(timeout=0.2)
        Traceback (most recent call last):
        ...
        TimeoutError: the process writing a snapshot (pid ...) did not finish within 0.2 s: killed; ...
        """
        try:
            blob = _read_all(self._r, None if timeout is None else time.monotonic() + timeout)
        except TimeoutError:
            os.kill(self.pid, signal.SIGKILL)
            raise TimeoutError(
                f"the process writing {what} (pid {self.pid}) did not finish within {timeout:g} s: "
                f"killed; if it hangs again, set {FORK_ENV}=0 to write large snapshots with a thread instead"
            ) from None
        finally:
            os.close(self._r)
            _, status = os.waitpid(self.pid, 0)
        if not blob:
            how = (
                f"killed by signal {os.WTERMSIG(status)}"
                if os.WIFSIGNALED(status)
                else f"exit status {os.waitstatus_to_exitcode(status)}"
            )
            raise RuntimeError(
                f"the process writing a snapshot (pid {self.pid}) ended without a result: {how}"
            )
        ok, value, cause, text = pickle.loads(blob)
        if ok:
            return value
        if cause is not None:
            value.__cause__ = cause
        (cause if cause is not None else value).add_note(
            f"raised in the process writing the snapshot (pid {self.pid}):\n{text.rstrip()}"
        )
        raise value


def _read_all(fd: int, deadline: float | None = None) -> bytes:
    """All of ``fd`` up to its end; `TimeoutError` if it has not ended at ``deadline`` (monotonic)."""
    chunks: list[bytes] = []
    while True:
        if deadline is not None:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _child(fn: Callable[[], Any], parent: int, w: int) -> None:
    """The forked child: run ``fn``, send ``(ok, value or error, cause, traceback)`` to ``w``, exit."""
    assert _PRCTL is not None
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the prctl: nobody waits
        os._exit(71)
    # A terminal's Ctrl-C reaches the whole process group: the parent stops at
    # an epoch boundary, and this write goes on until it is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A collection would walk (and so copy) every object of the parent's heap.
    gc.disable()
    try:
        payload = (True, fn(), None, "")
        blob = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:
        blob = _error_blob(exc)
    view = memoryview(blob)
    while view:
        view = view[os.write(w, view) :]
    os._exit(0)


def _error_blob(exc: BaseException) -> bytes:
    """``exc`` for the parent: itself if it pickles back, else a `RuntimeError` with its words."""
    text = "".join(traceback.format_exception(exc))
    cause = exc.__cause__
    for attempt in ((exc, cause), (exc, None)):
        try:
            blob = pickle.dumps((False, *attempt, text), protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(blob)
            return blob
        except Exception:
            continue
    stand_in = RuntimeError(f"{type(exc).__name__}: {exc}")
    return pickle.dumps((False, stand_in, None, text), protocol=pickle.HIGHEST_PROTOCOL)
