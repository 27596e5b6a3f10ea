"""The async I/O runtime: one `map_async` step on one worker, and the worker's event loop.

`map_async` (`headrace.operators._async`) calls an ``async def`` function
per item with up to ``concurrency`` calls in flight. Each worker owns one
`AsyncLoop`: a thread running an asyncio event loop, started at the first
call. Why a thread, not the loop driven from the worker loop: the worker
loop blocks in its inbox (``SimpleQueue.get``) and in user code (sources,
sinks, stateful logic); driving asyncio from there would stall every call
in flight whenever the worker waits or works, and turning those waits into
``run_until_complete`` slices would put asyncio on the hot path of flows
without async steps. On its own thread, the calls progress while the
worker polls, exchanges and snapshots; only the hand-over costs: one
``call_soon_threadsafe`` per batch submitted and one queue put per result.

`AsyncRun` is the step on one worker:

- ``on_batch`` submits the batch's items; at ``concurrency`` calls in flight
  (ordered: submitted and not yet emitted) it blocks until some finish,
  emitting them, so the step stops pulling (backpressure).
- Finished calls go to a queue; the first one since the worker last looked
  puts a ``WAKE`` message in the worker's inbox, so an idle worker wakes;
  ``collect`` (called by the worker loop on ``WAKE``) emits what finished:
  in input order (``ordered``) or as completed.
- ``finish`` waits for every call in flight and emits the results. The
  worker loop calls it before it sends any barrier of the epoch
  (`_worker.Worker._send_barriers`), so a snapshot never holds half-done
  work: every item of an epoch is emitted in that epoch (exactly-once).

A call that raises or times out fails the run with Bytewax's words
naming the step and the item (``error calling `mapper` in step ...``).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from headrace._engine._basics import Abort, Push, drop, not_keyed
from headrace._engine._plan import CoreStep
from headrace._metrics import WorkerMetrics
from headrace.errors import BytewaxRuntimeError

# The inbox message a worker's event loop sends when calls finished (the
# worker's other message kinds are in `_basics`).
WAKE = 4

# A failed call's place in the output when its item is skipped.
_SKIP = object()

# How long a blocked wait sleeps before checking whether the run aborted.
_WAIT_SLICE = 0.05


class AsyncLoop:
    """One worker's asyncio event loop on a daemon thread, started at first use.

    >>> import asyncio
    >>> loop = AsyncLoop("doc")
    >>> async def double(x):
    ...     await asyncio.sleep(0)
    ...     return 2 * x
    >>> asyncio.run_coroutine_threadsafe(double(21), loop.get()).result()
    42
    >>> loop.close()
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        """The running loop (started now if it is not yet)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
            self._thread.start()
        return loop

    def close(self) -> None:
        """Cancel what still runs (a failed or stopped run) and stop the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None

        def stop() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.call_soon(loop.stop)

        loop.call_soon_threadsafe(stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()


class AsyncRun:
    """A `map_async` step on one worker (see the module docstring)."""

    def __init__(
        self,
        step: CoreStep,
        loop: AsyncLoop,
        wake: Callable[[], None],
        abort: threading.Event,
        metrics: WorkerMetrics | None,
    ) -> None:
        conf = step.conf
        self.step = step
        self.shown = step.shown
        self.fn: Callable[[Any], Any] = conf["fn"]
        self.concurrency: int = conf["concurrency"]
        timeout = conf["timeout"]
        self.timeout: float | None = None if timeout is None else timeout.total_seconds()
        self.ordered: bool = conf["ordered"]
        self.by_value: bool = conf["by_value"]
        self.reporter: Any = conf["reporter"]  # `_dead_letters.Reporter`, or None: fail
        self.loop = loop
        self.wake = wake
        self.abort = abort
        self.push: Push = drop
        self._seq = 0  # sequence number of the next item submitted
        self._head = 0  # ordered: the next sequence number to emit
        self._items: dict[int, Any] = {}  # submitted, not yet completed (or, ordered, not yet emitted)
        self._results: dict[int, Any] = {}  # ordered: completed, waiting for the head
        self._running = 0  # calls submitted and not yet completed
        self._done: queue.SimpleQueue[tuple[int, bool, Any, float]] = queue.SimpleQueue()
        self._notified = False
        self._tasks: set[asyncio.Task[None]] = set()  # the calls running (the loop's thread only)
        wm = metrics
        if wm is None:
            self.m_in = self.m_out = self.m_lat = self.m_timeouts = self.m_inflight = None
        else:
            sid, wi = step.step_id, wm.wi
            self.m_in = wm.bind("item_inp_count", sid, wi)
            self.m_out = wm.bind("item_out_count", sid, wi)
            self.m_lat = wm.bind("headrace_async_call_duration_seconds", sid, wi)
            self.m_timeouts = wm.bind("headrace_async_timeouts_total", sid, wi)
            self.m_inflight = wm.bind("headrace_async_inflight_calls", sid, wi)

    @property
    def in_flight(self) -> int:
        """Calls counted against ``concurrency``: submitted and not yet emitted."""
        return len(self._items)

    # -- the worker's side

    def on_batch(self, batch: list[Any]) -> None:
        """Submit the items, waiting for room whenever ``concurrency`` calls are in flight."""
        if self.m_in is not None:
            self.m_in.inc(len(batch))
        if self.by_value:
            for x in batch:
                if x.__class__ is not tuple or len(x) != 2 or not isinstance(x[0], str):
                    raise not_keyed(self.step, x)
        i, n = 0, len(batch)
        while i < n:
            room = self.concurrency - len(self._items)
            if room <= 0:
                self._wait()
                continue
            chunk = batch[i : i + room]
            i += len(chunk)
            self._submit(chunk)
        self._set_gauge()

    def collect(self) -> None:
        """Emit the calls that finished since the last look (the worker got a ``WAKE``)."""
        self._notified = False
        self._take(block=False)

    def finish(self) -> None:
        """Wait for every call in flight and emit the results (before the epoch's barriers)."""
        while self._items:
            self._wait()
        self._set_gauge()

    # -- internals

    def _submit(self, chunk: list[Any]) -> None:
        first = self._seq
        self._seq += len(chunk)
        items = self._items
        for j, x in enumerate(chunk):
            items[first + j] = x
        self._running += len(chunk)
        self.loop.get().call_soon_threadsafe(self._start, first, chunk)

    def _wait(self) -> None:
        """Block until at least one call finished, and emit what can be emitted."""
        self._notified = False
        self._take(block=True)

    def _take(self, block: bool) -> None:
        done = self._done
        got: list[tuple[int, bool, Any, float]] = []
        if block:
            while True:
                if self.abort.is_set():
                    raise Abort()
                try:
                    got.append(done.get(timeout=_WAIT_SLICE))
                    break
                except queue.Empty:
                    continue
        while True:
            try:
                got.append(done.get_nowait())
            except queue.Empty:
                break
        if not got:
            return
        self._running -= len(got)
        out: list[Any] = []
        items = self._items
        m_lat = self.m_lat
        for seq, ok, value, took in got:
            if m_lat is not None:
                m_lat.observe(took)
            if not ok:
                value = self._failed(items[seq], value)
            if self.ordered:
                self._results[seq] = value
            else:
                x = items.pop(seq)
                if value is not _SKIP:
                    out.append((x[0], value) if self.by_value else value)
        if self.ordered:
            results = self._results
            head = self._head
            while head in results:
                value = results.pop(head)
                x = items.pop(head)
                if value is not _SKIP:
                    out.append((x[0], value) if self.by_value else value)
                head += 1
            self._head = head
        if out:
            if self.m_out is not None:
                self.m_out.inc(len(out))
            self.push(out)

    def _failed(self, item: Any, exc: BaseException) -> Any:
        """What a failed call emits under the step's policy (`_SKIP`: nothing); or fail the run."""
        if isinstance(exc, TimeoutError):
            if self.m_timeouts is not None:
                self.m_timeouts.inc()
            why = TimeoutError(f"the call did not finish within {self.timeout}s (the step's `timeout`)")
            why.__cause__ = exc
            exc = why
        if self.reporter is not None and isinstance(exc, Exception):
            marks = self.reporter.failed(item[1] if self.by_value else item, exc)
            return marks[0] if marks else _SKIP
        msg = f"error calling `mapper` in step {self.shown} on item {item!r}: {type(exc).__name__}: {exc}"
        raise BytewaxRuntimeError(msg) from exc

    def _set_gauge(self) -> None:
        if self.m_inflight is not None:
            self.m_inflight.set(len(self._items))

    # -- the event loop's side

    def _start(self, first: int, chunk: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        tasks = self._tasks  # a reference per task, so none is garbage-collected mid-call
        for j, x in enumerate(chunk):
            task = loop.create_task(self._call(first + j, x))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _call(self, seq: int, item: Any) -> None:
        t0 = time.perf_counter()
        try:
            aw = self.fn(item[1] if self.by_value else item)
            if not hasattr(aw, "__await__"):
                why = (
                    f"`mapper` must be an `async def` function (return an awaitable); got {type(aw).__name__}"
                )
                raise TypeError(why)
            if self.timeout is None:
                value = await aw
            else:
                value = await asyncio.wait_for(aw, self.timeout)
            ok = True
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the worker, which fails the run
            value, ok = exc, False
        self._done.put((seq, ok, value, time.perf_counter() - t0))
        if not self._notified:
            self._notified = True
            self.wake()
