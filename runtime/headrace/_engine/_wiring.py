"""The wiring: one worker's plan turned into a graph of push functions.

Built once per worker (`Wiring`), before the first epoch. The path of one
item from source to sink through the modules:

1. The worker loop (`_worker.Worker._poll_sources`) calls ``next_batch`` on
   each source partition this worker owns (a `SourceRun`, built here) and
   pushes the input step's batch to ``src.push``: `Wiring.push_for` of the
   input's output stream.
2. That push queues the batch for the next step's turn in declaration
   order (`_sched.Ready`); `Ready.run` runs each step on all its pending
   batches, lowest position first.
3. A chain of stateless steps declared one after the other runs as one
   step (`Wiring._chain_from`): `_fuse` compiles its `map`, `filter`, ...
   into one loop over the batch (grouping by key when a stateful step is
   next; folding into a `reduce_final` step's values when the worker is
   alone, see `Wiring._fold_into`). `branch` and dynamic sinks are single
   push functions.
4. The input of a stateful step, `redistribute` or a partitioned sink is an
   exchange edge (`_exchange.Edge`): its router splits the batch by owning
   worker. This worker's share goes to ``edge.deliver`` at once; the rest
   is buffered by `_exchange.Exchange`, sent as a `DATA` message, and the
   owner's loop (`Worker._handle`) hands it to the same ``edge.deliver``
   there.
5. ``deliver`` of a stateful step is `_stateful_run.StatefulRun`: the
   key's logic gets the values, and its outputs are pushed on, as in 2.
6. A sink's push writes the batch to its partition (``write_batch``).

Barriers, epochs, snapshots and commits are the worker loop's
(`_worker`); the wiring gives it the sources, the stateful steps, the
edges (with their upstreams) and the sink partitions to snapshot.

Size: ~850 lines, over the ~800 mark: every kind of step is wired here,
and a chain that folds into its `reduce_final` (`Wiring._fold_into`)
must see both the chain and the stateful step's run; the sink wiring
(dynamic, partitioned, with epochs) is the part to move out if it grows.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from headrace._engine._async_run import WAKE, AsyncLoop, AsyncRun
from headrace._engine._basics import Push, RunConfig, batch_len, drop, not_keyed, user_error, utcnow
from headrace._engine._exchange import Edge, Exchange
from headrace._engine._fuse import EpochRef, Stage, compile_chain, compile_grouping_chain
from headrace._engine._hash import group_owner, part_owner
from headrace._engine._marks import OutputMark
from headrace._engine._plan import CoreStep, Plan, quoted
from headrace._engine._sched import Ready
from headrace._engine._stateful_run import ReduceRun, StatefulRun, reduces_only
from headrace._engine._store_base import PARTS
from headrace._metrics import StepMetrics, WorkerMetrics
from headrace.errors import BytewaxRuntimeError
from headrace.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from headrace.operators._core import FUSABLE_KINDS
from headrace.outputs import DynamicSink, FixedPartitionedSink


class EpochSink:
    """The internal protocol of a `DynamicSink` whose output commits with the epochs.

    A sink with ``commits_with_epochs = True`` (the Kafka sink with
    ``exactly_once=True``) needs recovery, and its worker's partition gets
    three calls besides ``write_batch`` and ``close``:

    - ``resume(states)``, once, right after ``build``: the snapshots of
      the slots this worker owns (see `Wiring._resume_epoch_sink`), by
      slot name; empty on a first run;
    - ``snapshot()`` at the end of each epoch, stored as the state of the
      slot ``worker-{index}`` in that epoch;
    - ``epoch_committed(epoch)`` once the store committed ``epoch``, on
      every worker (`_worker.Worker.after_epoch`), before the partition's
      next ``snapshot()``, and before ``close()`` after the last epoch.
    """

    commits_with_epochs = True


def commits_with_epochs(sink: Any) -> bool:
    """Whether ``sink`` follows the `EpochSink` protocol.

    >>> commits_with_epochs(EpochSink()), commits_with_epochs(object())
    (True, False)
    """
    return getattr(sink, "commits_with_epochs", False) is True


class _FinishedSlot:
    """The stand-in of a slot a resumed `EpochSink` partition finished: snapshots ``None``."""

    def snapshot(self) -> None:
        return None


class SourceRun:
    """One source partition on this worker, and where its batches go."""

    __slots__ = (
        "awake",
        "done",
        "final_state",
        "lag",
        "lag_gauge",
        "m",
        "part",
        "part_name",
        "push",
        "stateful",
        "step_id",
    )

    def __init__(
        self,
        step_id: str,
        part_name: str,
        part: StatefulSourcePartition[Any, Any] | StatelessSourcePartition[Any],
        push: Push,
        stateful: bool,
    ) -> None:
        self.step_id = step_id
        self.part_name = part_name
        self.part = part
        self.push = push
        self.stateful = stateful
        self.awake: datetime | None = None
        self.done = False
        self.final_state: Any = None
        self.m: StepMetrics | None = None
        lag = getattr(part, "lag", None)
        self.lag: Callable[[], Any] | None = lag if callable(lag) else None
        self.lag_gauge: Any = None


def engine_tracer() -> Any:
    """An OpenTelemetry tracer if the app configured a real provider, else None.

    Without one, no span code runs at all, so tracing costs nothing unless on.
    """
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
        return None
    return provider.get_tracer("headrace")


def traced(tracer: Any, name: str, push: Push) -> Push:
    def traced(batch: list[Any]) -> None:
        with tracer.start_as_current_span(name) as span:
            span.set_attribute("headrace.items", len(batch))
            push(batch)

    return traced


class Wiring:
    """The push graph of one worker, built from the plan (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        index: int,
        config: RunConfig,
        metrics: WorkerMetrics | None,
        tracer: Any,
        epoch_ref: EpochRef,
        ready: Ready,
        exchange: Exchange,
    ) -> None:
        self.plan = plan
        self.index = index
        self.count = exchange.count
        self.config = config
        self.metrics = metrics
        self.tracer = tracer
        self.epoch_ref = epoch_ref
        self.ready = ready
        self.exchange = exchange
        self.sources: list[SourceRun] = []
        self.stateful: list[StatefulRun] = []
        # `map_async` steps, and the event loop they share (see `_async_run`).
        self.async_runs: list[AsyncRun] = []
        self.async_loop = AsyncLoop(f"headrace-async-{index}")
        self.edges: list[Edge] = []
        self.edge_of_step: dict[str, Edge] = {}
        # What to close at the end, in the order built (closed in reverse).
        self.closers: list[tuple[str, Callable[[], None]]] = []
        self._pushes: dict[str, Push] = {}
        # Built partitions of fixed sinks, in step and partition order; and
        # the resume state of this worker's partitions not built yet.
        self.sink_parts: list[tuple[str, str, Any]] = []
        self.unbuilt_sink_parts: dict[str, dict[str, Any]] = {}
        # `epoch_committed` of the partitions of `EpochSink`s, in step order.
        self.commit_hooks: list[tuple[str, Callable[[int], None]]] = []
        # When this worker's sinks wrote in the current epoch (the output gap, `_marks`).
        self.output = OutputMark()
        # Steps run in declaration order, each with all its pending batches
        # (`_sched.Ready`); a step's position is its index in the plan.
        self._pos = {st.step_id: i for i, st in enumerate(plan.steps)}
        self._nodes: dict[str, Push] = {}
        # Each stateful step's run, built at first need (a chain may fold into it).
        self._runs: dict[str, StatefulRun] = {}
        self._build()
        exchange.edges = self.edges

    def _build(self) -> None:
        plan = self.plan
        for step in plan.steps:
            if step.kind in ("stateful_batch", "redistribute") or (
                step.kind == "output" and isinstance(step.conf["sink"], FixedPartitionedSink)
            ):
                edge = Edge(len(self.edges), step)
                self.edges.append(edge)
                self.edge_of_step[step.step_id] = edge
        # As in Bytewax: building the dataflow lists the partitions of
        # sources and sinks and builds dynamic sources and sinks, in step
        # order; then the partitions of fixed sources are built; a fixed
        # sink's partition is built at its first write (`_wire_partitioned_sink`).
        self._dyn_sink_parts: dict[str, Any] = {}
        self._sink_part_names: dict[str, list[str]] = {}
        fixed_parts: dict[str, list[str]] = {}
        for step in plan.steps:
            if step.kind == "input":
                source = step.conf["source"]
                if isinstance(source, FixedPartitionedSource):
                    fixed_parts[step.step_id] = self._list_source_parts(step)
                else:
                    self._build_dynamic_source(step)
            elif step.kind == "output":
                sink = step.conf["sink"]
                if isinstance(sink, FixedPartitionedSink):
                    self._sink_part_names[step.step_id] = self._list_sink_parts(step)
                else:
                    self._build_dynamic_sink_part(step)
        for step in plan.steps:
            if step.step_id in fixed_parts:
                self._build_fixed_source(step, fixed_parts[step.step_id])
        # Sources were appended as built: keep them in step order (the order
        # of their batches in an activation).
        by_id = {st.step_id: (i, st) for i, st in enumerate(plan.steps)}
        self.sources.sort(key=lambda src: by_id[src.step_id][0])
        for src in self.sources:
            src.push = self.push_for(by_id[src.step_id][1].outputs["down"])
        for edge in self.edges:
            self._wire_edge(edge)
        self._compute_upstreams()
        if self.metrics is not None:
            for src in self.sources:
                src.m = self.metrics.step(src.step_id, "inp_part_next_batch_duration_seconds")
                if src.lag is not None:
                    src.lag_gauge = self.metrics.lag(src.step_id, src.part_name)
        # The control edge goes last: its barrier is sent once everything
        # else of the epoch is done here, so its alignment means "every
        # worker finished the epoch" (the commit point) and its flags carry
        # the cluster-wide EOF and stop decisions.
        self.control = Edge(len(self.edges), None)
        self.control.upstream_edges = {e.eid for e in self.edges}
        self.control.upstream_sources = {s.step_id for s in self.sources} | {
            st.step_id for st in self.plan.steps if st.kind == "input"
        }
        self.edges.append(self.control)

    def _stage_of(self, step: CoreStep) -> Stage | None:
        if step.kind == "flat_map_batch":
            mapper = step.conf["mapper"]
            hint = getattr(mapper, "_fusable", None)
            if hint is not None and hint[0] in FUSABLE_KINDS:
                return Stage(step.step_id, hint[0], hint[1], step.display_id)
            return Stage(step.step_id, "batch", mapper, step.display_id)
        if step.kind == "inspect_debug":
            return Stage(step.step_id, "inspect", step.conf["inspector"], step.display_id)
        if step.kind == "noop":
            return Stage(step.step_id, "noop", drop)
        return None

    def push_for(self, stream_id: str) -> Push:
        """The function to call with a batch that appears on ``stream_id``."""
        cached = self._pushes.get(stream_id)
        if cached is not None:
            return cached
        consumers = self.plan.consumers.get(stream_id, [])
        entries = [self._entry(step, stream_id) for step in consumers]
        push: Push
        if not entries:
            push = drop
        elif len(entries) == 1:
            push = entries[0]
        else:
            fan = tuple(entries)

            def push(batch: list[Any]) -> None:
                for entry in fan:
                    entry(batch)

        self._pushes[stream_id] = push
        return push

    def _entry(self, step: CoreStep, stream_id: str) -> Push:
        """Entry point of ``step`` for batches arriving on ``stream_id``.

        Queues the batch for the step's turn (`Ready`); `merge` only passes
        batches on, so its consumers queue them.
        """
        if step.kind == "merge":
            return self.push_for(step.outputs["down"])
        node = self._nodes.get(step.step_id)
        if node is None:
            node = self._nodes[step.step_id] = self.ready.push_to(
                self._pos[step.step_id], self._run_many(step)
            )
        return node

    def _run_many(self, step: CoreStep) -> Callable[[list[Any]], None]:
        """What runs ``step`` on the batches of one activation."""
        if self._stage_of(step) is not None:
            return self._chain_from(step)
        if step.step_id in self.edge_of_step:
            edge = self.edge_of_step[step.step_id]
            return lambda batches: edge.route_many(batches)
        if step.kind == "map_async":
            return self._async(step)
        if step.kind == "branch":
            push = self._branch(step)
        elif step.kind == "output":
            push = self._dynamic_sink(step)
        else:
            raise AssertionError(f"unknown core step kind {step.kind!r}")

        def each(batches: list[Any]) -> None:
            for batch in batches:
                push(batch)

        return each

    def _chain_from(self, first: CoreStep) -> Callable[[list[Any]], None]:
        """Run the stateless steps declared one after the other from ``first`` as one step.

        Each batch function of the chain (a fused run of item-level stages,
        an `inspect`, a `flat_map_batch`) handles every batch of the
        activation before the next function starts, as separate steps would.
        """
        stages: list[Stage] = []
        step = first
        pos = self._pos
        while True:
            stage = self._stage_of(step)
            assert stage is not None
            stages.append(stage)
            out = step.outputs["down"]
            consumers = self.plan.consumers.get(out, [])
            # Only the next step declared: one declared in between would run
            # between the two in Bytewax.
            if (
                len(consumers) == 1
                and self._stage_of(consumers[0]) is not None
                and pos[consumers[0].step_id] == pos[step.step_id] + 1
                and len(consumers[0].inputs) == 1
            ):
                step = consumers[0]
                continue
            break
        fns = None
        consumers = self.plan.consumers.get(out, [])
        if self.config.fuse and len(consumers) == 1 and consumers[0].kind == "stateful_batch":
            folded = self._fold_into(first, stages, consumers[0])
            if folded is not None:
                return folded
            fns = compile_grouping_chain(stages, self.epoch_ref, self.index)
        downstream = self.push_for(out)
        if fns is None:
            fns = compile_chain(stages, self.epoch_ref, self.index, self.config.fuse)
        if not fns:

            def pass_on(batches: list[Any]) -> None:
                for batch in batches:
                    downstream(batch)

            return pass_on
        seq = tuple(fns)
        if self.tracer is None and self.metrics is None and len(seq) == 1:
            only = seq[0]

            def run_one(batches: list[Any]) -> None:
                for batch in batches:
                    out = only(batch)
                    if out:
                        downstream(out)

            return run_one

        def apply(batches: list[Any]) -> list[Any]:
            for fn in seq:
                batches = [o for o in map(fn, batches) if o]
            return batches

        if self.tracer is not None:
            tracer, untraced = self.tracer, apply

            def apply(batches: list[Any]) -> list[Any]:
                with tracer.start_as_current_span(first.step_id) as span:
                    span.set_attribute("headrace.items", sum(map(len, batches)))
                    return untraced(batches)

        m = (
            None
            if self.metrics is None
            else self.metrics.step(first.step_id, "flat_map_batch_duration_seconds")
        )

        def run(batches: list[Any]) -> None:
            if m is None:
                outs = apply(batches)
            else:
                t0 = time.perf_counter()
                n = sum(map(len, batches))
                outs = apply(batches)
                dt = time.perf_counter() - t0
                m.inp.inc(n)
                m.out.inc(sum(map(batch_len, outs)))
                m.dur.observe(dt)
                m.busy.inc(dt)
            for batch in outs:
                downstream(batch)

        return run

    def _fold_into(
        self, first: CoreStep, stages: list[Stage], step: CoreStep
    ) -> Callable[[list[Any]], None] | None:
        """The chain and the `reduce_final` ``step`` it feeds, as one loop; or None.

        The chain folds each (key, value) pair into the step's running
        values (`ReduceRun`) as it makes it, instead of grouping a batch by
        key for the step to reduce at its turn. Only where nothing can
        tell: no tracer, and the reducer cannot print (so the order of its
        calls across keys is unseen; each key's values are still folded in
        order). With more than one worker, a pair whose key another worker
        owns is folded into that worker's partial result instead
        (`Exchange.fold_target`), what the step's combiner does to the
        values the router sends; the owner merges the partials as before.
        The step's own metrics count the pairs the chain folded on this
        worker (those bound for another worker too) and the partials it
        receives; their time is in the chain's step, as for every step
        fused into a chain.
        """
        if self.tracer is not None or not reduces_only(step):
            return None
        node = self._run_of(step)
        assert isinstance(node, ReduceRun)
        if node.ordered:
            return None
        target = node.target(node.m is not None)
        after: Callable[[], None] | None = None
        if self.count > 1:
            if getattr(step.conf["builder"], "precombiner", None) is None:
                return None
            after = self.exchange.fold_target(self.edge_of_step[step.step_id], target)
        fns = compile_grouping_chain(stages, self.epoch_ref, self.index, target)
        if fns is None:
            return None
        head = tuple(fns[:-1])
        fold: Callable[[list[Any]], Any] = fns[-1]  # returns a count
        if self.metrics is None:

            def run_plain(batches: list[Any]) -> None:
                for fn in head:
                    batches = [o for o in map(fn, batches) if o]
                for batch in batches:
                    fold(batch)
                node.activated = True
                if after is not None:
                    after()

            return run_plain
        m = self.metrics.step(first.step_id, "flat_map_batch_duration_seconds")
        m_step = node.m
        assert m_step is not None

        def run(batches: list[Any]) -> None:
            t0 = time.perf_counter()
            n_in = sum(map(len, batches))
            for fn in head:
                batches = [o for o in map(fn, batches) if o]
            n = 0
            for batch in batches:
                n += fold(batch)
            node.activated = True
            if after is not None:
                after()
            dt = time.perf_counter() - t0
            m.inp.inc(n_in)
            m.out.inc(n)
            m.dur.observe(dt)
            m.busy.inc(dt)
            m_step.inp.inc(n)

        return run

    def _run_of(self, step: CoreStep) -> StatefulRun:
        """The run of stateful ``step`` on this worker (built once)."""
        node = self._runs.get(step.step_id)
        if node is None:
            if not hasattr(self, "_keyed"):
                self._keyed = self._keyed_streams()
            kind = ReduceRun if reduces_only(step) else StatefulRun
            node = kind(step, self.metrics, self.config.store is not None, step.inputs[0] in self._keyed)
            self._runs[step.step_id] = node
        return node

    def _async(self, step: CoreStep) -> Callable[[list[Any]], None]:
        inbox = self.exchange.cluster.inboxes[self.index]
        run = AsyncRun(
            step, self.async_loop, lambda: inbox.put((WAKE,)), self.exchange.cluster.abort, self.metrics
        )
        run.push = self.push_for(step.outputs["down"])
        self.async_runs.append(run)

        def each(batches: list[Any]) -> None:
            for batch in batches:
                run.on_batch(batch)

        return each

    def _branch(self, step: CoreStep) -> Push:
        pred = step.conf["predicate"]
        trues = self.push_for(step.outputs["trues"])
        falses = self.push_for(step.outputs["falses"])
        shown = step.shown

        def push(batch: list[Any]) -> None:
            t: list[Any] = []
            f: list[Any] = []
            for x in batch:
                try:
                    keep = pred(x)
                except Exception as exc:
                    raise user_error(f"error calling predicate in step {shown} on item {x!r}", exc) from exc
                if keep is True:
                    t.append(x)
                elif keep is False:
                    f.append(x)
                else:
                    raise BytewaxRuntimeError(
                        f"return value of `predicate` in step {shown} must be a `bool`; "
                        f"got {type(keep).__name__} {keep!r} for item {x!r}"
                    ) from TypeError(f"{type(keep).__name__!r} object cannot be converted to 'PyBool'")
            if t:
                trues(t)
            if f:
                falses(f)

        return push

    def _build_dynamic_sink_part(self, step: CoreStep) -> None:
        sink: DynamicSink[Any] = step.conf["sink"]
        epochs = commits_with_epochs(sink)
        if epochs and self.config.store is None:
            msg = (
                f"the sink in step {step.step_id!r} commits its output with the recovery "
                "store's epochs (exactly-once output), and this run has no recovery "
                "configured: configure recovery (-r, RecoveryConfig) or turn exactly-once off"
            )
            raise BytewaxRuntimeError(msg)
        try:
            part = sink.build(step.step_id, self.index, self.count)
        except Exception as exc:
            raise BytewaxRuntimeError(f"error building sink in step {step.step_id!r}") from exc
        self.closers.append((step.step_id, part.close))
        self._dyn_sink_parts[step.step_id] = part
        if epochs:
            self._resume_epoch_sink(step, part)

    def _resume_epoch_sink(self, step: CoreStep, part: Any) -> None:
        """Hand an `EpochSink` partition the states of the slots it owns now.

        Its own slot is ``worker-{index}``; a slot of a worker that no
        longer exists (``worker-{j}``, ``j >= count``) belongs to worker
        ``j % count``, whose partition finishes it in ``resume`` and from
        then on snapshots ``None`` for it, so the store forgets it.
        """
        own = f"worker-{self.index}"
        states: dict[str, Any] = {}
        for name, state in self._resume_parts(step.step_id).items():
            slot = name.removeprefix("worker-")
            if slot.isdigit() and int(slot) % self.count == self.index:
                states[name] = state
        try:
            part.resume(states)
        except Exception as exc:
            raise user_error(f"error resuming the sink in step {step.shown}", exc) from exc
        self.sink_parts.append((step.step_id, own, part))
        for name in sorted(states):
            if name != own:
                self.sink_parts.append((step.step_id, name, _FinishedSlot()))
        self.sink_parts.sort(key=lambda e: (self._pos[e[0]], e[1]))
        self.commit_hooks.append((step.step_id, part.epoch_committed))

    def _dynamic_sink(self, step: CoreStep) -> Push:
        step_id = step.step_id
        shown = step.shown
        write = self._dyn_sink_parts[step_id].write_batch
        m = (
            None
            if self.metrics is None
            else self.metrics.step(step_id, "out_part_write_batch_duration_seconds")
        )

        wrote = self.output.wrote

        def push(batch: list[Any]) -> None:
            t0 = time.perf_counter()
            try:
                write(batch)
            except Exception as exc:
                raise user_error(f"error writing output batch in step {shown}", exc) from exc
            wrote(time.time())
            if m is not None:
                dt = time.perf_counter() - t0
                m.inp.inc(len(batch))
                m.dur.observe(dt)
                m.busy.inc(dt)

        return push

    def _resume_parts(self, step_id: str) -> dict[str, Any]:
        store = self.config.store
        if store is None or not self.config.resume_epoch:
            return {}
        blobs = store.load(step_id, [PARTS]).get(PARTS, {})
        return {name: pickle.loads(blob) for name, blob in blobs.items()}

    def _list_source_parts(self, step: CoreStep) -> list[str]:
        try:
            return sorted(step.conf["source"].list_parts())
        except Exception as exc:
            raise user_error(
                f"error calling `FixedPartitionSource.list_parts` in step {step.shown}", exc
            ) from exc

    def _build_fixed_source(self, step: CoreStep, parts: list[str]) -> None:
        source: FixedPartitionedSource[Any, Any] = step.conf["source"]
        resume = self._resume_parts(step.step_id)
        for i, name in enumerate(parts):
            if part_owner(i, self.count) != self.index:
                continue
            try:
                part = source.build_part(step.step_id, name, resume.get(name))
            except Exception as exc:
                raise user_error(
                    f"error calling `FixedPartitionSource.build_part` in step {step.shown} "
                    f"for partition {quoted(name)}",
                    exc,
                ) from exc
            self.sources.append(SourceRun(step.step_id, name, part, drop, True))

    def _build_dynamic_source(self, step: CoreStep) -> None:
        source: DynamicSource[Any] = step.conf["source"]
        try:
            dyn = source.build(step.step_id, self.index, self.count)
        except Exception as exc:
            raise user_error(f"error calling `DynamicSource.build` in step {step.shown}", exc) from exc
        self.sources.append(SourceRun(step.step_id, f"worker-{self.index}", dyn, drop, False))

    def _keyed_streams(self) -> set[str]:
        """Streams proven to carry `(str, value)` 2-tuples, so consumers skip checks.

        `key_on` checks its keys; value-only stages and filters keep a keyed
        stream keyed; stateful steps emit `(key, out)` with their str keys.
        """
        keyed: set[str] = set()
        keep = {"map_value", "filter_value", "filter_map_value", "flat_map_value", "filter"}
        for step in self.plan.steps:
            ins_keyed = bool(step.inputs) and all(i in keyed for i in step.inputs)
            stage = self._stage_of(step)
            if step.kind == "stateful_batch":
                ok = True
            elif stage is not None:
                ok = stage.kind == "key_on" or (
                    ins_keyed and (stage.kind in keep or stage.kind in ("inspect", "noop"))
                )
            elif step.kind in ("merge", "branch", "redistribute"):
                ok = ins_keyed
            else:
                ok = False
            if ok:
                keyed.update(step.outputs.values())
        return keyed

    def _wire_edge(self, edge: Edge) -> None:
        step = edge.step
        assert step is not None
        if step.kind == "stateful_batch":
            node = self._run_of(step)
            node.push = self.push_for(step.outputs["down"])
            self.stateful.append(node)
            deliver_many: Callable[[list[Any]], None] = node.deliver_many
            if self.tracer is not None:
                edge.deliver = traced(self.tracer, step.step_id, node.deliver)
                deliver_many = traced(self.tracer, step.step_id, deliver_many)
            else:
                edge.deliver = node.deliver
            store = self.config.store
            if store is not None and self.config.resume_epoch:
                groups = self.config.key_groups
                mine = [g for g in range(groups) if group_owner(g, groups, self.count) == self.index]
                for states in store.iter_load(step.step_id, mine):
                    node.restore(states, groups)
            edge.on_eof = node.on_eof
            edge.on_align = lambda: node.fire_timers(utcnow())
            precombiner = getattr(step.conf["builder"], "precombiner", None)
            if precombiner is not None and self.count > 1:
                consumers = self.plan.consumers
                edge.new_combiner = precombiner(lambda stream_id: bool(consumers.get(stream_id)))
            edge.route_many = self.exchange.keyed_router(edge, node.trusted, deliver_many)
        elif step.kind == "redistribute":
            edge.deliver = self.push_for(step.outputs["down"])
            edge.route_many = self.exchange.rr_router(edge)
        else:
            self._wire_partitioned_sink(edge)

    def _list_sink_parts(self, step: CoreStep) -> list[str]:
        try:
            parts = sorted(step.conf["sink"].list_parts())
        except Exception as exc:
            raise user_error(f"error listing partitions in step {step.shown}", exc) from exc
        if not parts:
            msg = f"sink in step {step.step_id!r} listed no partitions"
            raise BytewaxRuntimeError(msg)
        # Closed in partition order, after the sinks built later (see `_close_all`).
        self.closers.append((step.step_id, lambda: self._close_sink_parts(step.step_id)))
        return parts

    def _close_sink_parts(self, step_id: str) -> None:
        for sid, _name, part in self.sink_parts:
            if sid == step_id:
                part.close()

    def _wire_partitioned_sink(self, edge: Edge) -> None:
        step = edge.step
        assert step is not None
        sink: FixedPartitionedSink[Any, Any] = step.conf["sink"]
        step_id = step.step_id
        shown = step.shown
        parts = self._sink_part_names[step_id]
        n = len(parts)
        local: dict[int, Any] = {}
        resume = self._resume_parts(step_id)
        self.unbuilt_sink_parts[step_id] = {
            parts[i]: resume[parts[i]]
            for i in range(n)
            if part_owner(i, self.count) == self.index and parts[i] in resume
        }

        def part_at(i: int) -> Any:
            # Built at its first write, as in Bytewax.
            part = local.get(i)
            if part is not None:
                return part
            name = parts[i]
            try:
                part = local[i] = sink.build_part(step_id, name, resume.get(name))
            except Exception as exc:
                raise user_error(
                    f"error calling `build_part` in step {shown} for partition {quoted(name)}", exc
                ) from exc
            self.unbuilt_sink_parts[step_id].pop(name, None)
            self.sink_parts.append((step_id, name, part))
            self.sink_parts.sort(key=lambda e: (self._pos[e[0]], e[1]))
            return part

        part_fn = sink.part_fn
        count = self.count
        me = self.index
        send = self.exchange.send

        def index_of(item: Any) -> int:
            if item.__class__ is not tuple or len(item) != 2 or item[0].__class__ is not str:
                raise not_keyed(step, item)
            try:
                return int(part_fn(item[0])) % n
            except Exception as exc:
                raise user_error(
                    f"error assigning output partition in step {shown} for key {quoted(item[0])}", exc
                ) from exc

        m = (
            None
            if self.metrics is None
            else self.metrics.step(step_id, "out_part_write_batch_duration_seconds")
        )

        wrote = self.output.wrote

        def deliver(batch: list[Any]) -> None:
            t0 = time.perf_counter()
            by_part: dict[int, list[Any]] = {}
            for item in batch:
                by_part.setdefault(index_of(item), []).append(item[1])
            for i, values in by_part.items():
                part = part_at(i)
                try:
                    part.write_batch(values)
                except Exception as exc:
                    raise user_error(
                        f"error writing output batch in step {shown} for partition {quoted(parts[i])}", exc
                    ) from exc
            wrote(time.time())
            if m is not None:
                dt = time.perf_counter() - t0
                m.inp.inc(len(batch))
                m.dur.observe(dt)
                m.busy.inc(dt)

        def route(batch: list[Any]) -> None:
            if count == 1:
                deliver(batch)
                return
            buckets: list[list[Any]] = [[] for _ in range(count)]
            for item in batch:
                buckets[part_owner(index_of(item), count)].append(item)
            for dst, items in enumerate(buckets):
                if items:
                    if dst == me:
                        deliver(items)
                    else:
                        send(edge, dst, items)

        def route_many(batches: list[Any]) -> None:
            for batch in batches:
                route(batch)

        edge.deliver = deliver
        edge.route_many = route_many

    def _compute_upstreams(self) -> None:
        """For each edge: which edges and source steps feed it (transitively)."""
        plan = self.plan
        memo: dict[str, tuple[frozenset[int], frozenset[str]]] = {}

        def ups_of_stream(stream_id: str) -> tuple[frozenset[int], frozenset[str]]:
            if stream_id in memo:
                return memo[stream_id]
            step = plan.producer[stream_id]
            edges: set[int] = set()
            srcs: set[str] = set()
            if step.kind == "input":
                srcs.add(step.step_id)
            edge = self.edge_of_step.get(step.step_id)
            if edge is not None:
                edges.add(edge.eid)
            for inp in step.inputs:
                e, s = ups_of_stream(inp)
                edges |= e
                srcs |= s
            memo[stream_id] = (frozenset(edges), frozenset(srcs))
            return memo[stream_id]

        for edge in self.edges:
            assert edge.step is not None
            for inp in edge.step.inputs:
                e, s = ups_of_stream(inp)
                edge.upstream_edges |= e
                edge.upstream_sources |= s
