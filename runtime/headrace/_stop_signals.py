"""How ``python -m headrace.run`` answers SIGTERM and SIGINT, from its first line to its last.

`headrace.run.main` calls `guard_startup` first: from then until the
dataflow runs, SIGTERM ends the process at once with status 143 (nothing is
committed yet, so there is nothing to lose). This matters in a container,
where the worker is PID 1: the kernel drops a signal that PID 1 has no
handler for, so without the guard a pod deleted while it imports the user's
module (which may take seconds) would ignore SIGTERM and run on until the
kubelet's SIGKILL at the end of the grace period.

While the dataflow runs, `install_stop_handlers` makes SIGTERM and SIGINT
ask every process of the cluster to stop at its next epoch boundary (a
second SIGINT aborts at once), and arms a watchdog: if the process is still
running `stuck_after()` seconds later (30, or ``HEADRACE_STOP_STACKS_AFTER``),
every thread's stack goes to stderr
(``faulthandler``, which works even if a thread holds the GIL), so a stop
that hangs says where. `restore` puts back what was there before; as the
program ends, `guard_exit` makes a SIGTERM during the interpreter's exit
(flushing output, joining threads) end the process at once, for the same
PID 1 reason.

>>> import signal
>>> before = signal.getsignal(signal.SIGTERM)
>>> saved = guard_startup()
>>> signal.getsignal(signal.SIGTERM) is _exit_before_start
True
>>> restore(saved)
>>> signal.getsignal(signal.SIGTERM) is before
True
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
from typing import Any

__all__ = [
    "STUCK_AFTER",
    "STUCK_AFTER_ENV",
    "guard_exit",
    "guard_startup",
    "install_stop_handlers",
    "restore",
    "stuck_after",
]

log = logging.getLogger("headrace.run")

# Seconds after a stop signal before the stacks of a process that has not
# stopped are printed (an epoch boundary is normally well under this).
STUCK_AFTER = 30.0
STUCK_AFTER_ENV = "HEADRACE_STOP_STACKS_AFTER"


def stuck_after() -> float:
    """Seconds a stop may take before the watchdog prints every thread's stack.

    >>> stuck_after()
    30.0
    """
    raw = os.environ.get(STUCK_AFTER_ENV, "")
    try:
        value = float(raw) if raw else STUCK_AFTER
    except ValueError:
        log.warning("%s=%r is not a number of seconds: using %s", STUCK_AFTER_ENV, raw, STUCK_AFTER)
        return STUCK_AFTER
    return value if value > 0 else STUCK_AFTER


_HANDLED = (signal.SIGTERM, signal.SIGINT)


def _exit_before_start(signum: int, _frame: Any) -> None:
    log.warning("received %s before the dataflow started: exiting", signal.Signals(signum).name)
    raise SystemExit(128 + signum)


def guard_startup() -> dict[int, Any]:
    """Make SIGTERM exit at once (status 143) until the dataflow runs; return what was there.

    Only a default disposition is replaced: an application that set its own
    handler keeps it.

    >>> saved = guard_startup()
    >>> sorted(signal.Signals(s).name for s in saved)
    ['SIGTERM']
    >>> restore(saved)
    """
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _exit_before_start)
    return {signal.SIGTERM: previous}


def _exit_now(signum: int, _frame: Any) -> None:
    os._exit(128 + signum)  # the interpreter is exiting: don't wait for it


def guard_exit() -> None:
    """As the program ends: SIGTERM and SIGINT end the process at once (status 128 + signum).

    >>> saved = {s: signal.getsignal(s) for s in _HANDLED}
    >>> guard_exit()
    >>> signal.getsignal(signal.SIGTERM) is _exit_now
    True
    >>> restore(saved)
    """
    faulthandler.cancel_dump_traceback_later()
    for sig in _HANDLED:
        signal.signal(sig, _exit_now)


def install_stop_handlers(received: list[int] | None = None) -> dict[int, Any]:
    """Make SIGTERM/SIGINT stop the running dataflow at its next epoch boundary; return what was there.

    Each signal handled is appended to ``received``. Before the engine has
    a cluster to stop (e.g. while it waits for its peers), a signal exits at
    once with ``128 + signum``.

    >>> saved = install_stop_handlers()
    >>> signal.getsignal(signal.SIGINT).__name__
    'on_int'
    >>> restore(saved)
    """
    from headrace._engine import request_stop

    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in _HANDLED}
    state = {"interrupts": 0}

    def on_term(signum: int, frame: Any) -> None:
        if received is not None:
            received.append(signum)
        if not request_stop():
            # Not running yet (e.g. waiting for peers): nothing to commit.
            _exit_before_start(signum, frame)
        log.warning("received %s: stopping at the next epoch boundary", signal.Signals(signum).name)
        if sys.stderr is not None and state["interrupts"] <= 1:
            try:
                faulthandler.dump_traceback_later(stuck_after(), file=sys.stderr)
            except (ValueError, OSError, AttributeError):
                pass  # stderr without a file descriptor (embedded, captured): no watchdog

    def on_int(signum: int, frame: Any) -> None:
        state["interrupts"] += 1
        if state["interrupts"] > 1:
            raise KeyboardInterrupt
        on_term(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)
    return previous


def restore(previous: dict[int, Any]) -> None:
    """Put back the handlers ``previous`` names and disarm the watchdog.

    >>> restore({})
    """
    faulthandler.cancel_dump_traceback_later()
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
