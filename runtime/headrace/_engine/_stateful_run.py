"""The per-key stateful runtime: one `stateful_batch` step on one worker.

`StatefulRun` keeps one `StatefulBatchLogic` per key this worker owns,
builds it at the key's first item, calls `on_batch` with each key's values
of an activation (keys in sorted order, as Bytewax), keeps the keys'
timers (`notify_at`) in a heap and fires them (`on_notify`), calls
`on_eof` at the end of input, and tracks the keys changed in an epoch so
that the snapshot writes only those. Its outputs go to ``push`` as
``(key, value)`` pairs.

With a time to live (``ttl``, `stateful_batch`'s keyword), the step also
keeps each key's last update (processing time: the wall clock when the
key's items were handled) in update order; a key not updated for ``ttl`` is
dropped, without output, before the step's next activation, timer pass,
end of input or snapshot, and a tombstone deletes it from the store. Its
snapshot then carries the update time, so a resumed key expires on time.

`ReduceRun` is the same step for `reduce_final` (and the aggregations
built on it) without a ttl: it keeps each key's running value in a plain
dict (in a one-item list) instead of a logic object per key, with the same snapshots, order,
errors and end-of-input output. Its `ReduceRun.target` lets the wiring
fold the chain that feeds the step into that dict, item by item, in the
chain's own loop (`_fuse`), when nothing can see the difference: one
worker and a reducer that cannot print (`not ordered`).

On a resume the wiring hands `restore` each key group's stored states.
A `stateful_map`'s (or `stateful_flat_map`'s) keys rest there pickled
(``resting``) and each key's logic is built at its first item, which
nothing else can tell (`_builds_later`); other steps build every key then.

The exchange (`_exchange`) routes items here; the wiring (`_wiring`) builds
it, and the worker loop (`_worker`) fires its timers and snapshots it. The
module runs past 800 lines because both runs, their restore and the
snapshot batch they fill share the per-key invariants (key order, changed
keys, ttl order) that a split would spread over modules.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import operator
import pickle
import time
import zlib
from collections import OrderedDict
from datetime import datetime
from typing import Any

from headrace._engine._basics import (
    Push,
    batch_len,
    calling,
    drop,
    not_keyed,
    reject_unkeyed,
    user_error,
    utcnow,
)
from headrace._engine._fuse import ReduceTarget
from headrace._engine._hash import key_group
from headrace._engine._plan import CoreStep, quoted
from headrace._engine._store_base import Entry
from headrace._metrics import WorkerMetrics
from headrace.errors import BytewaxRuntimeError

# A logic still due after `on_notify` is notified again, at most this many
# rounds per pass of the worker loop.
_MAX_TIMER_ROUNDS = 1000

# A key's snapshot under a ttl: ``(_TTL_TAG, updated_at, state)``.
_TTL_TAG = "headrace.ttl.v1"


def _clock() -> float:
    """Seconds since the Unix epoch: when keys were updated, for ``ttl`` (tests replace it).

    >>> _clock() > 1.7e9
    True
    """
    return time.time()


_TIMER_CLASSES: dict[type, bool] = {}
_EOF_CLASSES: dict[type, bool] = {}


def _has_own_eof(logic: Any) -> bool:
    """Whether a logic's class overrides `on_eof` (else EOF changes nothing)."""
    return _class_has_eof(type(logic))


def _class_has_eof(cls: Any) -> bool:
    known = _EOF_CLASSES.get(cls)
    if known is None:
        from headrace.operators._core import StatefulBatchLogic

        known = _EOF_CLASSES[cls] = cls.on_eof is not StatefulBatchLogic.on_eof
    return known


def _may_set_timers(logic: Any) -> bool:
    """Whether a logic's class overrides `notify_at` (else it never sets timers)."""
    return _class_sets_timers(type(logic))


def _class_sets_timers(cls: Any) -> bool:
    known = _TIMER_CLASSES.get(cls)
    if known is None:
        from headrace.operators._core import StatefulBatchLogic

        known = _TIMER_CLASSES[cls] = cls.notify_at is not StatefulBatchLogic.notify_at
    return known


def _builds_later(builder: Any) -> bool:
    """Whether a restored key's logic may be built at the key's first use rather than at restore.

    True for a builder tagged with the one class it makes and nothing else
    (``_headrace_logic``: `stateful_map`'s, `stateful_flat_map`'s) when
    that class sets no timers and has no `on_eof` of its own: such a logic
    is only ever reached through its key's items, so when it is built can't
    be seen. A logic with timers must be scheduled at restore, and one with
    an `on_eof` must see every key; a user's builder may do anything.

    >>> from headrace.operators._stateful import _CollectLogic, _MapLogic, _makes
    >>> _builds_later(_makes(_MapLogic, lambda r: None)), _builds_later(lambda r: None)
    (True, False)
    >>> _builds_later(_makes(_CollectLogic, lambda r: None))
    False
    """
    cls = getattr(builder, "_headrace_logic", None)
    return isinstance(cls, type) and not _class_sets_timers(cls) and not _class_has_eof(cls)


class StatefulRun:
    """A `stateful_batch` step on one worker: per-key logic, timers, EOF."""

    def __init__(
        self, step: CoreStep, metrics: WorkerMetrics | None, track: bool, trusted: bool = False
    ) -> None:
        # `track`: a store snapshots the keys changed in each epoch.
        # `trusted`: the input stream is proven to carry (str, value) tuples.
        self.trusted = trusted
        self.step = step
        self.step_id = step.step_id
        self.shown = step.shown  # how errors name the step (Bytewax's id)
        self.builder = step.conf["builder"]
        self.logics: dict[str, Any] = {}
        self.timers: dict[str, datetime] = {}
        self.heap: list[tuple[datetime, int, str]] = []
        self._seq = 0
        self.push: Push = drop
        self.dirty: set[str] = set()
        self.track = track
        # Bytewax handles the keys of an activation in sorted order; a
        # builder tagged `_unordered` (a reduction whose function can't
        # print: `_stateful._unordered`) emits nothing per batch, so its
        # order can't be seen and the sort is skipped.
        self.ordered = not getattr(self.builder, "_unordered", False)
        self.activated = False  # handled items since the worker loop last fired timers
        # Restored keys whose logic is built at their first use (`restore`):
        # key group -> key -> its pickled state, as stored.
        self.resting: dict[int, dict[str, bytes]] = {}
        self.key_groups = 0  # the store's key groups: where `resting` keeps a key
        self.later_ok = _builds_later(self.builder)
        wm = metrics
        self.m = None if wm is None else wm.step(self.step_id, "stateful_batch_on_batch_duration_seconds")
        self.m_notify = (
            None if wm is None else wm.bind("stateful_batch_on_notify_duration_seconds", self.step_id, wm.wi)
        )
        self.m_eof = (
            None if wm is None else wm.bind("stateful_batch_on_eof_duration_seconds", self.step_id, wm.wi)
        )
        ttl = step.conf.get("ttl")
        # Seconds a key lives without an update (None: forever), and each
        # key's last update, oldest first.
        self.ttl: float | None = None if ttl is None else ttl.total_seconds()
        self.updated: OrderedDict[str, float] = OrderedDict()
        self.unsorted = False  # `updated` holds restored keys not yet in order
        self.m_expired = (
            None
            if wm is None or ttl is None
            else wm.bind("headrace_state_expired_keys_total", self.step_id, wm.wi)
        )

    def restore(self, states: dict[str, bytes], key_groups: int = 0) -> None:
        """Rebuild the logic of every key of one key group from its snapshot.

        Given the store's ``key_groups``, and for a builder whose logic may
        be built later (`_builds_later`), the states are kept as they are
        (``resting``), and each key's logic is built at its first item
        (`_built`), or never: a key never touched needs no logic, and stays
        in the store as it was (only changed keys are snapshotted). Its
        state is unpickled then too, so a state that can't be unpickled
        stops the run at its key's first item instead of at the start.
        """
        if key_groups and self.later_ok:
            if states:
                self._rest(states, key_groups)
            return
        stamps: list[tuple[float, str]] = []
        logics = self.logics
        builder = self.builder
        loads = pickle.loads
        for key, blob in states.items():
            try:
                state = loads(blob)
                if state.__class__ is tuple and len(state) == 3 and state[0] == _TTL_TAG:
                    # Written under a ttl: keep the key's last update.
                    _, at, state = state
                    stamps.append((at, key))
                elif self.ttl is not None:
                    stamps.append((_clock(), key))  # the ttl is new: the key's time starts now
                logic = builder(state)
            except Exception as exc:
                raise self._unreadable(key, exc) from exc
            logics[key] = logic
            if _may_set_timers(logic):  # else `notify_at` is always None: no timer
                self._schedule(key, logic)
        if self.ttl is not None:
            self._stamped(stamps)

    def _rest(self, states: dict[str, bytes], key_groups: int) -> None:
        """Keep one key group's restored ``states`` until their keys are used (see `restore`)."""
        self.key_groups = key_groups
        if self.ttl is not None:
            # Each key's last update (or now, if the ttl is new) orders the
            # keys for expiry; the state rests pickled, as the others.
            now = _clock()
            stamps: list[tuple[float, str]] = []
            loads = pickle.loads
            for key, blob in states.items():
                try:
                    state = loads(blob)
                except Exception as exc:
                    raise self._unreadable(key, exc) from exc
                if state.__class__ is tuple and len(state) == 3 and state[0] == _TTL_TAG:
                    stamps.append((state[1], key))
                else:
                    stamps.append((now, key))
            self._stamped(stamps)
        group = key_group(next(iter(states)), key_groups)
        kept = self.resting.get(group)
        if kept is None:
            self.resting[group] = states
        else:
            kept.update(states)

    def _stamped(self, stamps: list[tuple[float, str]]) -> None:
        """Restored keys' last updates, for ``ttl``: put in order (all key groups' together) by `_expire`.

        Keys due expire at the step's first activation, timer pass, end of
        input or snapshot, as any key does (their tombstones go in the next
        snapshot).
        """
        self.updated.update((key, at) for at, key in stamps)
        self.unsorted = True

    def _built(self, key: str) -> Any:
        """The logic of a key not in ``logics``: rebuilt from its resting state, or new."""
        resting = self.resting
        if resting:
            group = zlib.crc32(key.encode("utf-8", "surrogatepass")) % self.key_groups
            states = resting.get(group)
            if states is not None:
                blob = states.pop(key, None)
                if blob is not None:
                    if not states:
                        del resting[group]
                    try:
                        state = pickle.loads(blob)
                        if state.__class__ is tuple and len(state) == 3 and state[0] == _TTL_TAG:
                            state = state[2]
                        return self.builder(state)
                    except Exception as exc:
                        raise self._unreadable(key, exc) from exc
        try:
            return self.builder(None)
        except Exception as exc:
            raise BytewaxRuntimeError(
                f"error calling `builder` in step {self.shown} for key {quoted(key)}"
            ) from exc

    def _unreadable(self, key: str, exc: Exception) -> BytewaxRuntimeError:
        return user_error(
            f"error rebuilding state of key {key!r} in step {self.step_id!r} from its snapshot", exc
        )

    def _forget(self, key: str) -> bool:
        """Drop a resting key (expired under a ttl); whether it was one."""
        resting = self.resting
        if not resting:
            return False
        group = zlib.crc32(key.encode("utf-8", "surrogatepass")) % self.key_groups
        states = resting.get(group)
        if states is None or states.pop(key, None) is None:
            return False
        if not states:
            del resting[group]
        return True

    def _touch(self, keys: Any) -> None:
        """``keys`` were updated now: each moves to the young end (or leaves, if discarded)."""
        now = _clock()
        updated = self.updated
        logics = self.logics
        for k in keys:
            if k in logics:
                updated[k] = now
                updated.move_to_end(k)
            else:
                updated.pop(k, None)

    def _expire(self, now: float) -> None:
        """Drop every key not updated for ``ttl`` seconds (their tombstones go in the snapshot)."""
        updated = self.updated
        assert self.ttl is not None
        if self.unsorted:  # restored keys: oldest first
            self.unsorted = False
            items = sorted(updated.items(), key=operator.itemgetter(1))
            updated.clear()
            updated.update(items)
        cutoff = now - self.ttl
        n = 0
        while updated:
            key, at = next(iter(updated.items()))
            if at > cutoff:
                break
            del updated[key]
            if self.logics.pop(key, None) is not None or self._forget(key):
                self.timers.pop(key, None)
                if self.track:
                    self.dirty.add(key)
                n += 1
        if n and self.m_expired is not None:
            self.m_expired.inc(n)

    def snapshot_entries(self, groups: int) -> list[Entry]:
        """Pickled state of the keys changed this epoch (tombstones for dropped ones)."""
        return self.snapshot_batch().entries(groups)

    def changed(self) -> int:
        """The keys changed this epoch, as of now (under a ttl, the keys due expire first).

        A forked child then snapshots them (`snapshot_batch` with
        ``expire=False``: it sees the same keys) while this process calls
        `forget_changed` and goes on.
        """
        if self.ttl is not None:
            self._expire(_clock())
        return len(self.dirty)

    def forget_changed(self) -> None:
        """The changed keys were taken (by a forked child): the next epoch starts with none."""
        self.dirty.clear()

    def snapshot_batch(self, expire: bool = True) -> SnapshotBatch:
        """The state of the keys changed this epoch, taken now, to be pickled later.

        Each changed key's `snapshot()` is called now (the barrier decides
        what belongs to the epoch); a state that can't change afterwards
        (`_frozen`) is kept by reference, anything else is pickled at once.
        ``expire=False``: the keys due were expired already (`changed`).
        """
        batch = SnapshotBatch(self.step_id, self.shown)
        logics = self.logics
        later, now = batch.later, batch.now
        if self.ttl is not None:
            if expire:
                self._expire(_clock())
            updated = self.updated
            for key in self.dirty:
                logic = logics.get(key)
                if logic is None:
                    now.append((key, b""))
                else:
                    now.append((key, pickle_state(self.shown, key, logic, updated.get(key))))
            self.dirty.clear()
            return batch
        shown = self.shown
        atomic = _ATOMIC
        for key in self.dirty:
            logic = logics.get(key)
            if logic is None:
                now.append((key, b""))
                continue
            try:
                state = logic.snapshot()
            except Exception as exc:
                raise user_error(calling("snapshot", shown, key), exc) from exc
            cls = state.__class__
            if cls in atomic or (cls is tuple and _frozen(state)):
                later.append((key, state))
            else:
                now.append((key, _pickled(shown, key, state)))
        self.dirty.clear()
        return batch

    def _schedule(self, key: str, logic: Any) -> None:
        try:
            at = logic.notify_at()
        except Exception as exc:
            raise BytewaxRuntimeError(calling("notify_at", self.shown, key)) from exc
        if at is None:
            if key in self.timers:
                del self.timers[key]
            return
        if not isinstance(at, datetime) or at.tzinfo is None:
            why = f"must return a timezone-aware datetime or None; got {at!r}"
            if not isinstance(at, datetime):
                # The words of Bytewax's innermost error, then Headrace's.
                why = f"{type(at).__name__!r} object cannot be converted to 'PyDateTime': {why}"
            raise BytewaxRuntimeError(f"{calling('notify_at', self.shown, key)}: {why}") from TypeError(
                f"`notify_at` {why}"
            )
        if self.timers.get(key) != at:
            self.timers[key] = at
            self._seq += 1
            heapq.heappush(self.heap, (at, self._seq, key))

    def _apply(self, key: str, logic: Any, ret: Any, what: str, later: list[str] | None = None) -> list[Any]:
        try:
            outs, discard = ret
        except (TypeError, ValueError) as exc:
            why = f"`{what}` must return a 2-tuple `(outputs, discard)`; got {ret!r}"
            raise BytewaxRuntimeError(f"{calling(what, self.shown, key)}: {why}") from TypeError(
                f"{exc}: {why}"
            )
        try:
            out = [(key, w) for w in outs]
        except Exception as exc:
            if isinstance(exc, TypeError) and not hasattr(outs, "__iter__"):
                why = (
                    f"`{what}` must return `(outputs, discard)` with an iterable of outputs; "
                    f"got {type(outs).__name__}"
                )
                raise BytewaxRuntimeError(f"{calling(what, self.shown, key)}: {why}") from TypeError(why)
            raise user_error(f"{calling(what, self.shown, key)} (while iterating its outputs)", exc) from exc
        if self.track:
            self.dirty.add(key)
        if discard:
            self.logics.pop(key, None)
            self.timers.pop(key, None)
        elif later is not None:
            later.append(key)
        else:
            self._schedule(key, logic)
        return out

    def on_batch(self, batch: list[Any]) -> None:
        t0 = time.perf_counter()
        if not self.trusted:
            self._process(self._group(batch), len(batch), t0)
            return
        groups: dict[str, list[Any]] = {}
        for k, v in batch:
            vs = groups.get(k)
            if vs is None:
                groups[k] = [v]
            else:
                vs.append(v)
        self._process(groups, len(batch), t0)

    def _reject(self, batch: list[Any]) -> None:
        reject_unkeyed(self.step, batch)

    def deliver(self, payload: Any) -> None:
        """Items (a list) or values already grouped by key (a dict)."""
        if payload.__class__ is dict:
            self._process(payload, batch_len(payload) if self.m is not None else 0, time.perf_counter())
        else:
            self.on_batch(payload)

    def deliver_many(self, payloads: list[Any]) -> None:
        """Every batch of one activation, grouped by key together (as Bytewax does)."""
        if len(payloads) == 1:
            self.deliver(payloads[0])
            return
        t0 = time.perf_counter()
        groups: dict[str, list[Any]] = {}
        n = 0
        for payload in payloads:
            if payload.__class__ is not dict:
                payload = self._group(payload)
            for k, vs in payload.items():
                n += len(vs)
                old = groups.get(k)
                if old is None:
                    groups[k] = list(vs)
                else:
                    old.extend(vs)
        self._process(groups, n, t0)

    def _group(self, batch: list[Any]) -> dict[str, list[Any]]:
        # One C-level pass checks every item is a tuple; unpacking then
        # checks the length, and each new key is checked to be a str.
        groups: dict[str, list[Any]] = {}
        if list(map(type, batch)).count(tuple) != len(batch):
            self._reject(batch)
        try:
            for k, v in batch:
                vs = groups.get(k)
                if vs is None:
                    if k.__class__ is not str:
                        raise not_keyed(self.step, (k, v))
                    groups[k] = [v]
                else:
                    vs.append(v)
        except ValueError:
            self._reject(batch)
        return groups

    def _process(self, groups: dict[str, list[Any]], n_in: int, t0: float) -> None:
        if self.ttl is not None:
            self._expire(_clock())
        out: list[Any] = []
        extend = out.extend
        logics = self.logics
        builder = self.builder
        resting = self.resting
        dirty = self.dirty if self.track else None
        # Keys whose `notify_at` is asked after this activation's due timers
        # fired: as in Bytewax, a timer set by an item fires at the next
        # activation, after that activation's items.
        later: list[str] = []
        pairs: Any = groups.items()
        if self.ordered and len(groups) > 1:
            keys = sorted(groups)
            pairs = zip(keys, map(groups.__getitem__, keys), strict=True)
        for k, vs in pairs:
            logic = logics.get(k)
            if logic is None:
                if resting:  # a restored key, maybe (see `restore`)
                    logic = self._built(k)
                else:
                    try:
                        logic = builder(None)
                    except Exception as exc:
                        raise BytewaxRuntimeError(
                            f"error calling `builder` in step {self.shown} for key {quoted(k)}"
                        ) from exc
                logics[k] = logic
            try:
                ret = logic.on_batch(vs)
            except Exception as exc:
                raise user_error(calling("on_batch", self.shown, k), exc) from exc
            # The common path of `_apply`, inlined: this runs once per key per batch.
            if ret.__class__ is tuple and len(ret) == 2 and ret[0].__class__ in (list, tuple):
                outs, discard = ret
                if outs:
                    extend([(k, w) for w in outs])
                if dirty is not None:
                    dirty.add(k)
                if discard:
                    del logics[k]
                    self.timers.pop(k, None)
                elif _may_set_timers(logic):
                    later.append(k)
            else:
                extend(self._apply(k, logic, ret, "on_batch", later))
        self.activated = True
        if self.ttl is not None:
            self._touch(groups)
        if self.heap:
            self._notify_due(utcnow(), out, 1)
        for k in later:
            logic = logics.get(k)
            if logic is not None:
                self._schedule(k, logic)
        m = self.m
        if m is not None:
            dt = time.perf_counter() - t0
            m.inp.inc(n_in)
            m.out.inc(len(out))
            m.dur.observe(dt)
            m.busy.inc(dt)
        if out:
            self.push(out)

    def next_timer(self) -> datetime | None:
        heap = self.heap
        while heap:
            at, _, key = heap[0]
            if self.timers.get(key) == at:
                return at
            heapq.heappop(heap)
        return None

    def fire_timers(self, now: datetime) -> None:
        """An activation without items: notify the keys whose time has come."""
        if self.ttl is not None:
            self._expire(_clock())
        heap = self.heap
        if not heap or heap[0][0] > now:
            return
        out: list[Any] = []
        # A logic still due after on_notify is notified again (as Bytewax does),
        # in rounds; the bound keeps one that is always due from hanging the
        # worker: the rest waits for the next pass of the worker loop.
        self._notify_due(now, out, _MAX_TIMER_ROUNDS)
        if out:
            self.push(out)

    def _notify_due(self, now: datetime, out: list[Any], rounds: int) -> None:
        """Call `on_notify` of each key due at ``now``, in key order; outputs go to ``out``."""
        heap = self.heap
        if not heap or heap[0][0] > now:
            return
        t0 = time.perf_counter()
        for _round in range(rounds):
            if not heap or heap[0][0] > now:
                break
            due: list[str] = []
            while heap and heap[0][0] <= now:
                at, _, key = heapq.heappop(heap)
                if self.timers.get(key) == at:
                    del self.timers[key]
                    due.append(key)
            due.sort()
            for key in due:
                logic = self.logics.get(key)
                if logic is None:
                    continue
                try:
                    ret = logic.on_notify()
                except Exception as exc:
                    raise user_error(calling("on_notify", self.shown, key), exc) from exc
                out.extend(self._apply(key, logic, ret, "on_notify"))
        if self.m_notify is not None:
            self.m_notify.observe(time.perf_counter() - t0)

    def on_eof(self) -> None:
        """End of input: due timers fire, then every key's `on_eof`, in key order."""
        if self.ttl is not None:
            self._expire(_clock())
        out: list[Any] = []
        self._notify_due(utcnow(), out, 1)
        t0 = time.perf_counter()
        logics = self.logics
        for key in sorted(logics):
            logic = logics[key]
            if not _has_own_eof(logic):
                # The default on_eof emits nothing and keeps the state as it
                # is: don't re-snapshot every such key in the final epoch.
                continue
            try:
                ret = logic.on_eof()
            except Exception as exc:
                raise user_error(calling("on_eof", self.shown, key), exc) from exc
            out.extend(self._apply(key, logic, ret, "on_eof"))
        if self.m_eof is not None:
            self.m_eof.observe(time.perf_counter() - t0)
        if out:
            self.push(out)


class ReduceRun(StatefulRun):
    """A `reduce_final` step on one worker: each key's running value in one dict.

    What `StatefulRun` does with `_ReduceFinalLogic` objects, without them:
    the same left fold per key (keys of an activation in sorted order unless
    the reducer cannot print), the same snapshot bytes ``(True, value)``,
    and at end of input each key's value, in key order, then the key
    dropped. Each value sits in a one-item list (``cells[key][0]``), so a
    fold looks the key up once and replaces the value in place.
    """

    def __init__(self, step: CoreStep, metrics: WorkerMetrics | None, track: bool, trusted: bool) -> None:
        super().__init__(step, metrics, track, trusted)
        self.reducer = self.builder._headrace_reducer
        # Key -> [running value]. Fused chains hold this dict and `dirty`:
        # both are only ever changed in place.
        self.cells: dict[str, list[Any]] = {}
        # Keys restored from a `(False, None)` snapshot: present, no value yet.
        self.empty: set[str] = set()

    def target(self, count: bool) -> ReduceTarget:
        """What a chain needs to fold its items into this step itself (see `_fuse`)."""
        shown = self.shown

        def failed(key: str, exc: BaseException) -> BytewaxRuntimeError:
            return user_error(calling("on_batch", shown, key), exc)

        dirty = self.dirty if self.track else None
        return ReduceTarget(self.cells, self.reducer, failed, dirty, count)

    def restore(self, states: dict[str, bytes], key_groups: int = 0) -> None:
        cells = self.cells
        for key, blob in states.items():
            try:
                state = pickle.loads(blob)
                if state.__class__ is tuple and len(state) == 3 and state[0] == _TTL_TAG:
                    state = state[2]  # written under a ttl the step no longer has
                has, value = state
            except Exception as exc:
                raise self._unreadable(key, exc) from exc
            if has:
                cells[key] = [value]
            else:
                self.empty.add(key)

    def snapshot_batch(self, expire: bool = True) -> SnapshotBatch:
        batch = SnapshotBatch(self.step_id, self.shown, wrap=True)
        cells = self.cells
        shown = self.shown
        later, now = batch.later, batch.now
        atomic = _ATOMIC
        for key in self.dirty:
            cell = cells.get(key)
            if cell is not None:
                value = cell[0]
                cls = value.__class__
                if cls in atomic or (cls is tuple and _frozen(value)):
                    later.append((key, value))  # pickled later as (True, value)
                else:
                    now.append((key, _pickled(shown, key, (True, value))))
            elif key in self.empty:
                now.append((key, _pickled(shown, key, (False, None))))
            else:
                now.append((key, b""))
        self.dirty.clear()
        return batch

    def _process(self, groups: dict[str, list[Any]], n_in: int, t0: float) -> None:
        cells = self.cells
        reducer = self.reducer
        dirty = self.dirty if self.track else None
        pairs: Any = groups.items()
        if self.ordered and len(groups) > 1:
            keys = sorted(groups)
            pairs = zip(keys, map(groups.__getitem__, keys), strict=True)
        reduce = functools.reduce
        for k, vs in pairs:
            cell = cells.get(k)
            try:
                if cell is None:
                    cells[k] = [reduce(reducer, vs)]
                else:
                    cell[0] = reduce(reducer, vs, cell[0])
            except Exception as exc:
                raise user_error(calling("on_batch", self.shown, k), exc) from exc
            if dirty is not None:
                dirty.add(k)
        self.activated = True
        m = self.m
        if m is not None:
            dt = time.perf_counter() - t0
            m.inp.inc(n_in)
            m.out.inc(0)
            m.dur.observe(dt)
            m.busy.inc(dt)

    def on_eof(self) -> None:
        """End of input: every key's value, in key order; the keys are dropped."""
        t0 = time.perf_counter()
        cells = self.cells
        out = [(k, cells[k][0]) for k in sorted(cells)]
        if self.track:
            self.dirty.update(cells)
            self.dirty.update(self.empty)
        cells.clear()
        self.empty.clear()
        if self.m_eof is not None:
            self.m_eof.observe(time.perf_counter() - t0)
        if out:
            self.push(out)


# Values no later change can reach: a snapshot may keep them by reference
# and pickle them after the barrier (on the snapshot writer's thread).
_ATOMIC = frozenset({int, float, str, bytes, bool, type(None), complex, datetime})


def _frozen(state: Any) -> bool:
    """Whether ``state`` can't change after the barrier (atomic, or a tuple of atomics).

    >>> _frozen(3), _frozen((1, "a", None)), _frozen([1]), _frozen((1, [2]))
    (True, True, False, False)
    """
    cls = state.__class__
    if cls in _ATOMIC:
        return True
    if cls is tuple:
        atomic = _ATOMIC
        for x in state:
            if x.__class__ not in atomic:
                return False
        return True
    return False


class SnapshotBatch:
    """One step's changed keys of one epoch: pickled values, and values pickled by `entries`.

    The barrier fills it (`StatefulRun.snapshot_batch`); `entries` may run
    on another thread, since nothing in it changes any more.

    >>> b = SnapshotBatch("s", '"s"'); b.now.append(("a", b"")); b.later.append(("b", 7))
    >>> len(b), [(k, pickle.loads(v) if v else v) for _, _, k, v in b.entries(4)]
    (2, [('a', b''), ('b', 7)])
    """

    __slots__ = ("later", "now", "shown", "step_id", "wrap")

    def __init__(self, step_id: str, shown: str, wrap: bool = False) -> None:
        self.step_id = step_id
        self.shown = shown
        self.wrap = wrap  # `ReduceRun`'s form: each later value pickled as (True, value)
        self.now: list[tuple[str, bytes]] = []
        self.later: list[tuple[str, Any]] = []

    def __len__(self) -> int:
        return len(self.now) + len(self.later)

    def entries(self, groups: int) -> list[Entry]:
        """Every key's ``(step_id, key group, key, pickle)``."""
        step_id = self.step_id
        out: list[Entry] = [(step_id, key_group(k, groups), k, v) for k, v in self.now]
        later = self.later
        if later:
            dumps = functools.partial(pickle.dumps, protocol=pickle.HIGHEST_PROTOCOL)
            keys, values = zip(*later, strict=True)
            if self.wrap:
                values = tuple(zip(itertools.repeat(True), values))
            crc = zlib.crc32
            # `key_group`, inlined: this runs once per changed key.
            kgs = [crc(k.encode("utf-8", "surrogatepass")) % groups for k in keys]
            out.extend(zip(itertools.repeat(step_id), kgs, keys, map(dumps, values)))
        return out


def reduces_only(step: CoreStep) -> bool:
    """Whether `ReduceRun` can run ``step``: a `reduce_final` without a ttl.

    >>> from headrace._engine._plan import CoreStep
    >>> reduces_only(CoreStep("s", "stateful_batch", {"builder": lambda r: None}, [], {}))
    False
    """
    return step.conf.get("ttl") is None and hasattr(step.conf["builder"], "_headrace_reducer")


def pickle_state(shown: str, key: str, logic: Any, updated_at: float | None = None) -> bytes:
    """The snapshot of one key's logic (with its last update, under a ttl).

    >>> class L:
    ...     def snapshot(self): return 3
    >>> pickle.loads(pickle_state('"f.s"', "k", L()))
    3
    >>> pickle.loads(pickle_state('"f.s"', "k", L(), 1.5))
    ('headrace.ttl.v1', 1.5, 3)
    """
    try:
        state = logic.snapshot()
    except Exception as exc:
        raise user_error(calling("snapshot", shown, key), exc) from exc
    return _pickled(shown, key, state, updated_at)


def _pickled(shown: str, key: str, state: Any, updated_at: float | None = None) -> bytes:
    """``state`` as a key's snapshot; an unpicklable state fails in the user's words."""
    kind = type(state).__name__
    if updated_at is not None:
        state = (_TTL_TAG, updated_at, state)
    try:
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        msg = (
            f"state of key {quoted(key)} in step {shown} is a {kind}, which "
            f"can't be pickled for snapshots ({type(exc).__name__}: {exc}); keep plain "
            "data (dicts, lists, numbers, dataclasses) in state"
        )
        raise BytewaxRuntimeError(msg) from exc
