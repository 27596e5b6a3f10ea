"""The part files of a local recovery directory: their layout, how they are made, one file.

``init_db_dir(dir, N)`` (or ``python -m headrace.recovery DIR N``) makes
``part-0.sqlite3`` ... ``part-{N-1}.sqlite3``. Each part is a SQLite
database whose ``hr_part`` table records the format, its index, the part
count N and an id shared by the N parts of one ``init``. Every flow using
the directory keeps its rows in every part, keyed by its prefix (the flow
id), in ``hr_meta``, ``hr_delta`` and ``hr_base``: the data model of
``_store.py`` (per-epoch deltas, a compacted base), spread over the parts.
Key group ``g`` lives in part ``g % N``; a source or sink partition's
position in part ``crc32(step, partition) % N``.

`init_parts` makes the files, `scan_parts` finds and checks them, and a
`_File` reads and writes one of them (its fencing checked by `_Fence`
in the same transaction as the writes it guards). `_sqlite_store.SqliteStore`
spreads one flow's snapshots over them.

Layout errors, found when the store opens (so on every process of a
cluster, before it starts): no ``part-*.sqlite3`` files ->
``NoPartitionsError``; fewer than N -> ``MissingPartitionsError``; parts of
different inits or counts, a renamed part -> ``InconsistentPartitionsError``;
a file that is not a Headrace part (a Bytewax one, not SQLite at all) ->
``RecoveryStoreError``.

Legacy layout: Headrace before part files kept one file
``<dir>/<prefix>.sqlite3`` per flow (tables ``meta``, ``delta``, ``base``
without a flow column). When that file exists it is used as a one-part
store, so existing state is not lost.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from headrace._engine import _integrity as ig
from headrace._engine._integrity import MANIFEST_FIELD, Layer
from headrace._engine._store_base import (
    Entry,
    FencedError,
    InconsistentPartitionsError,
    LostStateError,
    MissingPartitionsError,
    NoPartitionsError,
    RecoveryStoreError,
    fenced_message,
)

FORMAT = "headrace-recovery-part"
VERSION = "1"
PART_RE = re.compile(r"part-(\d+)\.sqlite3")

_PART_SCHEMA = """
CREATE TABLE IF NOT EXISTS hr_part (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hr_meta (
    flow TEXT NOT NULL, k TEXT NOT NULL, v TEXT NOT NULL, PRIMARY KEY (flow, k));
CREATE TABLE IF NOT EXISTS hr_delta (
    flow TEXT NOT NULL, epoch INTEGER NOT NULL, step TEXT NOT NULL, grp TEXT NOT NULL,
    key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (flow, step, grp, epoch, key));
CREATE TABLE IF NOT EXISTS hr_base (
    flow TEXT NOT NULL, step TEXT NOT NULL, grp TEXT NOT NULL, key TEXT NOT NULL,
    value BLOB NOT NULL, PRIMARY KEY (flow, step, grp, key));
"""

# Headrace's layout before part files: one file per flow.
_LEGACY_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS delta (
    epoch INTEGER NOT NULL, step TEXT NOT NULL, grp TEXT NOT NULL, key TEXT NOT NULL,
    value BLOB NOT NULL, PRIMARY KEY (step, grp, epoch, key));
CREATE TABLE IF NOT EXISTS base (
    step TEXT NOT NULL, grp TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (step, grp, key));
"""


def part_name(index: int) -> str:
    """The file name of part ``index``.

    >>> part_name(2)
    'part-2.sqlite3'
    """
    return f"part-{index}.sqlite3"


def _init_hint(directory: Path) -> str:
    return (
        f"run `python -m headrace.recovery {directory} N` (or "
        f"init_db_dir({str(directory)!r}, N)) first to create N partitions"
    )


def _names(indexes: Iterable[int]) -> str:
    return ", ".join(part_name(i) for i in sorted(indexes))


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=60, isolation_level=None)


@contextlib.contextmanager
def _transaction(c: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    c.execute("BEGIN IMMEDIATE")
    try:
        yield c
    except BaseException:
        c.execute("ROLLBACK")
        raise
    c.execute("COMMIT")


# ---------------------------------------------------------------- one file


class _File:
    """One flow's rows in one SQLite file: a part (``flow`` set) or a legacy file."""

    def __init__(self, path: Path, flow: str | None) -> None:
        self.path = path
        self._local = threading.local()
        self.a: tuple[str, ...]
        if flow is None:  # legacy file: no flow column
            self.m, self.d, self.b = "meta", "delta", "base"
            self.w, self.a, self.col, self.q = "", (), "", ""
        else:
            self.m, self.d, self.b = "hr_meta", "hr_delta", "hr_base"
            self.w, self.a, self.col, self.q = "flow=? AND ", (flow,), "flow, ", "?, "

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def meta(self) -> dict[str, str]:
        return dict(self.conn().execute(f"SELECT k, v FROM {self.m} WHERE {self.w}1", self.a))

    def set_meta(self, c: sqlite3.Connection, fields: dict[str, str]) -> None:
        c.executemany(
            f"INSERT OR REPLACE INTO {self.m} ({self.col}k, v) VALUES ({self.q}?, ?)",
            [(*self.a, k, v) for k, v in fields.items()],
        )

    def epoch_of(self, name: str) -> int:
        row = self.conn().execute(f"SELECT v FROM {self.m} WHERE {self.w}k=?", (*self.a, name)).fetchone()
        return int(row[0]) if row else 0

    def owner_in(self, c: sqlite3.Connection) -> str:
        """The execution id this part names (read inside the caller's transaction)."""
        row = c.execute(f"SELECT v FROM {self.m} WHERE {self.w}k='execution_id'", self.a).fetchone()
        return str(row[0]) if row else ""

    def write(self, epoch: int, rows: list[Entry], fence: _Fence | None = None) -> None:
        with _transaction(self.conn()) as c:
            if fence is not None:
                fence.check(self, c, f"writing the snapshot of epoch {epoch}")
            c.executemany(
                f"INSERT OR REPLACE INTO {self.d} ({self.col}epoch, step, grp, key, value) "
                f"VALUES ({self.q}?, ?, ?, ?, ?)",
                [(*self.a, epoch, s, str(g), k, v) for s, g, k, v in rows],
            )
            # The manifest, in the same transaction: rows per (epoch, step). A
            # worker writes its entries of an epoch in one call, workers never
            # the same ones.
            per_step: dict[str, int] = {}
            for s, _ in {(s, (g, k)) for s, g, k, _ in rows}:
                per_step[s] = per_step.get(s, 0) + 1
            c.executemany(
                f"INSERT INTO {self.m} ({self.col}k, v) VALUES ({self.q}?, ?) ON CONFLICT "
                f"({self.col}k) DO UPDATE SET v = CAST(v AS INTEGER) + CAST(excluded.v AS INTEGER)",
                [(*self.a, f"f:{epoch}:{s}", str(n)) for s, n in per_step.items()],
            )

    def _manifest_keys(self, c: sqlite3.Connection, keep: Any) -> list[str]:
        """The ``f:<epoch>:<step>`` fields of epochs for which ``keep(epoch)`` is false."""
        out = []
        for (k,) in c.execute(f"SELECT k FROM {self.m} WHERE {self.w}k LIKE 'f:%'", self.a):
            e = k.split(":", 2)[1]
            if e.isdigit() and not keep(int(e)):
                out.append(k)
        return out

    def _del_meta(self, c: sqlite3.Connection, keys: list[str]) -> None:
        c.executemany(f"DELETE FROM {self.m} WHERE {self.w}k=?", [(*self.a, k) for k in keys])

    def start(self, resume: int, fields: dict[str, str]) -> None:
        """Drop deltas above ``resume``, roll the committed epoch back to it, record a run."""
        with _transaction(self.conn()) as c:
            c.execute(f"DELETE FROM {self.d} WHERE {self.w}epoch > ?", (*self.a, resume))
            self._del_meta(c, self._manifest_keys(c, lambda e: e <= resume))
            self.set_meta(c, {**fields, "committed_epoch": str(resume)})

    def has_rows(self) -> int:
        """How many delta and base rows this part holds for the flow."""
        return sum(
            self.conn().execute(f"SELECT COUNT(*) FROM {t} WHERE {self.w}1", self.a).fetchone()[0]
            for t in (self.d, self.b)
        )

    def layers(self, c: sqlite3.Connection, upto: int) -> list[Layer]:
        """What this part's manifest recorded up to epoch ``upto``, against what is there."""
        meta = dict(c.execute(f"SELECT k, v FROM {self.m} WHERE {self.w}1", self.a))
        if MANIFEST_FIELD not in meta:
            return []  # written by an older Headrace: rebuilt at the next start
        base = int(meta.get("base_epoch", 0))
        deltas = {
            (int(e), s): n
            for e, s, n in c.execute(
                f"SELECT epoch, step, COUNT(*) FROM {self.d} WHERE {self.w}epoch > ? AND epoch <= ? "
                "GROUP BY epoch, step",
                (*self.a, base, upto),
            )
        }
        bases = dict(c.execute(f"SELECT step, COUNT(*) FROM {self.b} WHERE {self.w}1 GROUP BY step", self.a))
        out = []
        for k, v in sorted(meta.items()):
            if k.startswith("f:"):
                _, e, step = k.split(":", 2)
                if e.isdigit() and base < int(e) <= upto:
                    out.append(
                        Layer(
                            f"{self.path.name}: the snapshot of epoch {e} of step {step!r}",
                            int(v),
                            deltas.get((int(e), step), 0),
                            unit="rows",
                        )
                    )
            elif k.startswith("b:"):
                out.append(
                    Layer(
                        f"{self.path.name}: the compacted base of step {k[2:]!r}",
                        int(v),
                        bases.get(k[2:], 0),
                        unit="rows",
                    )
                )
        return out

    def rebuild(self) -> None:
        """Count what is there and record it as the manifest (an older store; dropped steps)."""
        with _transaction(self.conn()) as c:
            old = [
                k
                for (k,) in c.execute(
                    f"SELECT k FROM {self.m} WHERE {self.w}(k LIKE 'f:%' OR k LIKE 'b:%')", self.a
                )
            ]
            self._del_meta(c, old)
            fields = {
                f"f:{e}:{s}": str(n)
                for e, s, n in c.execute(
                    f"SELECT epoch, step, COUNT(*) FROM {self.d} WHERE {self.w}1 GROUP BY epoch, step", self.a
                )
            }
            fields.update(
                {
                    f"b:{s}": str(n)
                    for s, n in c.execute(
                        f"SELECT step, COUNT(*) FROM {self.b} WHERE {self.w}1 GROUP BY step", self.a
                    )
                }
            )
            self.set_meta(c, {**fields, MANIFEST_FIELD: "1"})

    def steps_upto(self, committed: int) -> set[str]:
        """The steps with committed state in this part."""
        return {
            s
            for (s,) in self.conn().execute(
                f"SELECT DISTINCT step FROM {self.b} WHERE {self.w}1 UNION "
                f"SELECT DISTINCT step FROM {self.d} WHERE {self.w}epoch <= ?",
                (*self.a, *self.a, committed),
            )
        }

    def drop(self, steps: list[str]) -> None:
        """Delete the rows of ``steps``, then recount the manifest."""
        with _transaction(self.conn()) as c:
            for t in (self.d, self.b):
                c.executemany(f"DELETE FROM {t} WHERE {self.w}step=?", [(*self.a, s) for s in steps])
        if MANIFEST_FIELD in self.meta():
            self.rebuild()

    def load(self, step: str, grp: str, committed: int) -> dict[str, bytes]:
        # The base, then every delta row in epoch order, each over the last
        # (C loops: a resume reads a million rows); tombstones go at the end.
        c = self.conn()
        base = self.epoch_of("base_epoch")
        out = dict(
            c.execute(f"SELECT key, value FROM {self.b} WHERE {self.w}step=? AND grp=?", (*self.a, step, grp))
        )
        out.update(
            c.execute(
                f"SELECT key, value FROM {self.d} WHERE {self.w}step=? AND grp=? AND epoch > ? "
                "AND epoch <= ? ORDER BY epoch",
                (*self.a, step, grp, base, committed),
            )
        )
        if not all(out.values()):
            out = {k: v for k, v in out.items() if v}
        return out

    def compact(self, up_to: int) -> None:
        with _transaction(self.conn()) as c:
            base = self.epoch_of("base_epoch")
            if up_to <= base:
                return
            # Each key's last write only is read and reaches the base (a state
            # rewritten every epoch, like an exactly-once sink's copy, is read
            # and written once, not once per folded epoch).
            rows = c.execute(
                f"SELECT x.step, x.grp, x.key, x.value FROM {self.d} AS x JOIN "
                f"(SELECT step, grp, key, MAX(epoch) AS e FROM {self.d} WHERE {self.w}epoch > ? "
                "AND epoch <= ? GROUP BY step, grp, key) AS m ON x.step = m.step AND x.grp = m.grp "
                f"AND x.key = m.key AND x.epoch = m.e WHERE {self.w}1",
                (*self.a, base, up_to, *self.a),
            ).fetchall()
            for step, grp, key, value in rows:
                if value:
                    c.execute(
                        f"INSERT OR REPLACE INTO {self.b} ({self.col}step, grp, key, value)"
                        f" VALUES ({self.q}?, ?, ?, ?)",
                        (*self.a, step, grp, key, value),
                    )
                else:
                    c.execute(
                        f"DELETE FROM {self.b} WHERE {self.w}step=? AND grp=? AND key=?",
                        (*self.a, step, grp, key),
                    )
            c.execute(f"DELETE FROM {self.d} WHERE {self.w}epoch <= ?", (*self.a, up_to))
            # The manifest: folded epochs go, the base is recounted.
            self._del_meta(c, self._manifest_keys(c, lambda e: e > up_to))
            self._del_meta(
                c, [k for (k,) in c.execute(f"SELECT k FROM {self.m} WHERE {self.w}k LIKE 'b:%'", self.a)]
            )
            self.set_meta(
                c,
                {
                    "base_epoch": str(up_to),
                    **{
                        f"b:{s}": str(n)
                        for s, n in c.execute(
                            f"SELECT step, COUNT(*) FROM {self.b} WHERE {self.w}1 GROUP BY step", self.a
                        )
                    },
                },
            )

    def delete_all(self) -> int:
        with _transaction(self.conn()) as c:
            return sum(
                c.execute(f"DELETE FROM {t} WHERE {self.w}1", self.a).rowcount
                for t in (self.d, self.b, self.m)
            )

    def step_groups(self) -> set[tuple[str, str]]:
        return set(
            self.conn().execute(
                f"SELECT DISTINCT step, grp FROM {self.b} WHERE {self.w}1 UNION "
                f"SELECT DISTINCT step, grp FROM {self.d} WHERE {self.w}1",
                self.a * 2,
            )
        )


class _Fence:
    """Checks, inside a part's write transaction, that the part still names our execution."""

    def __init__(self, description: str, execution_id: str, hint: str = "") -> None:
        self.description = description
        self.execution_id = execution_id
        self.hint = hint

    def check(self, file: _File, c: sqlite3.Connection, what: str) -> None:
        current = file.owner_in(c)
        if not current:
            raise LostStateError(
                ig.lost_meta_message(
                    f"{self.description}, {file.path.name}", self.execution_id, what, self.hint
                )
            )
        if current != self.execution_id:
            raise FencedError(fenced_message(self.description, self.execution_id, current, what))


# ---------------------------------------------------------------- the layout


def _read_header(path: Path) -> dict[str, str]:
    """The ``hr_part`` table of a part file; a clear error if it is not one."""
    try:
        c = _connect(path)
    except sqlite3.Error as exc:
        msg = f"can't open recovery partition {str(path)!r}: {exc}"
        raise RecoveryStoreError(msg) from exc
    try:
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "hr_part" in tables:
            header = dict(c.execute("SELECT k, v FROM hr_part"))
            if header.get("format") == FORMAT:
                return header
        if {"parts", "snaps", "commits"} <= tables:
            why = (
                "it is a Bytewax recovery partition; Headrace keeps snapshots in its own "
                "format and can't resume from Bytewax's"
            )
        else:
            why = "it holds no Headrace partition header"
        msg = (
            f"{str(path)!r} is not a Headrace recovery partition: {why}. Use a new directory "
            f"(python -m headrace.recovery DIR N)"
        )
        raise RecoveryStoreError(msg)
    except sqlite3.DatabaseError as exc:
        msg = (
            f"{str(path)!r} is not a Headrace recovery partition ({exc}); was it "
            "overwritten? Restore it from a backup, or use a new directory "
            "(python -m headrace.recovery DIR N)"
        )
        raise RecoveryStoreError(msg) from exc
    finally:
        c.close()


def scan_parts(directory: Path) -> tuple[int, dict[int, Path]]:
    """Check a directory's part files; return the part count and the parts by index.

    Raises ``NoPartitionsError`` (none), ``MissingPartitionsError``,
    ``InconsistentPartitionsError`` (other inits, counts, renamed parts) or
    ``RecoveryStoreError`` (a file that is not a part).

    >>> import tempfile
    >>> scan_parts(Path(tempfile.mkdtemp()))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    headrace.recovery.NoPartitionsError: No recovery partitions found on any worker; can't resume...
    """
    found: dict[int, Path] = {}
    for p in directory.iterdir():
        m = PART_RE.fullmatch(p.name)
        if m is not None:
            found[int(m[1])] = p
    if not found:
        msg = (
            f"No recovery partitions found on any worker; can't resume (recovery directory "
            f"{str(directory)!r} has no part-N.sqlite3 files): {_init_hint(directory)}"
        )
        raise NoPartitionsError(msg)
    headers = {i: _read_header(p) for i, p in sorted(found.items())}
    counts = {i: int(h.get("count", "0")) for i, h in headers.items()}
    ids = {h.get("dir_id", "") for h in headers.values()}
    if len(set(counts.values())) > 1 or len(ids) > 1:
        said = ", ".join(
            f"{part_name(i)} is part {headers[i].get('index')} of {n} "
            f"(init {headers[i].get('dir_id', '')[:8]})"
            for i, n in counts.items()
        )
        msg = (
            f"Inconsistent partition counts in recovery partitions; can't resume: the part "
            f"files of {str(directory)!r} come from different inits ({said}). Put back the "
            "parts of one init, or start over in a new directory"
        )
        raise InconsistentPartitionsError(msg)
    count = next(iter(counts.values()))
    for i, h in headers.items():
        if h.get("index") != str(i):
            msg = (
                f"recovery partition {str(found[i])!r} says it is part {h.get('index')} of "
                f"{count}: a part file was renamed or copied over another; can't resume. "
                f"Put each part back under its own name (part-{h.get('index')}.sqlite3)"
            )
            raise InconsistentPartitionsError(msg)
    missing = set(range(count)) - set(found)
    if missing:
        msg = (
            f"Missing recovery partitions {_names(missing)} of {count} in "
            f"{str(directory)!r}; can't resume: restore them from a backup (state in them "
            "would be lost), or delete the directory and init it again to start over"
        )
        raise MissingPartitionsError(msg)
    return count, found


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` itself (so two inits don't interleave)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def init_parts(directory: Path, count: int) -> None:
    """Create ``count`` empty parts in ``directory`` (made with its parents); idempotent.

    A directory that already holds all ``count`` parts of one init is left
    alone; other part files there are an error (init never replaces a lost
    part: that would silently drop its state).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); init_parts(d, 2); init_parts(d, 2)
    >>> sorted(p.name for p in d.glob("part-*"))
    ['part-0.sqlite3', 'part-1.sqlite3']
    """
    directory.mkdir(parents=True, exist_ok=True)
    with _lock(directory):
        if any(PART_RE.fullmatch(p.name) for p in directory.iterdir()):
            try:
                have, _ = scan_parts(directory)
            except MissingPartitionsError as exc:
                msg = f"{exc}. (init does not recreate lost partitions.)"
                raise MissingPartitionsError(msg) from None
            if have != count:
                msg = (
                    f"{str(directory)!r} already holds {have} recovery partitions; can't "
                    f"init it with {count}. Headrace can't change an existing directory's "
                    "partition count: use a new directory"
                )
                raise ValueError(msg)
            return
        dir_id = uuid.uuid4().hex
        for i in range(count):
            tmp = directory / f".{part_name(i)}.{dir_id}.tmp"
            c = _connect(tmp)
            try:
                c.execute("PRAGMA journal_mode=WAL")
                c.executescript(_PART_SCHEMA)
                c.executemany(
                    "INSERT INTO hr_part (k, v) VALUES (?, ?)",
                    [
                        ("format", FORMAT),
                        ("version", VERSION),
                        ("index", str(i)),
                        ("count", str(count)),
                        ("dir_id", dir_id),
                        ("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                    ],
                )
                c.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            finally:
                c.close()
            os.replace(tmp, directory / part_name(i))
