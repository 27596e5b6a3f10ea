"""The worker loop: one worker's epochs, from polling its sources to committing a snapshot.

`Worker.run` repeats epochs until the end of input (see docs/architecture.md):

- Poll: each awake source partition is asked for a batch, which runs
  through the push graph at once (`_wiring`); items for other workers
  are buffered by the exchange (`_exchange`). Past ``inflight_limit``
  unacknowledged items to a peer, the worker stops polling and only drains
  its inbox (backpressure).
- Drain: messages from other workers (`DATA`, `BARRIER`, `ACK`, `STOP`)
  are handled between polls, and while idle until the next thing is due
  (a source's ``next_awake``, a timer). Messages tagged with a later
  epoch are held until then.
- Barriers: at the epoch's end the worker sends a barrier on every exchange
  edge once that edge's upstream is done; the epoch completes when every
  edge has barriers from every worker (aligned barriers), so the state
  at the barrier is consistent. EOF and a stop request travel as flags on
  barriers: a stateful step runs ``on_eof`` once every upstream worker
  flagged its input as finished.
- Snapshot and commit: before its last barrier of the epoch (on the
  control edge) a worker takes the state changed in the epoch and writes
  it to the store; once that edge aligns, every worker has written, and
  worker 0 commits the epoch. A large epoch (`ASYNC_MIN_ENTRIES` changed
  keys or more) is written off the hot path instead, by the worker's
  snapshot writer (`_writer`), while the worker runs the next epoch: its
  control barrier says so (`F_ASYNC`), the writer tells worker 0 when it is
  in the store (`WRITTEN`), and worker 0 commits the epoch once every
  worker's part is (its commits and compactions then run on its own
  writer, in epoch order). The next control barrier waits for the writer:
  at most one epoch per worker in flight. Flows whose sinks commit with the
  epochs always write inline.
- After the commit: sink partitions that commit their output with the
  epochs (`_wiring.EpochSink`, e.g. exactly-once Kafka) hear of it on
  every worker: worker 0 calls them and sends `COMMITTED` to the others.
  A worker holds its control barrier of epoch e+1 until it heard that e
  committed, and waits for the last epoch's commit before closing them.

It runs past 800 lines because the barrier, the three ways an epoch is
written (inline, writer thread, forked child) and worker 0's commit share
the epoch's bookkeeping (votes, in-flight epoch, marks); the forked and
threaded writes' bodies (`_child_write`, `_write_async`, `_wait_forked`)
are the part to move next to `_writer` when it next grows.
"""

from __future__ import annotations

import functools
import logging
import pickle
import queue
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from headrace._engine._async_run import WAKE
from headrace._engine._basics import (
    ACK,
    BARRIER,
    COMMITTED,
    DATA,
    F_ASYNC,
    F_EOF,
    F_STOP,
    STOP,
    WRITTEN,
    Abort,
    Cluster,
    Push,
    RunConfig,
    batch_len,
    drop,
    user_error,
    utcnow,
)
from headrace._engine._exchange import Edge, Exchange
from headrace._engine._fuse import EpochRef
from headrace._engine._marks import START, commit_fields
from headrace._engine._plan import Plan, quoted
from headrace._engine._sched import Ready
from headrace._engine._store_base import PARTS, Entry, Store, _count_store_error
from headrace._engine._wiring import SourceRun, Wiring, engine_tracer
from headrace._engine._writer import ForkedJob, SnapshotWriter, child_timeout, fork_enabled
from headrace._metrics import M, WorkerMetrics
from headrace.errors import BytewaxRuntimeError
from headrace.inputs import AbortExecution

log = logging.getLogger("headrace.worker")

# Busy time (wall time minus idle and backpressure waits) is added to its
# counter at most this often (seconds), to keep the bookkeeping off the hot loop.
_BUSY_FLUSH = 0.05

_EMPTY_COOLDOWN = timedelta(milliseconds=1)

# An epoch with at least this many changed keys on a worker is written by its
# snapshot writer, off the hot path; a smaller one inline (a few ms), which
# keeps its commit as prompt as before.
ASYNC_MIN_ENTRIES = 10_000
_MAX_SLEEP = 0.05


class Worker:
    """Runs the plan for one worker index; `run()` returns at the end of input."""

    def __init__(
        self,
        plan: Plan,
        worker_index: int,
        cluster: Cluster,
        config: RunConfig,
    ) -> None:
        self.plan = plan
        self.index = worker_index
        self.count = cluster.worker_count
        self.cluster = cluster
        self.config = config
        self.inbox = cluster.inboxes[worker_index]
        self.metrics: WorkerMetrics | None = WorkerMetrics(worker_index) if config.metrics else None
        self.tracer = engine_tracer()
        self.epoch_ref = EpochRef()
        self.epoch_ref.epoch = config.resume_epoch + 1
        self._held: list[tuple[Any, ...]] = []
        self.finished = False
        self.stopped = False
        self._busy_mark = time.perf_counter()
        self._not_busy = 0.0
        self._waiting_since: float | None = None
        self.snapshot_bytes = 0
        self.ready = Ready()
        self.exchange = exchange = Exchange(cluster, worker_index, config, self.metrics, self.epoch_ref)
        # The exchange's credit lists (the same lists), read per message.
        self.inflight = exchange.inflight
        self._acks = exchange.acks
        wiring = Wiring(
            plan, worker_index, config, self.metrics, self.tracer, self.epoch_ref, self.ready, exchange
        )
        self.sources: list[SourceRun] = wiring.sources
        self.stateful = wiring.stateful
        self.async_runs = wiring.async_runs
        self._async_loop = wiring.async_loop
        self.edges: list[Edge] = wiring.edges
        self.control: Edge = wiring.control
        self._edge_of_step = wiring.edge_of_step
        self._closers = wiring.closers
        self._sink_parts = wiring.sink_parts
        self._unbuilt_sink_parts = wiring.unbuilt_sink_parts
        self._commit_hooks = wiring.commit_hooks
        # The last epoch the commit hooks were called for.
        self._committed = config.resume_epoch
        self._output = wiring.output
        # Worker 0: whether this run committed yet, and its first output (`_marks`).
        self._first_commit = True
        self._first_output = 0.0
        # Snapshots written off the hot path (see the module docstring).
        self._writer: SnapshotWriter | None = None
        self._async_ok = config.store is not None and not self._commit_hooks
        # Large epochs written by a forked child, not the writer thread (`_writer`).
        self._fork = self._async_ok and config.store is not None and config.store.forkable and fork_enabled()
        # A mistyped limit stops the run here, not at its first large epoch.
        self._child_timeout = child_timeout() if self._fork else 0.0
        self._async_votes = 0  # F_ASYNC control barriers of this epoch
        self._async_epoch = 0  # the last epoch this worker handed to its writer
        # Worker 0: the next epoch to commit; aligned epochs waiting for their
        # writes, with their F_ASYNC votes and worker 0's bytes (None: in WRITTEN);
        # WRITTEN reports per epoch; worker 0's own bytes from them.
        self._next_commit = config.resume_epoch + 1
        self._aligned: dict[int, tuple[int, int | None, Mapping[str, str]]] = {}
        self._written: dict[int, int] = {}
        self._own_bytes: dict[int, int] = {}

    @property
    def epoch(self) -> int:
        return self.epoch_ref.epoch

    def _sources_done(self, steps: set[str] | None = None) -> bool:
        return all(s.done for s in self.sources if steps is None or s.step_id in steps)

    def _poll_sources(self, now: datetime) -> bool:
        """Poll awake partitions once; return whether any produced items.

        As in Bytewax, an input step emits what all its partitions gave in
        one poll as one batch; the flow then runs on it (`Ready.run`).
        """
        produced = False
        held: list[Any] = []  # the batch of the input step being polled
        held_push: Push = drop
        for src in self.sources:
            if src.push is not held_push:
                if held:
                    held_push(held[0] if len(held) == 1 else [x for b in held for x in b])
                    held = []
                held_push = src.push
            if src.done or (src.awake is not None and src.awake > now):
                continue
            t0 = time.perf_counter()
            try:
                batch = src.part.next_batch()
            except StopIteration:
                self._close_source(src)
                continue
            except AbortExecution:
                self.cluster.aborted_by_source = True
                raise Abort() from None
            except Exception as exc:
                kind = "Stateful" if src.stateful else "Stateless"
                raise user_error(
                    f"error calling `{kind}SourcePartition.next_batch` in step "
                    f"{quoted(src.step_id)} for partition {quoted(src.part_name)}",
                    exc,
                ) from exc
            if batch.__class__ is not list:
                if not hasattr(batch, "__iter__"):
                    msg = (
                        f"`next_batch` in step {src.step_id!r} must return a list (or "
                        f"iterable) of items; got {type(batch).__name__}"
                    )
                    raise BytewaxRuntimeError(msg) from TypeError(msg)
                try:
                    batch = list(batch)
                except Exception as exc:
                    raise user_error(
                        f"error iterating the batch from `next_batch` in step {src.step_id!r} "
                        f"for partition {src.part_name!r}",
                        exc,
                    ) from exc
            m = src.m
            if m is not None:
                dt = time.perf_counter() - t0
                m.out.inc(len(batch))
                m.dur.observe(dt)
                m.busy.inc(dt)
            if batch:
                produced = True
                held.append(batch)
            try:
                awake = src.part.next_awake()
            except Exception as exc:
                raise BytewaxRuntimeError(f"error calling `next_awake` in step {src.step_id!r}") from exc
            if awake is not None and (not isinstance(awake, datetime) or awake.tzinfo is None):
                msg = (
                    f"`next_awake` in step {src.step_id!r} must return a timezone-aware "
                    f"datetime or None; got {awake!r}"
                )
                raise BytewaxRuntimeError(msg) from TypeError(msg)
            if awake is None and not batch:
                awake = now + _EMPTY_COOLDOWN
            src.awake = awake
        if held:
            held_push(held[0] if len(held) == 1 else [x for b in held for x in b])
        self.ready.run()
        return produced

    def _close_source(self, src: SourceRun) -> None:
        src.done = True
        if src.stateful and self.config.store is not None:
            src.final_state = self._part_snapshot(src)
        try:
            src.part.close()
        except Exception as exc:
            raise BytewaxRuntimeError(f"error calling `close` in step {src.step_id!r}") from exc

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == ACK:
            self.inflight[msg[1]] -= msg[2]
            return
        if kind == STOP:
            raise Abort()
        if kind == WAKE:  # `map_async` calls finished: emit their results
            for run in self.async_runs:
                run.collect()
            return
        if kind == COMMITTED:
            self._epoch_committed(msg[1])
            return
        if kind == WRITTEN:
            self._on_written(msg[1], msg[2], msg[3])
            return
        _, eid, sender, epoch, payload = msg
        if epoch > self.epoch:
            self._held.append(msg)
            return
        edge = self.edges[eid]
        if kind == DATA:
            n = batch_len(payload)
            self._acks[sender] += n
            if self.metrics is not None:
                self.metrics.x_in.inc(n)
            edge.deliver(payload)
        else:
            self._barrier(edge, payload)

    def _barrier(self, edge: Edge, flags: Any) -> None:
        self.ready.run()  # data before the barrier is handled first
        if flags.__class__ is tuple:  # the control edge's, with when the sender's sinks wrote
            flags, first, last = flags
            edge.out_first = min(edge.out_first or first, first)
            edge.out_last = max(edge.out_last, last)
        edge.barriers += 1
        if flags & F_EOF:
            edge.eof_votes += 1
        if flags & F_STOP:
            edge.stop_votes += 1
        if flags & F_ASYNC and edge is self.control:
            self._async_votes += 1
        if edge.barriers == self.count:
            # As in Bytewax, the end of an epoch activates the step: timers
            # due by now fire (with `epoch_interval=0`, before the next item).
            edge.on_align()
            edge.aligned = True
            if edge.eof_votes == self.count and not edge.eof:
                edge.eof = True
                edge.on_eof()
            self.ready.run()

    def _drain(self, block: float) -> None:
        """Handle queued messages; wait up to ``block`` seconds for the first.

        Before waiting, everything buffered for other workers goes out and
        every ACK owed is sent, so no peer waits on this one while it sleeps.
        """
        inbox = self.inbox
        if block > 0:
            self.exchange.flush()
            self.exchange.send_acks(True)
        try:
            msg = inbox.get(timeout=block) if block > 0 else inbox.get_nowait()
        except queue.Empty:
            return
        self._handle(msg)
        for _ in range(10_000):
            try:
                msg = inbox.get_nowait()
            except queue.Empty:
                break
            self._handle(msg)
        self.ready.run()
        self.exchange.send_acks(False)

    def _start_epoch_span(self) -> Any:
        if self.tracer is None:
            return None
        from opentelemetry import context, trace

        span = self.tracer.start_span(
            "epoch",
            attributes={
                "headrace.epoch": self.epoch,
                "headrace.worker_index": self.index,
                "headrace.flow_id": self.plan.flow_id,
            },
        )
        token = context.attach(trace.set_span_in_context(span))
        return (span, token)

    def _end_epoch_span(self, handle: Any) -> None:
        from opentelemetry import context

        span, token = handle
        context.detach(token)
        span.end()

    def _idle_drain(self, block: float) -> None:
        if self.metrics is None or block <= 0:
            self._drain(block)
            return
        t0 = self._waiting_since = time.perf_counter()
        self._drain(block)
        waited = time.perf_counter() - t0
        self._not_busy += waited
        self._waiting_since = None
        self.metrics.idle.inc(waited)

    def _account_busy(self, final: bool = False) -> None:
        """Add the time since the last call, minus idle and blocked time, to the busy counter."""
        t = time.perf_counter()
        span = t - self._busy_mark
        if span < _BUSY_FLUSH and not final:
            return
        assert self.metrics is not None
        busy = self.metrics.busy
        with busy.lock:
            busy.value += max(0.0, span - self._not_busy)
            self._busy_mark = t
            self._not_busy = 0.0

    def _busy_pending(self) -> float:
        """Busy time not flushed yet (read by a scrape, under the series' lock)."""
        end = self._waiting_since
        if end is None:
            end = time.perf_counter()
        return end - self._busy_mark - self._not_busy

    def _send_barriers(self) -> None:
        """Send this epoch's barrier on every edge whose upstream is complete."""
        if self.async_runs:
            # Every `map_async` call of the epoch finishes first: its result
            # goes out before the barrier (a snapshot holds no half-done work).
            for run in self.async_runs:
                run.finish()
            self.ready.run()
        # Buffered items go first: a barrier must follow its edge's data.
        self.exchange.flush()
        for edge in self.edges:
            if edge.barrier_sent or edge.eof:
                continue
            if not all(self.edges[u].aligned or self.edges[u].eof for u in edge.upstream_edges):
                continue
            eof = self._sources_done(edge.upstream_sources) and all(
                self.edges[u].eof for u in edge.upstream_edges
            )
            flags = F_EOF if eof else 0
            payload: Any = None
            if edge is self.control:
                if self._commit_hooks and self._committed < self.epoch - 1:
                    continue  # until the previous epoch's commit is heard of
                flags |= self.before_commit_barrier()
                if self.cluster.stop_requested.is_set():
                    flags |= F_STOP
                first, last = self._output.take()
                if last:
                    payload = (flags, first, last)
            edge.barrier_sent = True
            if payload is None:
                payload = flags
            for dst in range(self.count):
                if dst == self.index:
                    self._barrier(edge, payload)
                else:
                    self.cluster.send(dst, (BARRIER, edge.eid, self.index, self.epoch, payload))

    def _part_snapshot(self, src: SourceRun) -> bytes:
        try:
            state = src.part.snapshot()  # type: ignore[union-attr]
        except Exception as exc:
            raise user_error(
                f"error calling `StatefulSourcePartition.snapshot` in step {quoted(src.step_id)} "
                f"for partition {quoted(src.part_name)}",
                exc,
            ) from exc
        return pickle_part(src.step_id, src.part_name, state)

    def before_commit_barrier(self) -> int:
        """This worker finished the epoch: write its snapshot before telling the others.

        Returns the barrier flag `F_ASYNC` when a large snapshot is handed
        to the writer instead of written here, else 0.
        """
        self._update_lag()
        store = self.config.store
        if store is None:
            return 0
        if self._writer is not None:
            self._wait_writer()  # at most one epoch in flight; its error surfaces here
        t_snap = time.perf_counter()
        changed = sum(node.changed() for node in self.stateful)
        large = self._async_ok and changed >= ASYNC_MIN_ENTRIES
        fork = large and self._fork
        batches = [] if fork else [node.snapshot_batch() for node in self.stateful]
        parts: list[Entry] = []
        for src in self.sources:
            if not src.stateful:
                continue
            blob = src.final_state if src.done else self._part_snapshot(src)
            if blob is not None:
                parts.append((src.step_id, PARTS, src.part_name, blob))
        for step_id, name, part in self._sink_parts:
            try:
                state = part.snapshot()
            except Exception as exc:
                raise user_error(
                    f"error calling `snapshot` in step {step_id!r} for partition {name!r}", exc
                ) from exc
            parts.append((step_id, PARTS, name, pickle_part(step_id, name, state)))
        # A partition not built yet (nothing written to it since the resume)
        # keeps the state it resumed from.
        for step_id, unbuilt in self._unbuilt_sink_parts.items():
            for name, state in unbuilt.items():
                parts.append((step_id, PARTS, name, pickle_part(step_id, name, state)))
        groups = self.config.key_groups
        if large:
            writer = self._writer
            if writer is None:
                writer = self._writer = SnapshotWriter(str(self.index))
            self._async_epoch = self.epoch
            if fork:
                # The child takes the changed keys' state as of now (copy-on-write).
                job = ForkedJob(functools.partial(self._child_write, self.epoch, parts))
                for node in self.stateful:
                    node.forget_changed()
                taken = time.perf_counter() - t_snap
                log.debug(
                    "epoch %d: %d changed keys, forked pid %d (%.1f ms)",
                    self.epoch,
                    changed,
                    job.pid,
                    taken * 1e3,
                )
                writer.submit(functools.partial(self._wait_forked, self.epoch, job, t_snap))
                return F_ASYNC
            taken = time.perf_counter() - t_snap
            writer.submit(functools.partial(self._write_async, self.epoch, batches, parts, taken))
            return F_ASYNC
        entries: list[Entry] = []
        for batch in batches:
            entries.extend(batch.entries(groups))
        entries.extend(parts)
        t0 = time.perf_counter()
        self.snapshot_bytes = store.write_epoch(self.epoch, entries)
        self._snapshot_metrics(t0, t_snap)
        return 0

    def _snapshot_metrics(self, t_write: float, t_snap: float, busy: float = 0.0) -> None:
        m = self.metrics
        if m is not None:
            t = time.perf_counter()
            m.store_latency.observe(t - t_write)
            m.snap_bytes.set(self.snapshot_bytes)
            m.snap_bytes_total.inc(self.snapshot_bytes)
            m.snap_dur.observe(busy + t - t_snap)

    def _write_async(self, epoch: int, batches: list[Any], parts: list[Entry], taken: float) -> None:
        """The writer's job: pickle, write, tell worker 0 (on the writer thread)."""
        store = self.config.store
        assert store is not None
        t_snap = time.perf_counter()
        groups = self.config.key_groups
        entries: list[Entry] = []
        for batch in batches:
            entries.extend(batch.entries(groups))
        entries.extend(parts)
        t0 = time.perf_counter()
        self.snapshot_bytes = store.write_epoch(epoch, entries)
        # The snapshot's time: taking it at the barrier, then its work here.
        self._snapshot_metrics(t0, t_snap, taken)
        self.cluster.send(0, (WRITTEN, epoch, self.index, self.snapshot_bytes))

    def _child_write(self, epoch: int, parts: list[Entry]) -> tuple[int, float, int]:
        """In the forked child: take, pickle and write this worker's part of ``epoch``.

        Returns the bytes written, the seconds the write took and the store
        errors met (retried) on the way.
        """
        store = self.config.store
        assert store is not None
        store = store.for_child()
        groups = self.config.key_groups
        entries: list[Entry] = []
        try:
            for node in self.stateful:
                entries.extend(node.snapshot_batch(expire=False).entries(groups))
            entries.extend(parts)
            t0 = time.perf_counter()
            nbytes = store.write_epoch(epoch, entries)
        except BaseException as exc:
            exc.store_errors = store.errors  # type: ignore[attr-defined]
            raise
        return nbytes, time.perf_counter() - t0, store.errors

    def _wait_forked(self, epoch: int, job: ForkedJob, t_snap: float) -> None:
        """The writer's job for a forked write: wait for the child, then tell worker 0."""
        store = self.config.store
        assert store is not None
        try:
            self.snapshot_bytes, write_s, errors = job.result(
                self._child_timeout, f"the snapshot of epoch {epoch}"
            )
        except BaseException as exc:
            self._count_child_errors(store, getattr(exc, "store_errors", 0))
            raise
        self._count_child_errors(store, errors)
        m = self.metrics
        if m is not None:
            m.store_latency.observe(write_s)
            m.snap_bytes.set(self.snapshot_bytes)
            m.snap_bytes_total.inc(self.snapshot_bytes)
            # The snapshot's time: the fork at the barrier, then the child's work.
            m.snap_dur.observe(time.perf_counter() - t_snap)
        self.cluster.send(0, (WRITTEN, epoch, self.index, self.snapshot_bytes))

    @staticmethod
    def _count_child_errors(store: Store, errors: int) -> None:
        """The store errors a forked child met (and retried) count as this process's."""
        if errors:
            store.errors += errors
            store.last_error_at = time.monotonic()
            for _ in range(errors):
                _count_store_error()

    def _wait_writer(self) -> None:
        """Wait until the writer is idle, handling messages meanwhile; raise its error."""
        writer = self._writer
        assert writer is not None
        if not writer.idle:
            t0 = time.perf_counter()
            self.exchange.flush()
            self.exchange.send_acks(True)
            while not writer.wait_idle(0.002):
                if self.cluster.abort.is_set():
                    raise Abort()
                self._drain(0)
            if self.metrics is not None:
                waited = time.perf_counter() - t0
                self._not_busy += waited
                self.metrics.backpressure.inc(waited)
        writer.raise_error()

    def _update_lag(self) -> None:
        for src in self.sources:
            if src.lag is None or src.done:
                continue
            try:
                lag = src.lag()
            except Exception:
                log.debug("lag() failed in step %r", src.step_id, exc_info=True)
                continue
            if lag is not None and src.lag_gauge is not None:
                src.lag_gauge.set(lag)

    def after_epoch(self) -> None:
        """Every worker finished the epoch: worker 0 commits it once every part is written."""
        store = self.config.store
        if store is None or self.index != 0:
            return
        votes = self._async_votes
        if votes and self._writer is None:
            self._writer = SnapshotWriter(str(self.index))  # worker 0's commits go there from now on
        # Worker 0's own bytes: known now unless its part is still being written.
        own = None if self._async_epoch == self.epoch else self.snapshot_bytes
        # What the commit records of the output (`_marks`), as of this alignment.
        control = self.control
        marks = commit_fields(
            store.execution_id,
            START,
            self._first_commit,
            control.out_first,
            control.out_last,
            self._first_output,
        )
        self._first_commit = False
        if control.out_last and not self._first_output:
            self._first_output = control.out_first
        self._aligned[self.epoch] = (votes, own, marks)
        self._try_commit()

    def _on_written(self, epoch: int, worker: int, nbytes: int) -> None:
        """Worker 0: ``worker``'s part of ``epoch`` is in the store."""
        self._written[epoch] = self._written.get(epoch, 0) + 1
        if worker == 0:
            self._own_bytes[epoch] = nbytes
        self._try_commit()

    def _try_commit(self) -> None:
        """Worker 0: commit, in order, every aligned epoch whose parts are all written."""
        while True:
            epoch = self._next_commit
            got = self._aligned.get(epoch)
            if got is None or self._written.get(epoch, 0) < got[0]:
                return
            del self._aligned[epoch]
            self._written.pop(epoch, None)
            nbytes = got[1] if got[1] is not None else self._own_bytes.pop(epoch, 0)
            self._next_commit = epoch + 1
            if self._writer is None:
                self._commit(epoch, nbytes, got[2])
            else:
                self._writer.submit(functools.partial(self._commit, epoch, nbytes, got[2]))

    def _commit(self, epoch: int, nbytes: int, marks: Mapping[str, str]) -> None:
        """Worker 0 commits ``epoch`` (on its thread, or its writer's), then compacts when due."""
        store = self.config.store
        assert store is not None
        store.commit(epoch, nbytes, marks)
        if self.metrics is not None:
            M["headrace_epoch_committed"].set(epoch)
        if self._commit_hooks:
            for dst in range(1, self.count):
                self.cluster.send(dst, (COMMITTED, epoch))
            self._epoch_committed(epoch)
        every = self.config.compact_every
        if every and epoch % every == 0:
            store.compact(epoch - self.config.keep_epochs)

    def _finish_snapshots(self) -> None:
        """After the last epoch: every part written, and (worker 0) every epoch committed."""
        while True:
            writer = self._writer
            pending = self.index == 0 and bool(self._aligned)
            if writer is not None:
                if not writer.idle:
                    self._wait_writer()
                    continue
                writer.raise_error()
            if not pending:
                return
            if self.cluster.abort.is_set():
                raise Abort()
            self._drain(_MAX_SLEEP)

    def _epoch_committed(self, epoch: int) -> None:
        """The store committed ``epoch``: tell the sink partitions that wait for it."""
        self._committed = epoch
        for step_id, hook in self._commit_hooks:
            try:
                hook(epoch)
            except Exception as exc:
                raise user_error(
                    f"error committing the output of epoch {epoch} in step {step_id!r}", exc
                ) from exc

    def _await_last_commit(self) -> None:
        """After the last epoch: wait until worker 0 says it committed."""
        while self._committed < self.epoch:
            if self.cluster.abort.is_set():
                raise Abort()
            self._drain(_MAX_SLEEP)

    def _epoch_complete(self) -> bool:
        return self.control.aligned

    def _advance_epoch(self) -> None:
        for edge in self.edges:
            edge.barrier_sent = False
            edge.barriers = 0
            edge.eof_votes = 0
            edge.stop_votes = 0
            edge.out_first = edge.out_last = 0.0
            edge.aligned = edge.eof
        self.epoch_ref.epoch += 1
        self._async_votes = 0
        held, self._held = self._held, []
        for msg in held:
            self._handle(msg)
        self.ready.run()

    def _fire_timers(self, now: datetime) -> None:
        """Activations without items: steps that handled items since the last call
        fired their due timers then, as Bytewax does."""
        for node in self.stateful:
            if node.activated:
                node.activated = False
                continue
            edge = self._edge_of_step[node.step_id]
            if not edge.aligned and not edge.eof:
                node.fire_timers(now)
        self.ready.run()

    def _next_wake(self, closing: bool, deadline: float) -> float:
        """Seconds to sleep until something is due (capped)."""
        now_dt = utcnow()
        wake = _MAX_SLEEP
        if not closing:
            wake = min(wake, max(0.0, deadline - time.monotonic()))
            for src in self.sources:
                if not src.done:
                    if src.awake is None:
                        return 0.0
                    wake = min(wake, (src.awake - now_dt).total_seconds())
        for node in self.stateful:
            at = node.next_timer()
            if at is not None:
                wake = min(wake, (at - now_dt).total_seconds())
        return max(0.0, wake)

    def run(self) -> None:
        """Run epochs until every input and exchange edge reached EOF."""
        interval = self.config.epoch_interval.total_seconds()
        flush_after = self.config.exchange_flush_seconds
        cluster = self.cluster
        exchange = self.exchange
        self._busy_mark = time.perf_counter()
        self._not_busy = 0.0
        if self.metrics is not None:
            self.metrics.busy.pending = self._busy_pending
        try:
            while not self.finished:
                epoch_span = self._start_epoch_span()
                epoch_t0 = time.perf_counter()
                if self.metrics is not None:
                    self.metrics.epoch.set(self.epoch)
                deadline = time.monotonic() + interval
                closing = False
                while True:
                    if cluster.abort.is_set():
                        raise Abort()
                    if exchange.items and time.monotonic() - exchange.since >= flush_after:
                        exchange.flush()
                    if self.metrics is not None:
                        self._account_busy()
                    now = utcnow()
                    produced = False
                    if not closing:
                        if max(self.inflight) <= self.config.inflight_limit:
                            produced = self._poll_sources(now)
                        else:
                            t0 = self._waiting_since = time.perf_counter()
                            self._drain(_MAX_SLEEP)
                            waited = time.perf_counter() - t0
                            if self.metrics is not None:
                                self._not_busy += waited
                                self._waiting_since = None
                                self.metrics.backpressure.inc(waited)
                        if (
                            time.monotonic() >= deadline
                            or self._sources_done()
                            or cluster.stop_requested.is_set()
                        ):
                            closing = True
                    self._fire_timers(now)
                    if closing:
                        self._send_barriers()
                        if self._epoch_complete():
                            break
                    if produced:
                        self._drain(0)
                    else:
                        self._idle_drain(self._next_wake(closing, deadline))
                self.after_epoch()
                if self._commit_hooks and (self.control.eof or self.control.stop_votes):
                    self._await_last_commit()
                if epoch_span is not None:
                    self._end_epoch_span(epoch_span)
                if self.metrics is not None:
                    self.metrics.epoch_dur.observe(time.perf_counter() - epoch_t0)
                if self.control.eof:
                    self.finished = True
                elif self.control.stop_votes:
                    self.finished = self.stopped = True
                else:
                    self._advance_epoch()
            self._finish_snapshots()
        finally:
            self._close_all()

    def _close_all(self) -> None:
        self._async_loop.close()
        if self._writer is not None:
            # After a failure: what is queued still runs (a write of an epoch
            # that never commits is harmless: a resume deletes it).
            self._writer.close(timeout=30.0)
        if self.metrics is not None:
            self._account_busy(final=True)
            self.metrics.busy.pending = None
            self.metrics.forget()
        for src in self.sources:
            if not src.done:
                try:
                    src.part.close()
                except Exception:
                    log.exception("error closing source partition in step %r", src.step_id)
        # Sinks close in the reverse of the order they were built, as in Bytewax.
        for step_id, close in reversed(self._closers):
            try:
                close()
            except Exception as exc:
                if self.cluster.error is None and not self.cluster.abort.is_set():
                    raise user_error(
                        f"error calling `close` on a sink partition in step {step_id!r}", exc
                    ) from exc
                log.exception("error closing sink partition in step %r", step_id)


def pickle_part(step_id: str, name: str, state: Any) -> bytes:
    try:
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        msg = (
            f"snapshot of partition {name!r} in step {step_id!r} is a {type(state).__name__}, "
            f"which can't be pickled ({type(exc).__name__}: {exc})"
        )
        raise BytewaxRuntimeError(msg) from exc
