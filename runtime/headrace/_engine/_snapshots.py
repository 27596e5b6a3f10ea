"""Kept snapshots: a committed epoch's state copied under a name, apart from the live state.

Where this sits: beside the recovery stores, below nothing that runs a
dataflow. The worker loop never reads or writes kept snapshots; the admin
CLI (``python -m headrace.recovery snapshot|snapshots|restore``) and the
Kubernetes operator call `keep_snapshot`, `kept_snapshots`, `prune_snapshots` and
`restore_snapshot` on a store
opened with ``open_store``.

A kept snapshot is the state of every step (stateful steps' keys, source
and sink positions) as of one committed epoch, the base and the committed
deltas folded into one layer, with a record: name, epoch, time, size in
bytes, flow id, the steps that hold state, key groups. Where it lives:

- Redis: data under the dataflow's hash tag, ``hr{p}:snap:<id>:<step>:<group>``
  (one hash per step and key group, as the base), and the records in the
  hash ``hr{p}:snaps`` (name -> JSON);
- a recovery directory: rows of table ``hr_snap_data`` in the part that
  holds the same key group (or partition) live, and the records in table
  ``hr_snap`` of part 0.

The record is written last, once every row of its data is there, and it
names the data by a fresh id: a run of ``snapshot`` killed halfway leaves
data no record names, which is never listed or restored and is deleted by
a later ``snapshot`` or ``prune`` (after `ORPHAN_SECONDS`, so that a
snapshot being written meanwhile keeps its data). Deleting a snapshot
deletes its record first. The live state's reset (``delete``, the
operator's ``resetStateNonce``) keeps kept snapshots.

Taking a snapshot while the dataflow runs is consistent: Redis reads every
key in one ``MULTI`` under ``WATCH`` of the keys compaction changes (a fold
or a commit meanwhile: read again); a directory reads each part in one read
transaction and reads again if compaction passed the epoch meanwhile.

Restoring writes the snapshot as the compacted base of an empty store, with
a meta record saying that epoch is committed (and the manifest the integrity
checks compare with): in Redis in one ``MULTI`` (all or nothing); in a
directory one transaction per part, marked ``restoring`` until every part
has it, so a restore killed halfway is found (a start then stops with
`LostStateError`) and a new ``restore`` finishes it. The next run resumes
from that epoch, after the usual check that the stored steps match the flow
(`Store.check_flow`: refused naming the steps, unless allowed).

Size: ~820 lines, just over the ~800 mark: the three layouts (one Redis
node, a Redis Cluster, a recovery directory) of the same four operations
live side by side so they stay alike; the Redis Cluster branch is the part
to move out if it grows.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from headrace._engine import _redis_integrity as ri
from headrace._engine._integrity import MANIFEST_FIELD, dropped_steps, flow_state_steps, mismatch_message
from headrace._engine._plan import build_plan
from headrace._engine._sqlite_parts import _File, _transaction
from headrace._engine._sqlite_store import SqliteStore
from headrace._engine._store import RedisStore, open_store
from headrace._engine._store_base import PARTS, RecoveryStoreError, StateMismatchError, Store, _merge

if TYPE_CHECKING:
    import sqlite3

    from headrace.dataflow import Dataflow

# (step, group) -> key -> value; group is a key group number or "p", as a string.
State = dict[tuple[str, str], dict[str, bytes]]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# Data of a snapshot no record names is deleted once it is this old.
ORPHAN_SECONDS = 3600.0
_ATTEMPTS = 200
_CHUNK = 2000  # entries per Redis round trip


class SnapshotError(RecoveryStoreError):
    """A kept snapshot can't be taken, found or restored (the message says why and what to do).

    >>> issubclass(SnapshotError, RecoveryStoreError)
    True
    """


SnapshotError.__module__ = "headrace.recovery"


@dataclass(frozen=True)
class KeptSnapshot:
    """The record of a kept snapshot.

    >>> s = KeptSnapshot("nightly", 7, 0.0, 120, "wc", ("wc.count", "wc.lines"), 256, "wc")
    >>> KeptSnapshot.from_json(s.to_json()) == s
    True
    """

    name: str
    epoch: int
    taken_at: float
    size: int  # bytes of its keys and values
    flow_id: str
    steps: tuple[str, ...]
    key_groups: int
    prefix: str  # the dataflow (prefix) it was taken from
    entries: int = 0
    data_id: str = ""
    worker_count: int = 0
    groups: int = field(default=0)  # (step, group) hashes (Redis) or rows' groups

    def to_json(self) -> str:
        """The record as stored (JSON).

        >>> KeptSnapshot("n", 1, 0.0, 2, "f", ("s",), 8, "f").to_json()[:30]
        '{"data_id": "", "entries": 0, '
        """
        return json.dumps({**asdict(self), "steps": list(self.steps)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> KeptSnapshot:
        """A stored record (fields it does not know are left out).

        >>> KeptSnapshot.from_json('{"name": "n", "epoch": 1, "taken_at": 0, "size": 2, "flow_id": "f",'
        ...     ' "steps": ["s"], "key_groups": 8, "prefix": "f", "new": 1}').steps
        ('s',)
        """
        d = json.loads(text)
        d["steps"] = tuple(d.get("steps", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def check_name(name: str) -> str:
    """Return ``name`` if it can name a kept snapshot; else raise `ValueError`.

    >>> check_name("before-upgrade-3")
    'before-upgrade-3'
    >>> check_name("a b")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: snapshot name 'a b' is not allowed: ...
    """
    if not NAME_RE.fullmatch(name):
        msg = (
            f"snapshot name {name!r} is not allowed: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
        raise ValueError(msg)
    return name


def _data_id(now: float) -> str:
    return f"{int(now)}-{uuid.uuid4().hex[:12]}"


def _id_time(data_id: str) -> float:
    head = data_id.split("-", 1)[0]
    return float(head) if head.isdigit() else 0.0


def _size(state: State) -> tuple[int, int]:
    """Entries and bytes (keys and values) of a state."""
    return (
        sum(len(v) for v in state.values()),
        sum(len(k) + len(b) for v in state.values() for k, b in v.items()),
    )


def _steps(state: State) -> tuple[str, ...]:
    return tuple(sorted({s for (s, _), v in state.items() if v}))


# ---------------------------------------------------------------- Redis


def _rs(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _redis_committed(store: RedisStore) -> tuple[dict[str, str], State]:
    """The meta and the state as of the committed epoch, read in one transaction."""
    import redis

    if store.cluster:
        return _cluster_committed(store)
    r = store._r
    for _ in range(_ATTEMPTS):
        fields = ri.meta_fields(store)
        if not fields.get("committed_epoch") or fields["committed_epoch"] == "0":
            raise SnapshotError(f"{store.description} holds no committed epoch to keep")
        c, b = int(fields["committed_epoch"]), int(fields.get("base_epoch", 0))
        epochs = store._epochs(b + 1, c)
        deltas, bases, _ = ri._listings(store, epochs)
        watched = [store._k("bases"), *(store._k("e", e) for e in epochs), *bases]
        watched += [n for names in deltas for n in names]

        def read(
            watched: list[str] = watched,
            deltas: list[list[str]] = deltas,
            bases: list[str] = bases,
            c: int = c,
            b: int = b,
        ) -> list[Any] | None:
            with r.pipeline(transaction=True) as p:
                try:
                    p.watch(*watched)
                    # Read after the watch: a fold of an epoch past c needs a commit past c first.
                    now = p.hmget(store._k("meta"), "committed_epoch", "base_epoch")
                    if [int(_rs(x or b"0")) for x in now] != [c, b]:
                        return None
                    if sorted(map(_rs, p.smembers(store._k("bases")))) != bases:
                        return None
                    p.multi()
                    for n in bases:
                        p.hgetall(n)
                    for names in deltas:
                        for n in names:
                            p.hgetall(n)
                    return list(p.execute())
                except redis.WatchError:
                    return None

        got = store._retry("reading the committed state for a kept snapshot", read)
        if got is None:
            continue
        layers: dict[tuple[str, str], list[dict[str, bytes]]] = {}
        for name, raw in zip([*bases, *(n for names in deltas for n in names)], got, strict=True):
            layers.setdefault(ri.key_step(store, name), []).append({_rs(k): v for k, v in raw.items()})
        state = {sg: m for sg, ls in layers.items() if (m := _merge(ls))}
        return fields, state
    msg = (
        f"{store.description} changed under every one of {_ATTEMPTS} attempts to read its committed "
        "state (commits or compaction in between); try again"
    )
    raise SnapshotError(msg)


def _cluster_committed(store: RedisStore) -> tuple[dict[str, str], State]:
    """`_redis_committed` on a Redis Cluster, whose slots share no transaction.

    The committed state changes only when a compaction folds it, which marks
    the meta (``compacting``) before it starts and moves ``base_epoch`` when
    it ends: a read between two looks at the meta that saw neither is one
    epoch's state.
    """
    for _ in range(_ATTEMPTS):
        fields = ri.meta_fields(store)
        if not fields.get("committed_epoch") or fields["committed_epoch"] == "0":
            raise SnapshotError(f"{store.description} holds no committed epoch to keep")
        c, b = int(fields["committed_epoch"]), int(fields.get("base_epoch", 0))
        if fields.get("compacting"):
            time.sleep(0.01)
            continue
        deltas, bases, _ = ri._listings(store, store._epochs(b + 1, c))
        names = [*bases, *(n for ns in deltas for n in ns)]

        def read(names: list[str] = names) -> list[Any]:
            p = store._r.pipeline(transaction=False)
            for n in names:
                p.hgetall(n)
            return list(p.execute())

        got = store._retry("reading the committed state for a kept snapshot", read) if names else []
        now = ri.meta_fields(store)
        if now.get("compacting") or int(now.get("base_epoch", 0)) != b:
            continue
        layers: dict[tuple[str, str], list[dict[str, bytes]]] = {}
        for name, raw in zip(names, got, strict=True):
            layers.setdefault(ri.key_step(store, name), []).append({_rs(k): v for k, v in raw.items()})
        return fields, {sg: m for sg, ls in layers.items() if (m := _merge(ls))}
    msg = f"{store.description} was compacting under every one of {_ATTEMPTS} attempts to read it; try again"
    raise SnapshotError(msg)


class _RedisKept:
    def __init__(self, store: RedisStore) -> None:
        self.s = store

    def _data(self, data_id: str, step: str, group: str) -> str:
        return self.s._k("snap", data_id, step, group)

    def records(self) -> dict[str, KeptSnapshot]:
        raw = self.s._retry("listing kept snapshots", lambda: self.s._r.hgetall(self.s._k("snaps")))
        return {_rs(k): KeptSnapshot.from_json(v) for k, v in raw.items()}

    def write(self, rec: KeptSnapshot, state: State) -> None:
        items = [(self._data(rec.data_id, s, g), k, v) for (s, g), m in state.items() for k, v in m.items()]
        for i in range(0, len(items), _CHUNK):
            chunk = items[i : i + _CHUNK]

            def put(chunk: list[tuple[str, str, bytes]] = chunk) -> None:
                p = self.s._r.pipeline(transaction=False)
                for name, k, v in chunk:
                    p.hset(name, k, v)
                p.execute()

            self.s._retry(f"writing kept snapshot {rec.name!r}", put)
        # The record last: a snapshot is listed once all of it is there.
        self.s._retry(
            f"recording kept snapshot {rec.name!r}",
            lambda: self.s._r.hset(self.s._k("snaps"), rec.name, rec.to_json()),
        )

    def _scan(self, pattern: str) -> list[str]:
        esc = re.sub(r"([*?\[\]\\])", r"\\\1", pattern)
        return list(self.s._scan_keys(esc + "*"))

    def read(self, rec: KeptSnapshot) -> State:
        names = sorted(self._scan(self.s._k("snap", rec.data_id) + ":"))

        def get() -> list[Any]:
            p = self.s._r.pipeline(transaction=False)
            for n in names:
                p.hgetall(n)
            return list(p.execute())

        got = self.s._retry(f"reading kept snapshot {rec.name!r}", get) if names else []
        head = len(self.s._k("snap", rec.data_id)) + 1
        state: State = {}
        for n, raw in zip(names, got, strict=True):
            step, _, group = n[head:].rpartition(":")
            state[(step, group)] = {_rs(k): v for k, v in raw.items()}
        return state

    def forget(self, rec: KeptSnapshot) -> None:
        self.s._retry("deleting a kept snapshot", lambda: self.s._r.hdel(self.s._k("snaps"), rec.name))
        self._drop_data([rec.data_id])

    def _drop_data(self, ids: Iterable[str]) -> None:
        for data_id in ids:
            names = self._scan(self.s._k("snap", data_id) + ":")
            for i in range(0, len(names), 500):
                self.s._retry("deleting kept snapshot data", partial(self.s._r.delete, *names[i : i + 500]))

    def sweep(self, now: float) -> int:
        named = {r.data_id for r in self.records().values()}
        head = len(self.s._k("snap")) + 1
        ids = {n[head:].split(":", 1)[0] for n in self._scan(self.s._k("snap") + ":")}
        orphans = [i for i in ids if i not in named and now - _id_time(i) > ORPHAN_SECONDS]
        self._drop_data(orphans)
        return len(orphans)

    def restore(self, rec: KeptSnapshot, state: State, meta: dict[str, str]) -> None:
        import redis

        s = self.s
        if s.cluster:
            from headrace._engine._store import RedisClusterStore

            assert isinstance(s, RedisClusterStore)
            if not s.restore_bases(rec.name, state, meta):
                raise SnapshotError(_not_empty(s))
            return
        names = {(st, g): s._k("b", st, g) for (st, g), m in state.items() if m}

        def write() -> bool:
            with s._r.pipeline(transaction=True) as p:
                try:
                    p.watch(s._k("meta"), s._k("bases"), s._k("epochs"))
                    if p.exists(s._k("meta"), s._k("bases"), s._k("epochs")):
                        return False
                    p.multi()
                    for sg, name in names.items():
                        p.hset(name, mapping=state[sg])
                    if names:
                        p.sadd(s._k("bases"), *names.values())
                    p.hset(s._k("meta"), mapping=meta)
                    p.execute()
                    return True
                except redis.WatchError:
                    return False

        if ri.leftovers(s, limit=1) or not s._retry(f"restoring kept snapshot {rec.name!r}", write):
            raise SnapshotError(_not_empty(s))


# ---------------------------------------------------------------- a recovery directory

_SNAP_SCHEMA = """
CREATE TABLE IF NOT EXISTS hr_snap (flow TEXT NOT NULL, name TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (flow, name));
CREATE TABLE IF NOT EXISTS hr_snap_data (flow TEXT NOT NULL, id TEXT NOT NULL, step TEXT NOT NULL,
    grp TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (flow, id, step, grp, key));
"""


def _part_committed(f: _File, c: sqlite3.Connection, epoch: int) -> State | None:
    """One part's state as of ``epoch`` inside a read transaction (None: compacted past it)."""
    meta = dict(c.execute(f"SELECT k, v FROM {f.m} WHERE {f.w}1", f.a))
    base = int(meta.get("base_epoch", 0))
    if base > epoch:
        return None
    layers: dict[tuple[str, str], list[dict[str, bytes]]] = {}
    for step, grp, key, value in c.execute(f"SELECT step, grp, key, value FROM {f.b} WHERE {f.w}1", f.a):
        layers.setdefault((step, grp), [{}])[0][key] = value
    for step, grp, key, value in c.execute(
        f"SELECT step, grp, key, value FROM {f.d} WHERE {f.w}epoch > ? AND epoch <= ? ORDER BY epoch",
        (*f.a, base, epoch),
    ):
        layers.setdefault((step, grp), [{}]).append({key: value})
    return {sg: _merge(ls) for sg, ls in layers.items()}


def _sqlite_committed(store: SqliteStore) -> tuple[dict[str, str], State]:
    for _ in range(_ATTEMPTS):
        meta = store.load_meta()
        if meta is None or not meta.committed_epoch:
            raise SnapshotError(f"{store.description} holds no committed epoch to keep")
        state: State = {}
        for f in store.files:
            c = f.conn()
            c.execute("BEGIN")
            try:
                part = _part_committed(f, c, meta.committed_epoch)
            finally:
                c.execute("COMMIT")
            if part is None:
                break
            for sg, m in part.items():
                state.setdefault(sg, {}).update(m)
        else:
            fields = {**store.files[0].meta(), **{k: str(v) for k, v in asdict(meta).items() if k != "extra"}}
            return fields, {sg: m for sg, m in state.items() if m}
    msg = f"{store.description} compacted past every epoch read in {_ATTEMPTS} attempts; try again"
    raise SnapshotError(msg)


class _SqliteKept:
    def __init__(self, store: SqliteStore) -> None:
        self.s = store
        self.flow = store.prefix
        for f in store.files:
            f.conn().executescript(_SNAP_SCHEMA)

    def records(self) -> dict[str, KeptSnapshot]:
        rows = self.s.files[0].conn().execute("SELECT name, record FROM hr_snap WHERE flow=?", (self.flow,))
        return {n: KeptSnapshot.from_json(r) for n, r in rows}

    def write(self, rec: KeptSnapshot, state: State) -> None:
        by_file: dict[int, list[tuple[str, str, str, bytes]]] = {}
        for (step, grp), m in state.items():
            g: int | str = grp if grp == PARTS else int(grp)
            for k, v in m.items():
                by_file.setdefault(self.s._index_of(step, g, k), []).append((step, grp, k, v))
        for i, rows in sorted(by_file.items()):
            with _transaction(self.s.files[i].conn()) as c:
                c.executemany(
                    "INSERT OR REPLACE INTO hr_snap_data (flow, id, step, grp, key, value) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(self.flow, rec.data_id, *row) for row in rows],
                )
        # The record last: a snapshot is listed once all of it is there.
        with _transaction(self.s.files[0].conn()) as c:
            c.execute(
                "INSERT INTO hr_snap (flow, name, record) VALUES (?, ?, ?)",
                (self.flow, rec.name, rec.to_json()),
            )

    def read(self, rec: KeptSnapshot) -> State:
        state: State = {}
        for f in self.s.files:
            for step, grp, k, v in f.conn().execute(
                "SELECT step, grp, key, value FROM hr_snap_data WHERE flow=? AND id=?",
                (self.flow, rec.data_id),
            ):
                state.setdefault((step, grp), {})[k] = v
        return state

    def forget(self, rec: KeptSnapshot) -> None:
        with _transaction(self.s.files[0].conn()) as c:
            c.execute("DELETE FROM hr_snap WHERE flow=? AND name=?", (self.flow, rec.name))
        self._drop_data([rec.data_id])

    def _drop_data(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        for f in self.s.files:
            with _transaction(f.conn()) as c:
                c.executemany("DELETE FROM hr_snap_data WHERE flow=? AND id=?", [(self.flow, i) for i in ids])

    def sweep(self, now: float) -> int:
        named = {r.data_id for r in self.records().values()}
        ids: set[str] = set()
        for f in self.s.files:
            ids |= {
                i
                for (i,) in f.conn().execute(
                    "SELECT DISTINCT id FROM hr_snap_data WHERE flow=?", (self.flow,)
                )
            }
        orphans = [i for i in ids if i not in named and now - _id_time(i) > ORPHAN_SECONDS]
        if orphans:
            self._drop_data(orphans)
        return len(orphans)

    def _half_restored(self) -> bool:
        metas = [f.meta() for f in self.s.files]
        return any("restoring" in m for m in metas) and not any("execution_id" in m for m in metas)

    def restore(self, rec: KeptSnapshot, state: State, meta: dict[str, str]) -> None:
        s = self.s
        if self._half_restored():
            s.delete_all()  # a restore killed halfway: done again from the start
        if any(f.meta() for f in s.files) or any(f.has_rows() for f in s.files):
            raise SnapshotError(_not_empty(s))
        by_file: dict[int, list[tuple[str, str, str, bytes]]] = {i: [] for i in range(len(s.files))}
        for (step, grp), m in state.items():
            g: int | str = grp if grp == PARTS else int(grp)
            for k, v in m.items():
                by_file[s._index_of(step, g, k)].append((step, grp, k, v))
        for i, rows in by_file.items():
            f = s.files[i]
            counts: dict[str, int] = {}
            for step, *_ in rows:
                counts[step] = counts.get(step, 0) + 1
            with _transaction(f.conn()) as c:
                c.executemany(
                    f"INSERT INTO {f.b} ({f.col}step, grp, key, value) VALUES ({f.q}?, ?, ?, ?)",
                    [(*f.a, *row) for row in rows],
                )
                f.set_meta(
                    c, {**meta, **{f"b:{st}": str(n) for st, n in counts.items()}, "restoring": rec.name}
                )
        for f in s.files:  # every part has it: the restore is done
            with _transaction(f.conn()) as c:
                f._del_meta(c, ["restoring"])


# ---------------------------------------------------------------- the operations


def flow_steps(flow: Dataflow) -> tuple[str, list[str]]:
    """A dataflow's id and the ids of its steps that may hold state (what a store checks).

    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSink, TestingSource
    >>> f = Dataflow("wc"); s = op.input("in", f, TestingSource([("a", 1)]))
    >>> op.output("out", op.stateful_map("sum", s, lambda st, v: (v, v)), TestingSink([]))
    >>> flow_steps(f)
    ('wc', ['wc.in', 'wc.out', 'wc.sum.stateful_batch'])
    """
    plan = build_plan(flow)
    return plan.flow_id, flow_state_steps((s.step_id, s.kind) for s in plan.steps)


def _keeper(store: Store) -> _RedisKept | _SqliteKept:
    if isinstance(store, RedisStore):
        return _RedisKept(store)
    if isinstance(store, SqliteStore):
        return _SqliteKept(store)
    msg = f"kept snapshots need a Redis or directory store, not {type(store).__name__}"
    raise TypeError(msg)


def _not_empty(store: Store) -> str:
    return (
        f"{store.description} is not empty: a snapshot is restored into a store that holds no "
        "state of the dataflow (a new prefix, or one reset with "
        f"{store.reset_hint()}, which keeps kept snapshots)"
    )


def committed_state(store: Store) -> tuple[dict[str, str], State]:
    """The store's meta fields and its state as of the committed epoch, read consistently.

    >>> import tempfile
    >>> from headrace.recovery import init_db_dir
    >>> from headrace._engine import open_store
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 2)
    >>> s = open_store(d, "f"); _ = s.start_execution(1, 4)
    >>> _ = s.write_epoch(1, [("st", 1, "k", b"1"), ("st", 2, "j", b"2")]); s.commit(1, 1)
    >>> _ = s.write_epoch(2, [("st", 1, "k", b"")]); s.commit(2, 1)
    >>> meta, state = committed_state(s); meta["committed_epoch"], state
    ('2', {('st', '2'): {'j': b'2'}})
    """
    if isinstance(store, RedisStore):
        return _redis_committed(store)
    if isinstance(store, SqliteStore):
        return _sqlite_committed(store)
    msg = f"kept snapshots need a Redis or directory store, not {type(store).__name__}"
    raise TypeError(msg)


def kept_snapshots(store: Store) -> list[KeptSnapshot]:
    """The store's kept snapshots, oldest first.

    >>> import tempfile
    >>> from headrace.recovery import init_db_dir
    >>> from headrace._engine import open_store
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 1)
    >>> kept_snapshots(open_store(d, "f"))
    []
    """
    return sorted(_keeper(store).records().values(), key=lambda r: (r.taken_at, r.epoch, r.name))


def keep_snapshot(store: Store, name: str, now: float | None = None) -> KeptSnapshot:
    """Keep the committed epoch's state under ``name``; return its record.

    >>> import tempfile
    >>> from headrace.recovery import init_db_dir
    >>> from headrace._engine import open_store
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 2)
    >>> s = open_store(d, "f"); _ = s.start_execution(1, 4); s.check_flow("f", ["st"])
    []
    >>> _ = s.write_epoch(1, [("st", 1, "k", b"1")]); s.commit(1, 1)
    >>> r = keep_snapshot(s, "one", now=100.0); (r.name, r.epoch, r.size, r.steps, r.flow_id)
    ('one', 1, 2, ('st',), 'f')
    >>> keep_snapshot(s, "one")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    headrace.recovery.SnapshotError: a kept snapshot named 'one' already exists in ...
    """
    check_name(name)
    now = time.time() if now is None else now
    keeper = _keeper(store)
    if name in keeper.records():
        msg = (
            f"a kept snapshot named {name!r} already exists in {store.description}; choose "
            "another name, or delete that one first"
        )
        raise SnapshotError(msg)
    keeper.sweep(now)
    fields, state = committed_state(store)
    entries, size = _size(state)
    rec = KeptSnapshot(
        name=name,
        epoch=int(fields["committed_epoch"]),
        taken_at=now,
        size=size,
        flow_id=fields.get("flow_id", ""),
        steps=_steps(state),
        key_groups=int(fields.get("key_groups", 0)),
        prefix=str(getattr(store, "prefix", "")),
        entries=entries,
        data_id=_data_id(now),
        worker_count=int(fields.get("worker_count", 0)),
        groups=len(state),
    )
    keeper.write(rec, state)
    return rec


def forget_snapshot(store: Store, name: str) -> KeptSnapshot:
    """Delete the kept snapshot ``name`` (its record first); return its record.

    >>> import tempfile
    >>> from headrace.recovery import init_db_dir
    >>> from headrace._engine import open_store
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 1)
    >>> forget_snapshot(open_store(d, "f"), "nope")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    headrace.recovery.SnapshotError: no kept snapshot named 'nope' in ...
    """
    keeper = _keeper(store)
    rec = keeper.records().get(name)
    if rec is None:
        raise SnapshotError(_no_such(store, name))
    keeper.forget(rec)
    return rec


def _no_such(store: Store, name: str) -> str:
    have = ", ".join(repr(r.name) for r in kept_snapshots(store)) or "none"
    return f"no kept snapshot named {name!r} in {store.description} (kept: {have})"


def prune_snapshots(
    store: Store, keep: int | None = None, max_age: float | None = None, now: float | None = None
) -> list[str]:
    """Delete kept snapshots beyond the ``keep`` newest or older than ``max_age`` seconds.

    The newest one is never deleted. Returns the names deleted, oldest first.

    >>> import tempfile
    >>> from headrace.recovery import init_db_dir
    >>> from headrace._engine import open_store
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 1)
    >>> s = open_store(d, "f"); _ = s.start_execution(1, 4)
    >>> _ = s.write_epoch(1, [("st", 1, "k", b"1")]); s.commit(1, 1)
    >>> for i in range(4): _ = keep_snapshot(s, f"s{i}", now=100.0 + i)
    >>> prune_snapshots(s, keep=2, now=104.0), [r.name for r in kept_snapshots(s)]
    (['s0', 's1'], ['s2', 's3'])
    >>> prune_snapshots(s, max_age=0.5, now=1000.0), [r.name for r in kept_snapshots(s)]
    (['s2'], ['s3'])
    """
    if keep is not None and keep < 1:
        msg = f"keep must be 1 or more (the newest snapshot is never deleted); got {keep}"
        raise ValueError(msg)
    now = time.time() if now is None else now
    records = kept_snapshots(store)
    doomed: list[KeptSnapshot] = []
    for i, rec in enumerate(records[:-1]):  # never the newest
        newer = len(records) - 1 - i
        if (keep is not None and newer >= keep) or (max_age is not None and now - rec.taken_at > max_age):
            doomed.append(rec)
    keeper = _keeper(store)
    for rec in doomed:
        keeper.forget(rec)
    keeper.sweep(now)
    return [r.name for r in doomed]


def restore_snapshot(
    store: Store,
    name: str,
    source: Store | None = None,
    flow: tuple[str, list[str]] | None = None,
    allow_dropped: bool = False,
) -> KeptSnapshot:
    """Make kept snapshot ``name`` (of ``source``, default ``store``) the committed state of ``store``.

    ``store`` must hold no live state of its dataflow. ``flow`` is the flow id
    and state steps of the dataflow that will run: a snapshot with state of
    steps it does not have, or of another flow, is refused naming them
    (`StateMismatchError`) unless ``allow_dropped``, which leaves that state
    out. Without ``flow`` the same check happens when the dataflow starts.

    >>> import tempfile
    >>> from headrace.recovery import init_db_dir
    >>> from headrace._engine import open_store
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 2)
    >>> s = open_store(d, "f"); _ = s.start_execution(1, 4)
    >>> _ = s.write_epoch(1, [("st", 1, "k", b"1")]); s.commit(1, 1)
    >>> _ = keep_snapshot(s, "one"); s.release(); _ = s.delete_all()
    >>> restore_snapshot(s, "one", flow=("f", ["other"]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    headrace.recovery.StateMismatchError: kept snapshot 'one' ... holds state of steps 'st' ...
    >>> restore_snapshot(s, "one").epoch, s.load_meta().committed_epoch, s.load("st", [1])
    (1, 1, {1: {'k': b'1'}})
    """
    src = store if source is None else source
    rec = _keeper(src).records().get(name)
    if rec is None:
        raise SnapshotError(_no_such(src, name))
    state = _keeper(src).read(rec)
    entries, size = _size(state)
    if (entries, size) != (rec.entries, rec.size):
        msg = (
            f"kept snapshot {name!r} of {src.description} is damaged: its record says "
            f"{rec.entries} entries ({rec.size} bytes), its data holds {entries} ({size} bytes); "
            "it can't be restored"
        )
        raise SnapshotError(msg)
    flow_id = rec.flow_id
    if flow is not None:
        flow_id, steps = flow
        dropped = dropped_steps(rec.steps, steps)
        why = mismatch_message(
            f"kept snapshot {name!r} of {src.description}",
            flow_id,
            rec.flow_id,
            dropped,
            sorted(steps),
            store.reset_hint(),
        )
        if why is not None and not allow_dropped:
            raise StateMismatchError(why)
        state = {sg: m for sg, m in state.items() if sg[0] not in dropped}
    meta = {
        "committed_epoch": str(rec.epoch),
        "base_epoch": str(rec.epoch),
        "key_groups": str(rec.key_groups),
        "worker_count": str(rec.worker_count),
        "committed_at": repr(rec.taken_at),
        "epoch_bytes": "0",
        "flow_id": flow_id,
        "steps": json.dumps(sorted(_steps(state))),
        "restored_from": f"{rec.prefix}/{rec.name}",
        MANIFEST_FIELD: "1",
    }
    if isinstance(store, RedisStore):
        meta["base_keys"] = str(sum(1 for m in state.values() if m))
        meta["base_fields"] = str(_size(state)[0])
    _keeper(store).restore(rec, state, meta)
    return rec


def stored_prefixes(location: str) -> list[str]:
    """The prefixes (dataflows) at ``location`` that hold live state or kept snapshots.

    >>> import tempfile
    >>> from headrace.recovery import init_db_dir
    >>> from headrace._engine import open_store
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 2)
    >>> s = open_store(d, "wc"); _ = s.start_execution(1, 4); stored_prefixes(d)
    ['wc']
    """
    from pathlib import Path

    from headrace._engine._sqlite_parts import PART_RE, _connect, scan_parts
    from headrace._engine._store_checks import REDIS_SCHEMES, check_location

    found: set[str] = set()
    if check_location(location).startswith(REDIS_SCHEMES):
        store = open_store(location, "*", retry_for=5.0)
        assert isinstance(store, RedisStore)
        try:
            for pattern in ("hr{*}:meta", "hr{*}:snaps"):
                found |= {k[3:].rpartition("}:")[0] for k in store._scan_keys(pattern)}
        finally:
            store.close()
        return sorted(found)
    d = Path(location)
    parts = scan_parts(d)[1] if any(PART_RE.fullmatch(p.name) for p in d.iterdir()) else {}
    if parts:
        c = _connect(parts[0])
        try:
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            found |= {f for (f,) in c.execute("SELECT DISTINCT flow FROM hr_meta")}
            if "hr_snap" in tables:
                found |= {f for (f,) in c.execute("SELECT DISTINCT flow FROM hr_snap")}
        finally:
            c.close()
    found |= {p.stem for p in d.glob("*.sqlite3") if not PART_RE.fullmatch(p.name)}
    return sorted(found)
