"""The local recovery store: SQLite part files in a directory, as Bytewax lays them out.

The part files themselves (layout, creation, one file's reads and writes)
are `_sqlite_parts`; this module is the store over them.

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
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from headrace._engine import _integrity as ig
from headrace._engine._integrity import MANIFEST_FIELD
from headrace._engine._sqlite_parts import (
    _LEGACY_SCHEMA,
    PART_RE,
    _Fence,
    _File,
    _init_hint,
    _names,
    _transaction,
    part_name,
    scan_parts,
)
from headrace._engine._store_base import (
    HEARTBEAT_SECONDS,
    LEASE_SECONDS,
    PARTS,
    Entry,
    Group,
    InconsistentPartitionsError,
    LostStateError,
    Meta,
    RecoveryStoreError,
    Store,
)

log = logging.getLogger("headrace.recovery")
log = logging.getLogger("headrace.recovery")


class SqliteStore(Store):
    """One flow's snapshots in a local directory: its part files, or a legacy file.

    >>> import tempfile
    >>> from headrace._engine._sqlite_parts import init_parts
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
        restoring = sorted({m["restoring"] for m in metas if "restoring" in m})
        if restoring and self.check:  # see `_snapshots`: marked until every part has it
            msg = (
                f"{self.description}: the restore of kept snapshot {restoring[0]!r} did not finish "
                f"(its process was stopped); restore it again (python -m headrace.recovery restore "
                f"{self.dir} NAME --prefix {self.prefix}), or start over: {self.reset_hint()}"
            )
            raise RecoveryStoreError(msg)
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
        >>> from headrace._engine._sqlite_parts import init_parts
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

    def lease_holder(self) -> str:
        owner, until = self._lease()
        return owner if until > time.time() else ""

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

    def commit(self, epoch: int, epoch_bytes: int, marks: Mapping[str, str] | None = None) -> None:
        fields = {
            "committed_epoch": str(epoch),
            "committed_at": repr(time.time()),
            "epoch_bytes": str(epoch_bytes),
            **(marks or {}),
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
