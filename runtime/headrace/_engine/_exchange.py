"""The exchange: items bound for the worker that owns them, and the credits that pace it.

An *exchange edge* (`Edge`) is the input of a step whose items must reach
a particular worker: a stateful step (by key), `redistribute` (round
robin) or a partitioned sink (by partition). Its router (`keyed_router`,
`rr_router`, or the sink's own in `_wiring`) splits each batch by
destination: this worker's share is handled at once (``edge.deliver``);
the rest goes to `Exchange.send`.

`Exchange` owns what one worker has in flight to the others: the
out-buffers, one per (edge, destination), sent as one `DATA` message when
full, when old, before the worker blocks and before a barrier
(`Exchange.flush`); the combiners that fold a stateful step's values into
partial results before they leave (`combine_into`); and the credits:
``inflight[w]`` counts items sent to worker ``w`` and not yet acknowledged
(the worker loop stops polling its sources past ``inflight_limit``), and
``acks[w]`` the items received from ``w`` and not yet acknowledged to it
(`Exchange.send_acks`).

This module is on the hot path: the routers and `Exchange.send` run per
batch and per key; they bind what they use to locals when they are made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from headrace._engine._basics import (
    ACK,
    DATA,
    Cluster,
    Push,
    RunConfig,
    batch_len,
    calling,
    drop,
    not_keyed,
    reject_unkeyed,
    user_error,
)
from headrace._engine._fuse import EpochRef, ReduceTarget, RemoteCells
from headrace._engine._hash import group_owner, key_group
from headrace._engine._plan import CoreStep
from headrace._metrics import WorkerMetrics


@dataclass
class Edge:
    """An exchange edge: where items are routed to the worker that owns them."""

    eid: int
    step: CoreStep | None  # None for the control edge
    deliver: Push = drop  # local processing of items owned by this worker
    # the batches of one activation, routed then sent or delivered (see `Ready`)
    route_many: Callable[[list[Any]], None] = drop
    on_eof: Callable[[], None] = lambda: None
    # the step's activation when the epoch ends there (a stateful step's due timers fire)
    on_align: Callable[[], None] = lambda: None
    # makes the step's combiner for one destination worker (see `combine_into`)
    new_combiner: Callable[[], Any] | None = None
    upstream_edges: set[int] = field(default_factory=set)
    upstream_sources: set[str] = field(default_factory=set)
    # per-epoch state
    barrier_sent: bool = False
    barriers: int = 0
    eof_votes: int = 0
    stop_votes: int = 0
    # the control edge: when the workers' sinks wrote in the epoch (`_marks`; 0.0: no output)
    out_first: float = 0.0
    out_last: float = 0.0
    aligned: bool = False
    # sticky state
    eof: bool = False


def combine_into(shown: str, combiner: Any, groups: dict[str, list[Any]]) -> int:
    """Hand each key's values bound for another worker to the step's combiner; count them.

    The combiner (``add(key, values)``, ``take()``) comes from the step
    builder's ``precombiner`` (`_combinable`, `_WindowSpec.precombiner`);
    it folds the values into partial results at once, while they are
    still in the CPU's caches, and the flush sends what ``take`` returns.
    """
    n = 0
    add = combiner.add
    for k, vs in groups.items():
        n += len(vs)
        try:
            add(k, vs)
        except Exception as exc:
            raise user_error(calling("on_batch", shown, k), exc) from exc
    return n


class CellCombiner:
    """A combiner whose partial results a fused chain folds in place (`Exchange.fold_target`).

    ``cells`` holds, for the keys one destination worker owns, each key's
    partial result in a one-item list, as ``{key: [value]}`` payloads
    carry it; ``shared`` is the chain's lookup over every destination's
    keys, so a key leaves both when `take` hands its partial over.

    >>> shared = {}
    >>> c = CellCombiner(shared)
    >>> c.cells["a"] = shared["a"] = [3]
    >>> c.take(), shared, c.take()
    ({'a': [3]}, {}, {})
    """

    __slots__ = ("cells", "shared")

    def __init__(self, shared: dict[str, list[Any]]) -> None:
        self.cells: dict[str, list[Any]] = {}
        self.shared = shared

    def take(self) -> dict[str, list[Any]]:
        """Each key's partial result since the last call, and start over."""
        out = self.cells
        if out:
            self.cells = {}
            shared = self.shared
            if len(shared) == len(out):
                shared.clear()  # one destination (two workers): every key is its
            else:
                for k in out:
                    del shared[k]
        return out


class Exchange:
    """One worker's out-buffers, combiners and credits (see the module docstring)."""

    def __init__(
        self,
        cluster: Cluster,
        index: int,
        config: RunConfig,
        metrics: WorkerMetrics | None,
        epoch_ref: EpochRef,
    ) -> None:
        self.cluster = cluster
        self.index = index
        self.count = cluster.worker_count
        self.epoch_ref = epoch_ref
        self.metrics = metrics
        self.flush_items = config.exchange_flush_items
        self.key_groups = config.key_groups
        self.edges: list[Edge] = []  # every edge of the worker, by id (set by the wiring)
        # Items sent to each worker and not yet acknowledged by it.
        self.inflight = [0] * self.count
        # Items received from each worker and not yet acknowledged to it.
        self.acks = [0] * self.count
        # ACKs are sent once a sender is owed this many, or before blocking
        # (see `Worker._drain`); a sender over `inflight_limit` is owed more than it.
        self.ack_every = max(1, config.inflight_limit // 4)
        # (edge id, destination) -> items waiting to be sent (see `send`)
        self.outbuf: dict[tuple[int, int], Any] = {}
        # (edge, worker) -> that destination's combiner (kept across flushes)
        self.combiners: dict[tuple[int, int], Any] = {}
        self.items = 0  # items in the out-buffers
        self.since = 0.0  # when the oldest of them was buffered (time.monotonic)

    def send(self, edge: Edge, dst: int, items: Any) -> None:
        """Buffer ``items`` (a list, or ``{key: [values]}``) for worker ``dst`` on ``edge``.

        The buffer keeps (and extends) the lists it is given: every caller
        hands over lists made for this send alone, never a batch that other
        steps also see. On an edge with a combiner, the values go into the
        (edge, worker)'s combiner instead, which the buffer then names.
        """
        key = (edge.eid, dst)
        if edge.new_combiner is not None:
            combiner = self.combiners.get(key)
            if combiner is None:
                combiner = self.combiners[key] = edge.new_combiner()
            assert edge.step is not None and items.__class__ is dict
            n = combine_into(edge.step.shown, combiner, items)
            self.outbuf[key] = combiner
        elif items.__class__ is dict:
            n = 0
            buf = self.outbuf.get(key)
            if buf is None:
                buf = self.outbuf[key] = {}
            get = buf.get
            for k, vs in items.items():
                n += len(vs)
                old = get(k)
                if old is None:
                    buf[k] = vs
                else:
                    old.extend(vs)
        else:
            n = len(items)
            buf = self.outbuf.get(key)
            if buf is None:
                self.outbuf[key] = items
            else:
                buf.extend(items)
        if not self.items:
            self.since = time.monotonic()
        self.items += n
        if self.items >= self.flush_items:
            self.flush()

    def flush(self) -> None:
        """Send every buffered batch (or the partial results of a combiner)."""
        buffered = self.outbuf
        if not buffered:
            return
        self.outbuf = {}
        self.items = 0
        edges = self.edges
        metrics = self.metrics
        for (eid, dst), payload in buffered.items():
            edge = edges[eid]
            if edge.new_combiner is not None:
                payload = payload.take()
                if not payload:
                    continue  # every value was late: nothing to send
            n = batch_len(payload)
            self.inflight[dst] += n
            if metrics is not None:
                metrics.x_out.inc(n)
            self.cluster.send(dst, (DATA, eid, self.index, self.epoch_ref.epoch, payload))

    def send_acks(self, force: bool) -> None:
        """Tell senders how many of their items were processed.

        Unless ``force``, only senders owed ``ack_every`` or more hear now:
        a sender that stopped for backpressure is owed more than that, and
        every ACK is forced out before this worker blocks.
        """
        acks = self.acks
        every = self.ack_every
        for sender, n in enumerate(acks):
            if n:
                if sender == self.index:
                    acks[sender] = 0
                    self.inflight[sender] -= n
                elif force or n >= every:
                    acks[sender] = 0
                    self.cluster.send(sender, (ACK, self.index, n))

    def fold_target(self, edge: Edge, target: ReduceTarget) -> Callable[[], None]:
        """Let a chain fold pairs straight into a `reduce_final` that other workers share.

        ``target`` holds this worker's running values (`ReduceRun.target`);
        this sets its ``remote``: the pairs of keys another worker owns go
        into that worker's `CellCombiner` on ``edge``, as `send` would put
        them into its combiner. Without snapshots to track, the chain
        looks every key up in one dict (`RemoteCells.unified`). Returns
        what to call after each activation of the chain: it counts the new
        partials as buffered items (flushing at `flush_items`) and hands
        the combiners to the flush, as `send` does.
        """
        groups = self.key_groups
        count = self.count
        me = self.index
        cells = target.cells
        dirty = target.dirty
        reducer = target.reducer
        failed = target.failed
        unified = dirty is None
        shared: dict[str, list[Any]] = {}
        per_dst: list[CellCombiner | None] = [None] * count
        for dst in range(count):
            if dst != me:
                per_dst[dst] = CellCombiner(shared)
        cache: dict[str, int] = {}
        folded = [0]

        def new_key(k: str, v: Any) -> int:
            dst = cache.get(k)
            if dst is None:
                if len(cache) > 1_000_000:
                    cache.clear()
                dst = cache[k] = group_owner(key_group(k, groups), groups, count)
            if dst == me:
                if not unified:
                    cells[k] = [v]
                    if dirty is not None:
                        dirty.add(k)
                    return 0
                # The step may hold the key already (a partial received, a restore).
                cell = cells.get(k)
                if cell is None:
                    cells[k] = cell = [v]
                else:
                    try:
                        cell[0] = reducer(cell[0], v)
                    except Exception as exc:
                        raise failed(k, exc) from exc
                shared[k] = cell
                return 0
            combiner = per_dst[dst]
            assert combiner is not None
            combiner.cells[k] = shared[k] = [v]
            folded[0] += 1  # a new partial: the buffer's item count
            return 1

        eid = edge.eid

        def after() -> None:
            n = folded[0]
            if n:
                folded[0] = 0
                outbuf = self.outbuf  # a new dict after each flush
                for dst, combiner in enumerate(per_dst):
                    if combiner is not None and combiner.cells:
                        outbuf[(eid, dst)] = combiner
                if not self.items:
                    self.since = time.monotonic()
                self.items += n
                if self.items >= self.flush_items:
                    self.flush()

        target.remote = RemoteCells(shared, new_key, folded, unified)
        return after

    def keyed_router(
        self,
        edge: Edge,
        trusted: bool,
        deliver_many: Callable[[list[Any]], None],
    ) -> Callable[[list[Any]], None]:
        """Route an activation's batches by key; this worker's keys are handled together."""
        if self.count == 1:
            return deliver_many
        step = edge.step
        assert step is not None
        groups = self.key_groups
        count = self.count
        me = self.index
        send = self.send
        cache: dict[str, int] = {}

        def owner(k: str) -> int:
            if len(cache) > 1_000_000:
                cache.clear()
            dst = cache[k] = group_owner(key_group(k, groups), groups, count)
            return dst

        local: list[Any] = []

        def route_groups(grouped: dict[str, list[Any]]) -> None:
            parts: list[dict[str, list[Any]]] = [{} for _ in range(count)]
            for k, vs in grouped.items():
                dst = cache.get(k)
                if dst is None:
                    dst = owner(k)
                parts[dst][k] = vs
            for dst, part in enumerate(parts):
                if part:
                    if dst == me:
                        local.append(part)
                    else:
                        send(edge, dst, part)

        def route_many(batches: list[Any]) -> None:
            for batch in batches:
                route(batch)
            if local:
                mine = local[:]
                local.clear()
                deliver_many(mine)

        def route(batch: Any) -> None:
            if batch.__class__ is dict:
                # Made for this step alone by its grouping chain
                # (`compile_grouping_chain`: one consumer, a stateful step),
                # so the send buffer may keep its lists.
                route_groups(batch)
                return
            # Group first: one owner lookup per key, and each key is
            # pickled once per message instead of once per item.
            if not trusted and list(map(type, batch)).count(tuple) != len(batch):
                reject_unkeyed(step, batch)
            grouped: dict[str, list[Any]] = {}
            get = grouped.get
            try:
                for k, v in batch:
                    vs = get(k)
                    if vs is None:
                        if k.__class__ is not str:
                            raise not_keyed(step, (k, v))
                        grouped[k] = [v]
                    else:
                        vs.append(v)
            except ValueError:
                reject_unkeyed(step, batch)
            route_groups(grouped)

        return route_many

    def rr_router(self, edge: Edge) -> Callable[[list[Any]], None]:
        if self.count == 1:
            deliver = edge.deliver

            def pass_on(batches: list[Any]) -> None:
                for batch in batches:
                    deliver(batch)

            return pass_on
        count = self.count
        me = self.index
        send = self.send
        offset = [me]

        def route(batch: list[Any]) -> None:
            start = offset[0]
            offset[0] = (start + len(batch)) % count
            for j in range(count):
                dst = (start + j) % count
                items = batch[j::count]
                if items:
                    if dst == me:
                        edge.deliver(items)
                    else:
                        send(edge, dst, items)

        def route_many(batches: list[Any]) -> None:
            for batch in batches:
                route(batch)

        return route_many
