"""The local recovery store: SQLite part files in a directory, as Bytewax lays them out.

``init_db_dir(dir, N)`` (or ``python -m headrace.recovery DIR N``) makes
``part-0.sqlite3`` ... ``part-{N-1}.sqlite3``. Each part is a SQLite
database whose ``hr_part`` table records the format, its index, the part
count N and an id shared by the N parts of one ``init``. Every flow using
the directory keeps its rows in every part, keyed by its prefix (the flow
id), in ``hr_meta``, ``hr_delta`` and ``hr_base``: the data model of
``_store.py`` (per-epoch deltas, a compacted base), spread over the parts.
Key group ``g`` lives in part ``g % N``; a source or sink partition's
position in part ``crc32(step, partition) % N``.

Atomicity across parts. Each part records, per flow, its own
``committed_epoch`` and ``base_epoch`` (the newest epoch folded into its
base). A worker writes an epoch's deltas to the parts it touches, one
transaction per part; worker 0 then commits by writing ``committed_epoch =
e`` to part 0, 1, ... N-1 in turn, and only after that may compact. So:

- an epoch is committed when *every* part says so; the store's committed
  epoch is the smallest one across parts, ``m``;
- a crash (kill -9) in the middle of a commit leaves parts at ``e`` and
  ``e - 1``; a crash while writing deltas leaves deltas above the
  committed epoch; on start, ``start_execution`` deletes every delta above
  ``m`` and sets every part back to ``m``: everything, in every part, is as
  of the end of epoch ``m``, and input resumes from the positions stored
  for ``m``;
- compaction never folds an epoch that is not committed in every part (it
  runs after the commit wrote the last part), so after any crash every
  part's ``base_epoch`` is at most ``m`` and rolling back to ``m`` only
  drops deltas.

A part can only be *newer* than ``m`` by more than a crashed commit if it
was copied in from elsewhere, e.g. another part restored from an older
backup while the others moved on. Resuming at the older part's epoch is
still exact if the other parts kept their deltas since then (a longer
``backup_interval`` keeps more). If one of them compacted past it
(``base_epoch > m``), the state as of ``m`` is gone:
``InconsistentPartitionsError`` names the part files and their epochs and
says what to do (a newer backup, or delete the flow's state).

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

Size: ~830 lines: the parts' fencing and manifest checks run inside the
same transactions as the writes they guard; the manifest methods are the
part to move out (issue 21).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from headrace._engine import _integrity as ig
from headrace._engine._integrity import MANIFEST_FIELD, Layer
from headrace._engine._store import (
    HEARTBEAT_SECONDS,
    LEASE_SECONDS,
    PARTS,
    Entry,
    FencedError,
    Group,
    InconsistentPartitionsError,
    LostStateError,
    Meta,
    MissingPartitionsError,
    NoPartitionsError,
    RecoveryStoreError,
    Store,
    _merge,
    fenced_message,
)

log = logging.getLogger("headrace.recovery")

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
        c = self.conn()
        base = self.epoch_of("base_epoch")
        layers: list[dict[str, bytes]] = [
            dict(
                c.execute(
                    f"SELECT key, value FROM {self.b} WHERE {self.w}step=? AND grp=?", (*self.a, step, grp)
                )
            )
        ]
        layers.extend(
            {k: v}
            for k, v in c.execute(
                f"SELECT key, value FROM {self.d} WHERE {self.w}step=? AND grp=? AND epoch > ? "
                "AND epoch <= ? ORDER BY epoch",
                (*self.a, step, grp, base, committed),
            )
        )
        return _merge(layers)

    def compact(self, up_to: int) -> None:
        with _transaction(self.conn()) as c:
            base = self.epoch_of("base_epoch")
            if up_to <= base:
                return
            rows = c.execute(
                f"SELECT step, grp, key, value FROM {self.d} WHERE {self.w}epoch > ? "
                "AND epoch <= ? ORDER BY epoch",
                (*self.a, base, up_to),
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


# ---------------------------------------------------------------- the store


class SqliteStore(Store):
    """One flow's snapshots in a local directory: its part files, or a legacy file.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); init_parts(d, 3)
    >>> s = SqliteStore(d, "flow"); _ = s.start_execution(1, 8)
    >>> s.write_epoch(1, [("st", 4, "k", b"v"), ("src", PARTS, "p0", b"7")])
    5
    >>> s.commit(1, 4); s.load("st", [4]), s.load("src", [PARTS])
    ({4: {'k': b'v'}}, {'p': {'p0': b'7'}})
    """

    def __init__(self, directory: str | os.PathLike[str], prefix: str, check: bool = True) -> None:
        self.dir = Path(directory)
        self.prefix = prefix
        self.check = check
        self.last_error_at = 0.0
        self.errors = 0
        self._committed = 0  # the epoch this execution committed last (or resumed from)
        if not self.dir.exists():
            msg = (
                f'recovery directory "{self.dir}" does not exist; see the `headrace.recovery` '
                f"module docstring for more info: {_init_hint(self.dir)}"
            )
            raise FileNotFoundError(msg)
        if not self.dir.is_dir():
            msg = f'recovery directory "{self.dir}" is not a directory'
            raise NotADirectoryError(msg)
        legacy = self.dir / f"{prefix}.sqlite3"
        if legacy.is_file() and not PART_RE.fullmatch(legacy.name):
            self.path = legacy
            self.description = f"SQLite store {str(legacy)!r}"
            self.files = [_File(legacy, None)]
            self.files[0].conn().executescript(_LEGACY_SCHEMA)
            return
        count, found = scan_parts(self.dir)
        self.path = self.dir
        self.description = f"SQLite store {str(self.dir)!r} ({count} parts, flow {prefix!r})"
        self.files = [_File(found[i], prefix) for i in range(count)]
        if check:
            self._metas()

    # ------------------------------------------------------------ placement

    def _index_of(self, step: str, group: Group, key: str) -> int:
        """The part holding an entry: key group ``g % N``, partitions by a stable hash."""
        n = len(self.files)
        if n == 1:
            return 0
        if group == PARTS:
            return zlib.crc32(f"{step}\0{key}".encode()) % n
        return int(group) % n

    # ------------------------------------------------------------ meta

    def _metas(self) -> list[dict[str, str]]:
        """Every part's meta; raises if they can't be rolled back to one epoch.

        Base epochs are read before committed epochs: a run's commits only
        move forward, and a base never passes the smallest committed epoch,
        so a run going on meanwhile can't make this look inconsistent.
        """
        metas = [f.meta() for f in self.files]
        committed = [f.epoch_of("committed_epoch") for f in self.files]
        for m, c in zip(metas, committed, strict=True):
            if m:
                m["committed_epoch"] = str(c)
        resume = min(committed)
        bases = [int(m.get("base_epoch", 0)) for m in metas]
        if max(bases) > resume and self.check:
            old = [i for i, c in enumerate(committed) if c < max(bases)]
            newer = [i for i, b in enumerate(bases) if b > resume]
            msg = (
                f"Recovery partitions {_names(old)} of {len(self.files)} in {str(self.dir)!r} are "
                f"too old to resume from epoch {max(bases)} without data loss; do you have a "
                "newer backup of these partitions? (flow "
                f"{self.prefix!r}: {', '.join(f'{part_name(i)} committed epoch {committed[i]}' for i in old)}"
                f"; {', '.join(f'{part_name(i)} kept no history before epoch {bases[i]}' for i in newer)}."
                " A longer backup_interval (-b) keeps more history. To start over instead: "
                f"python -m headrace.recovery delete {self.dir} --flow-id {self.prefix})"
            )
            raise InconsistentPartitionsError(msg)
        groups = {m["key_groups"] for m in metas if m.get("key_groups", "0") != "0"}
        if len(groups) > 1 and self.check:
            msg = (
                f"recovery partitions of {str(self.dir)!r} disagree on flow "
                f"{self.prefix!r}'s key-group count ({sorted(groups)}); can't resume"
            )
            raise InconsistentPartitionsError(msg)
        return metas

    def load_meta(self) -> Meta | None:
        metas = self._metas()
        if not any(metas):
            return None
        meta = Meta.from_fields(next(m for m in metas if m))
        meta.committed_epoch = min(int(m.get("committed_epoch", 0)) for m in metas)
        meta.base_epoch = max(int(m.get("base_epoch", 0)) for m in metas)
        meta.key_groups = max(int(m.get("key_groups", 0)) for m in metas)
        return meta

    def parts(self) -> list[dict[str, object]]:
        """Each file's committed and base epoch for this flow (for ``show``).

        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); init_parts(d, 1)
        >>> SqliteStore(d, "f").parts()  # doctest: +ELLIPSIS
        [{'file': 'part-0.sqlite3', 'committed_epoch': 0, 'base_epoch': 0}]
        """
        return [
            {
                "file": f.path.name,
                "committed_epoch": f.epoch_of("committed_epoch"),
                "base_epoch": f.epoch_of("base_epoch"),
            }
            for f in self.files
        ]

    def start_execution(self, worker_count: int, key_groups: int) -> Meta:
        self._check_meta_records()
        new_id = uuid.uuid4().hex
        self._take_over(new_id)
        meta = self.load_meta() or Meta(key_groups=key_groups)
        meta.worker_count = worker_count
        meta.execution_id = new_id
        if not meta.key_groups:
            meta.key_groups = key_groups
        f = meta.to_fields()
        fields = {k: f[k] for k in ("worker_count", "execution_id", "key_groups")}
        if self.first_run:
            fields[MANIFEST_FIELD] = "1"
        for file in self.files:
            file.start(meta.committed_epoch, fields)
        problems: list[str] = []
        for file in self.files:
            if MANIFEST_FIELD in file.meta():
                problems.extend(ig.layer_problems(file.layers(file.conn(), meta.committed_epoch)))
            else:  # state of an older Headrace: counted now, checked from here on
                file.rebuild()
        if problems:
            raise LostStateError(
                ig.lost_state_message(
                    self.description, meta.committed_epoch, problems, "resuming", self.reset_hint()
                )
            )
        self._committed = meta.committed_epoch
        self.heartbeat()
        return meta

    def _check_meta_records(self) -> None:
        """Tell a first run from state whose meta records are gone; set ``first_run``."""
        metas = [f.meta() for f in self.files]
        committed = any(int(m.get("committed_epoch", 0)) for m in metas)
        rows = [f.has_rows() for f in self.files]
        lost = [
            f"{f.path.name} has no meta record of flow {self.prefix!r}"
            + (f" but {n} rows of its state" if n else "")
            for f, m, n in zip(self.files, metas, rows, strict=True)
            if not m and (committed or any(rows))
        ]
        if lost:
            raise LostStateError(ig.leftovers_message(self.description, lost, self.reset_hint()))
        self.first_run = not any(metas)

    # ------------------------------------------------------------ fencing

    def _fence(self) -> _Fence | None:
        if not self.execution_id:
            return None
        return _Fence(self.description, self.execution_id, self.reset_hint())

    def owner(self) -> str:
        with _transaction(self.files[0].conn()) as c:
            return self.files[0].owner_in(c)

    def _lease(self) -> tuple[str, float]:
        m = self.files[0].meta()
        return m.get("lease_owner", ""), float(m.get("lease_until", "0") or 0)

    def _take_over(self, new_id: str) -> None:
        """Name ``new_id`` in every part (fencing any other); wait for a live owner to stop."""
        if self.execution_id:
            self.release()  # this handle's own previous execution
        previous, until = "", 0.0
        for i, file in enumerate(self.files):
            with _transaction(file.conn()) as c:
                if i == 0:
                    previous, until = self._lease()
                file.set_meta(c, {"execution_id": new_id})
        self.execution_id = new_id
        if not previous or previous == new_id or until <= time.time():
            return
        wait = LEASE_SECONDS + 2 * HEARTBEAT_SECONDS
        log.warning(
            "execution %s of this dataflow still holds %s: execution %s takes over. The old "
            "one is fenced (its next commit fails) and stops at its next heartbeat; waiting "
            "up to %.0fs for it to stop",
            previous,
            self.description,
            new_id,
            wait,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            owner, until = self._lease()
            if owner != previous or until <= time.time():
                return
            time.sleep(0.1)
        msg = (
            f"execution {previous} still holds the lease of {self.description} {wait:.0f}s "
            "after it was fenced; is its process stopped (SIGSTOP)? Stop it, then restart"
        )
        raise RecoveryStoreError(msg)

    def heartbeat(self) -> None:
        file = self.files[0]
        with _transaction(file.conn()) as c:
            fence = self._fence()
            if fence is not None:
                fence.check(file, c, "committing anything more")
            file.set_meta(
                c, {"lease_owner": self.execution_id, "lease_until": repr(time.time() + LEASE_SECONDS)}
            )

    def release(self) -> None:
        if not self.execution_id:
            return
        file = self.files[0]
        with _transaction(file.conn()) as c:
            if file.meta().get("lease_owner") == self.execution_id:
                file.set_meta(c, {"lease_until": "0"})

    # ------------------------------------------------------------ epochs

    def write_epoch(self, epoch: int, entries: list[Entry]) -> int:
        if not entries:
            return 0
        fence = self._fence()
        if len(self.files) == 1:
            self.files[0].write(epoch, entries, fence)
        else:
            by_file: dict[int, list[Entry]] = {}
            for e in entries:
                by_file.setdefault(self._index_of(e[0], e[1], e[2]), []).append(e)
            for i, rows in sorted(by_file.items()):
                self.files[i].write(epoch, rows, fence)
        return sum(len(k) + len(v) for _, _, k, v in entries)

    def commit(self, epoch: int, epoch_bytes: int) -> None:
        fields = {
            "committed_epoch": str(epoch),
            "committed_at": repr(time.time()),
            "epoch_bytes": str(epoch_bytes),
        }
        fence = self._fence()
        for file in self.files:  # part 0 first; the epoch is committed once the last has it
            with _transaction(file.conn()) as c:
                if fence is not None:
                    fence.check(file, c, f"committing epoch {epoch}")
                    self._check_committed(file, c, epoch)
                file.set_meta(c, fields)
        self._committed = epoch

    def _check_committed(self, file: _File, c: sqlite3.Connection, epoch: int) -> None:
        """Inside a part's commit: its committed state, and this epoch's writes, are there."""
        row = c.execute(f"SELECT v FROM {file.m} WHERE {file.w}k='committed_epoch'", file.a).fetchone()
        was = int(row[0]) if row else 0
        if was != self._committed:
            msg = ig.went_back_message(
                f"{self.description}, {file.path.name}", self._committed, was, self.reset_hint()
            )
            raise LostStateError(msg)
        problems = ig.layer_problems(file.layers(c, epoch))
        if problems:
            raise LostStateError(
                ig.lost_state_message(
                    self.description, was, problems, f"committing epoch {epoch}", self.reset_hint()
                )
            )

    # ------------------------------------------------------------ integrity

    def reset_hint(self) -> str:
        """The explicit reset of this directory (the admin CLI, or resetStateNonce)."""
        return ig.reset_hint(str(self.dir), self.prefix)

    def _stored_flow(self) -> tuple[str, list[str]]:
        meta = self.load_meta()
        committed = meta.committed_epoch if meta is not None else 0
        steps: set[str] = set()
        for f in self.files:
            steps |= f.steps_upto(committed)
        return self.files[0].meta().get("flow_id", ""), sorted(steps)

    def _drop_steps(self, steps: list[str]) -> None:
        for f in self.files:
            f.drop(steps)

    def _record_flow(self, flow_id: str, steps: list[str]) -> None:
        for f in self.files:
            with _transaction(f.conn()) as c:
                f.set_meta(c, {"flow_id": flow_id, "steps": json.dumps(steps)})

    def load(self, step_id: str, groups: Iterable[Group]) -> dict[Group, dict[str, bytes]]:
        meta = self.load_meta()
        if meta is None:
            return {}
        out: dict[Group, dict[str, bytes]] = {}
        for g in groups:
            files = self.files if g == PARTS else [self.files[self._index_of(step_id, g, "")]]
            merged: dict[str, bytes] = {}
            for file in files:
                merged.update(file.load(step_id, str(g), meta.committed_epoch))
            if merged:
                out[g] = merged
        return out

    def compact(self, up_to_epoch: int) -> None:
        meta = self.load_meta()
        if meta is None:
            return
        up_to = min(up_to_epoch, meta.committed_epoch)
        for file in self.files:
            file.compact(up_to)

    def delete_all(self) -> int:
        return sum(f.delete_all() for f in self.files)

    def summary(self) -> dict[str, dict[str, int]]:
        pairs: set[tuple[str, str]] = set()
        for f in self.files:
            pairs |= f.step_groups()
        out: dict[str, dict[str, int]] = {}
        for step in sorted({s for s, _ in pairs}):
            groups = sorted({g for s, g in pairs if s == step})
            state = self.load(step, [g if g == PARTS else int(g) for g in groups])
            out[step] = {
                "keys": sum(len(v) for v in state.values()),
                "bytes": sum(len(k) + len(b) for v in state.values() for k, b in v.items()),
                "groups": len(state),
            }
        return out

    def close(self) -> None:
        for f in self.files:
            f.close()
