"""Recovery: epoch snapshots in Redis (or SQLite in a directory), and their admin CLI.

Pass a `RecoveryConfig` to `run_main`/`cluster_main` (or ``-r`` to
``python -m headrace.run``). State is snapshotted at every epoch boundary;
a restarted dataflow resumes from the last committed epoch, with any
worker count.

>>> import tempfile
>>> import headrace.operators as op
>>> from headrace.dataflow import Dataflow
>>> from headrace.testing import TestingSource, TestingSink, run_main
>>> def build(out):
...     flow = Dataflow("rec_doc")
...     s = op.input("i", flow, TestingSource([("a", 1), TestingSource.EOF(), ("a", 2)]))
...     op.output("o", op.stateful_map("sum", s, lambda s, v: ((s or 0) + v,) * 2), TestingSink(out))
...     return flow
>>> db_dir = tempfile.mkdtemp()
>>> init_db_dir(db_dir, 2)   # part-0.sqlite3, part-1.sqlite3
>>> config = RecoveryConfig(db_dir)
>>> out = []; run_main(build(out), recovery_config=config); out
[('a', 1)]
>>> out = []; run_main(build(out), recovery_config=config); out
[('a', 3)]

A local directory must be initialised first, with ``init_db_dir(dir, N)``
or ``python -m headrace.recovery DIR N``: it then holds N SQLite part files
that share every flow's state. Running on a directory without them raises
`NoPartitionsError` (a mistyped path must not silently start over); a lost
part file raises `MissingPartitionsError`; a part restored from an older
backup that the others can't roll back to raises
`InconsistentPartitionsError`. See docs/recovery.md.

Kept snapshots: `take_snapshot` copies the committed epoch's state under
a name, apart from the live state; `list_snapshots`, `prune_snapshots`
(retention by count and age, never the last one), `delete_snapshot`;
`restore_snapshot` makes one the committed state of an empty (or reset)
store, and the next run resumes from it.

Admin CLI::

    python -m headrace.recovery show redis://localhost:6379/0 --flow-id wordcount
    python -m headrace.recovery snapshot ./state --prefix wordcount nightly --keep 7
    python -m headrace.recovery snapshots ./state
    python -m headrace.recovery restore ./state nightly [--from-prefix OTHER]
    python -m headrace.recovery delete ./state --flow-id wordcount
    python -m headrace.recovery init ./state 1
    python -m headrace.recovery ./state 1      # Bytewax's form of init
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from headrace._engine import (
    REDIS_SCHEMES,
    FencedError,
    InconsistentPartitionsError,
    KeptSnapshot,
    LostStateError,
    Meta,
    MissingPartitionsError,
    NoPartitionsError,
    RecoveryStoreError,
    SnapshotError,
    StateMismatchError,
    Store,
    check_location,
    open_store,
)

if TYPE_CHECKING:
    from headrace.dataflow import Dataflow

__all__ = [
    "FencedError",
    "InconsistentPartitionsError",
    "KeptSnapshot",
    "LostStateError",
    "MissingPartitionsError",
    "NoPartitionsError",
    "RecoveryConfig",
    "RecoveryStoreError",
    "SnapshotError",
    "StateMismatchError",
    "delete_snapshot",
    "init_db_dir",
    "list_snapshots",
    "main",
    "prune_snapshots",
    "restore_snapshot",
    "take_snapshot",
]


@dataclass
class RecoveryConfig:
    """Where and how to keep snapshots.

    ``db_dir`` is a Redis URL (``redis://host:port/db``, ``rediss://``,
    ``unix://``), a Redis Cluster's (``redis+cluster://host:port/0``: state
    sharded by key group over its primaries) or a local directory (SQLite). ``backup_interval`` is how
    much snapshot history to keep before compacting it into the base.
    ``prefix`` names the dataflow's keys (default: its flow id).

    A resume refuses stored state of steps the dataflow no longer has (a
    renamed stateful step) and a store of another dataflow;
    ``allow_dropped_state=True`` drops that state instead (Flink's
    allowNonRestoredState). A Redis whose ``maxmemory-policy`` may evict
    keys is refused unless ``allow_evicting_redis=True``. A supervisor that
    saw the dataflow commit epoch N passes ``expect_epoch=N``: a store
    that lost everything (or went back to an older copy) then stops the
    run with `LostStateError` instead of looking like a first run. See
    docs/recovery.md.

    >>> RecoveryConfig("redis://localhost:6379/0").is_redis
    True
    >>> RecoveryConfig("./state").is_redis
    False
    """

    db_dir: str | Path
    backup_interval: timedelta | None = None
    prefix: str | None = None
    retry_for: float = 30.0
    allow_dropped_state: bool = False
    allow_evicting_redis: bool = False
    expect_epoch: int = 0

    def __post_init__(self) -> None:
        """Refuse a location that is neither a Redis URL nor a local path.

        A mistyped URL would otherwise become a local directory of that name
        (and, in a pod, be lost at its next restart). A relative directory
        whose first name holds a ``:`` is written ``./NAME``.

        >>> RecoveryConfig("127.0.0.1:6379")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: recovery location '127.0.0.1:6379' looks like HOST:PORT, not a directory; ...
        >>> RecoveryConfig("./odd:name").db_dir
        './odd:name'
        >>> RecoveryConfig("./state", timedelta(seconds=-1))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: backup_interval must not be negative; got -1 day, 23:59:59
        """
        check_location(str(self.db_dir))
        if self.expect_epoch < 0:
            msg = f"expect_epoch must not be negative; got {self.expect_epoch}"
            raise ValueError(msg)
        if self.backup_interval is not None and self.backup_interval < timedelta(0):
            msg = f"backup_interval must not be negative; got {self.backup_interval}"
            raise ValueError(msg)

    @property
    def is_redis(self) -> bool:
        """Whether the location is a Redis URL.

        >>> RecoveryConfig("rediss://h:6380/1").is_redis
        True
        """
        return str(self.db_dir).startswith(REDIS_SCHEMES)

    def open(self, flow_id: str) -> Store:
        """Open the store for ``flow_id`` (or the configured prefix).

        >>> import tempfile
        >>> d = tempfile.mkdtemp(); init_db_dir(d, 1)
        >>> RecoveryConfig(d).open("f").load_meta() is None
        True
        >>> RecoveryConfig(tempfile.mkdtemp()).open("f")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        headrace.recovery.NoPartitionsError: No recovery partitions found on any worker; ...
        """
        return open_store(str(self.db_dir), self.prefix or flow_id, self.retry_for)


def init_db_dir(db_dir: str | Path, count: int) -> None:
    """Create a local recovery directory with ``count`` partitions (as Bytewax's).

    Makes the directory (and its parents) and ``part-0.sqlite3`` ...
    ``part-{count-1}.sqlite3``. Doing it again with the same count is
    harmless; a different count, or a directory missing some of its parts,
    is an error (a lost part is never silently replaced). ``count`` 0 makes
    no parts, as in Bytewax (a run then raises `NoPartitionsError`). A Redis
    URL needs nothing.

    >>> import tempfile, os
    >>> d = os.path.join(tempfile.mkdtemp(), "rec")
    >>> init_db_dir(d, 3); sorted(os.listdir(d))
    ['part-0.sqlite3', 'part-1.sqlite3', 'part-2.sqlite3']
    >>> init_db_dir(d, 2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: '...rec' already holds 3 recovery partitions; can't init it with 2...
    >>> init_db_dir("redis://localhost:6379/0", 1); os.path.exists("redis:")
    False
    """
    if count < 0:
        msg = f"count must be >= 0; got {count}"
        raise ValueError(msg)
    if RecoveryConfig(db_dir).is_redis:
        return
    from headrace._engine import init_parts

    init_parts(Path(db_dir), count)


# ---------------------------------------------------------------- kept snapshots


def _seconds(age: timedelta | float | None) -> float | None:
    return age.total_seconds() if isinstance(age, timedelta) else age


def _open(location: str | Path, prefix: str | None, what: str) -> Store:
    """The store of ``prefix`` at ``location``; without one, of the only dataflow there."""
    from headrace._engine import stored_prefixes

    location = str(location)
    if prefix is None:
        found = stored_prefixes(location)
        if len(found) != 1:
            have = ", ".join(repr(p) for p in found) or "none"
            msg = f"{location} holds {len(found)} dataflows ({have}): name the one to {what} with --prefix"
            raise ValueError(msg)
        prefix = found[0]
    return open_store(location, prefix, retry_for=5.0, check=False)


def take_snapshot(
    location: str | Path,
    name: str,
    prefix: str | None = None,
    keep: int | None = None,
    max_age: timedelta | float | None = None,
) -> KeptSnapshot:
    """Keep the committed epoch of dataflow ``prefix`` at ``location`` under ``name``.

    The copy lives apart from the live state (a reset keeps it), and can
    be taken while the dataflow runs. ``keep``/``max_age`` then delete
    older kept snapshots (`prune_snapshots`). ``prefix`` defaults to the
    only dataflow at ``location``.

    >>> import tempfile
    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSink, TestingSource, run_main
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 2)
    >>> flow = Dataflow("snap_doc")
    >>> s = op.input("in", flow, TestingSource([("a", 1), ("a", 2)]))
    >>> op.output("out", op.stateful_map("sum", s, lambda st, v: ((st or 0) + v,) * 2), TestingSink([]))
    >>> run_main(flow, recovery_config=RecoveryConfig(d))
    >>> snap = take_snapshot(d, "first"); snap.name, snap.epoch, snap.flow_id, snap.steps
    ('first', 1, 'snap_doc', ('snap_doc.in', 'snap_doc.sum.stateful_batch'))
    """
    from headrace._engine import keep_snapshot, prune_snapshots

    store = _open(location, prefix, "snapshot")
    try:
        rec = keep_snapshot(store, name)
        if keep is not None or max_age is not None:
            prune_snapshots(store, keep, _seconds(max_age))
        return rec
    finally:
        store.close()


def list_snapshots(location: str | Path, prefix: str | None = None) -> list[KeptSnapshot]:
    """The kept snapshots of dataflow ``prefix`` at ``location``, oldest first.

    >>> import tempfile
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 1)
    >>> list_snapshots(d, "nothing")
    []
    """
    from headrace._engine import kept_snapshots

    store = _open(location, prefix, "list")
    try:
        return kept_snapshots(store)
    finally:
        store.close()


def prune_snapshots(
    location: str | Path,
    prefix: str | None = None,
    keep: int | None = None,
    max_age: timedelta | float | None = None,
) -> list[str]:
    """Delete kept snapshots beyond the ``keep`` newest or older than ``max_age``; never the last.

    Returns the names deleted.

    >>> import tempfile
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 1)
    >>> prune_snapshots(d, "nothing", keep=1)
    []
    """
    from headrace._engine import prune_snapshots as prune

    store = _open(location, prefix, "prune")
    try:
        return prune(store, keep, _seconds(max_age))
    finally:
        store.close()


def delete_snapshot(location: str | Path, name: str, prefix: str | None = None) -> KeptSnapshot:
    """Delete the kept snapshot ``name``; return its record.

    >>> import tempfile
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 1)
    >>> delete_snapshot(d, "nope", "f")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    headrace.recovery.SnapshotError: no kept snapshot named 'nope' in ...
    """
    from headrace._engine import forget_snapshot

    store = _open(location, prefix, "delete a snapshot of")
    try:
        return forget_snapshot(store, name)
    finally:
        store.close()


def restore_snapshot(
    location: str | Path,
    name: str,
    prefix: str | None = None,
    from_prefix: str | None = None,
    flow: Dataflow | str | None = None,
    allow_dropped_state: bool = False,
) -> KeptSnapshot:
    """Make kept snapshot ``name`` the committed state of dataflow ``prefix``: the next run resumes there.

    The snapshot is one of ``prefix`` itself or, with ``from_prefix``, of
    another dataflow at the same location. ``prefix`` must hold no live
    state (a new one, or one reset with ``delete``; kept snapshots stay).
    A snapshot with state of steps the flow does not have, or of another
    flow, is refused naming them (`StateMismatchError`): here when ``flow``
    (a `Dataflow` or an import string) is given, else when the dataflow
    starts. ``allow_dropped_state`` leaves that state out, as
    ``--allow-dropped-state`` does at a start.

    >>> import tempfile
    >>> import headrace.operators as op
    >>> from headrace.dataflow import Dataflow
    >>> from headrace.testing import TestingSink, TestingSource, run_main
    >>> def build(items, out):
    ...     flow = Dataflow("restore_doc")
    ...     s = op.input("in", flow, TestingSource(items))
    ...     op.output("out", op.stateful_map("sum", s, lambda st, v: ((st or 0) + v,) * 2), TestingSink(out))
    ...     return flow
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 2)
    >>> run_main(build([("a", 1)], []), recovery_config=RecoveryConfig(d, prefix="one"))
    >>> _ = take_snapshot(d, "s1", "one")
    >>> restore_snapshot(d, "s1", "two", from_prefix="one").epoch
    1
    >>> out = []; run_main(build([("a", 1), ("a", 10)], out), recovery_config=RecoveryConfig(d, prefix="two"))
    >>> out
    [('a', 11)]
    """
    from headrace._engine import flow_steps
    from headrace._engine import restore_snapshot as restore

    steps = None
    if flow is not None:
        if isinstance(flow, str):
            from headrace._imports import locate_dataflow

            flow = locate_dataflow(flow)
        steps = flow_steps(flow)
    target_prefix = prefix or from_prefix
    store = _open(location, target_prefix, "restore into")
    source = open_store(str(location), from_prefix, retry_for=5.0, check=False) if from_prefix else None
    try:
        return restore(store, name, source, steps, allow_dropped_state)
    finally:
        store.close()
        if source is not None:
            source.close()


def _duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``12h`` or ``7d``.

    >>> _duration("90"), _duration("30m"), _duration("7d")
    (90.0, 1800.0, 604800.0)
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        msg = f"not a duration: {text!r} (e.g. 90s, 30m, 12h, 7d)"
        raise argparse.ArgumentTypeError(msg) from None


def _size(n: int) -> str:
    """Bytes for people.

    >>> _size(512), _size(2048), _size(5 * 2**20)
    ('512 B', '2.0 KiB', '5.0 MiB')
    """
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _table(snaps: list[KeptSnapshot]) -> str:
    """The ``snapshots`` table.

    >>> print(_table([KeptSnapshot("n1", 7, 0.0, 2048, "wc", ("wc.a", "wc.b"), 8, "wc")]))
    NAME  EPOCH  TAKEN AT              SIZE     STEPS
    n1        7  1970-01-01T00:00:00Z  2.0 KiB  wc.a, wc.b
    """
    rows = [("NAME", "EPOCH", "TAKEN AT", "SIZE", "STEPS")]
    rows += [(s.name, str(s.epoch), _when(s.taken_at), _size(s.size), ", ".join(s.steps)) for s in snaps]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = []
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].ljust(widths[2]), r[3].ljust(widths[3])]
        out.append("  ".join([*cells, r[4]]).rstrip())
    return "\n".join(out)


def _describe(meta: Meta | None) -> dict[str, object]:
    if meta is None:
        return {"committed_epoch": None}
    return {
        "committed_epoch": meta.committed_epoch,
        "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(meta.committed_at))
        if meta.committed_at
        else None,
        "worker_count": meta.worker_count,
        "key_groups": meta.key_groups,
        "execution_id": meta.execution_id,
        "base_epoch": meta.base_epoch,
        "last_epoch_bytes": meta.epoch_bytes,
    }


_COMMANDS = ("show", "delete", "init", "snapshot", "snapshots", "restore")


def _init_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m headrace.recovery",
        description="Create a local recovery directory (Bytewax's form of `init`).",
        epilog="Other commands: python -m headrace.recovery COMMAND --help (show, delete, init, snapshot, "
        "snapshots, restore)",
    )
    p.add_argument("db_dir", help="local directory to create (with its parents)")
    p.add_argument("part_count", type=int, help="number of partitions (part-N.sqlite3 files) to create")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m headrace.recovery {show,delete,init,snapshot,snapshots,restore} LOCATION ...``
    or ``DB_DIR PART_COUNT``.

    The second form is Bytewax's ``python -m bytewax.recovery DB_DIR
    PART_COUNT`` and does what ``init`` does. (A directory named like a
    command is written ``./show``.)

    >>> import os, tempfile
    >>> d = os.path.join(tempfile.mkdtemp(), "state")
    >>> main([d, "4"]), sorted(os.listdir(d))[-1]
    (0, 'part-3.sqlite3')
    >>> main(["show", d, "--flow-id", "nothing"])
    {
      "location": ...
    }
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in _COMMANDS and not argv[0].startswith("-"):
        bw = _init_parser().parse_args(argv)
        return _init(bw.db_dir, bw.part_count)
    p = argparse.ArgumentParser(
        prog="python -m headrace.recovery",
        epilog="Bytewax's form, python -m headrace.recovery DB_DIR PART_COUNT, is `init`.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (
        ("show", "print a dataflow's committed epoch, worker count and state sizes"),
        ("delete", "delete a dataflow's live recovery state (kept snapshots stay)"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("location", help="redis://host:port/db or a directory")
        sp.add_argument("--flow-id", required=True, help="the dataflow id (or key prefix)")
        if name == "delete":
            sp.add_argument("--yes", action="store_true", help="don't ask")
    ip = sub.add_parser("init", help="create a local recovery directory")
    ip.add_argument("location")
    ip.add_argument("count", type=int, nargs="?", default=1)
    _snapshot_parsers(sub)
    args = p.parse_args(argv)
    if args.cmd == "init":
        return _init(args.location, args.count)
    if args.cmd in ("snapshot", "snapshots", "restore"):
        return _snapshot_command(args)
    try:
        # No epoch check: show and delete must work on the directory an error named.
        store = open_store(args.location, args.flow_id, retry_for=5.0, check=False)
        if args.cmd == "show":
            info = {"location": store.description, **_describe(store.load_meta()), "steps": store.summary()}
            parts = getattr(store, "parts", None)
            if parts is not None and len(parts()) > 1:
                info["parts"] = parts()
            print(json.dumps(info, indent=2, sort_keys=False))
        else:
            if not args.yes and sys.stdin.isatty():
                answer = input(f"delete all state of {args.flow_id!r} in {store.description}? ")
                if answer.strip().lower() not in ("y", "yes"):
                    return 1
            n = store.delete_all()
            print(f"deleted {n} records of {args.flow_id!r} from {store.description}")
        store.close()
    except (RecoveryStoreError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        msg = f"must be 1 or more (the newest snapshot is never deleted); got {n}"
        raise argparse.ArgumentTypeError(msg)
    return n


def _snapshot_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(sp: argparse.ArgumentParser, retention: bool = True) -> None:
        sp.add_argument(
            "--prefix",
            "--flow-id",
            dest="prefix",
            help="the dataflow's key prefix (default: the only dataflow at LOCATION)",
        )
        if retention:
            sp.add_argument("--keep", type=_positive, help="then keep only the N newest kept snapshots")
            sp.add_argument(
                "--max-age",
                type=_duration,
                help="then delete kept snapshots older than this (90s, 30m, 12h, 7d)",
            )

    sp = sub.add_parser("snapshot", help="keep the committed epoch's state under a name")
    sp.add_argument("location", help="redis://host:port/db or a directory")
    sp.add_argument("name", help="the snapshot's name (letters, digits, '.', '_', '-')")
    common(sp)
    sp = sub.add_parser("snapshots", help="list (and prune) a dataflow's kept snapshots")
    sp.add_argument("location", help="redis://host:port/db or a directory")
    common(sp)
    sp.add_argument("--delete", metavar="NAME", action="append", default=[], help="delete this kept snapshot")
    sp.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    sp = sub.add_parser("restore", help="restore a kept snapshot into an empty (or reset) dataflow")
    sp.add_argument("location", help="redis://host:port/db or a directory")
    sp.add_argument("name", help="the kept snapshot")
    common(sp, retention=False)
    sp.add_argument("--from-prefix", help="take the snapshot from this other dataflow at LOCATION")
    sp.add_argument(
        "--flow",
        metavar="IMPORT",
        help="check the snapshot's steps against this dataflow now (as headrace.run's)",
    )
    sp.add_argument(
        "--allow-dropped-state", action="store_true", help="leave out state of steps the --flow does not have"
    )


def _snapshot_command(args: argparse.Namespace) -> int:
    from headrace.errors import HeadraceError

    try:
        if args.cmd == "snapshot":
            rec = take_snapshot(args.location, args.name, args.prefix)
            print(
                f"kept snapshot {rec.name!r} of dataflow {rec.prefix!r}: epoch {rec.epoch}, "
                f"{rec.entries} entries, {rec.size} bytes, steps {', '.join(rec.steps) or 'none'}"
            )
            if args.keep is not None or args.max_age is not None:
                gone = prune_snapshots(args.location, rec.prefix, args.keep, args.max_age)
                if gone:
                    print(f"deleted kept snapshots {', '.join(gone)}")
        elif args.cmd == "snapshots":
            for name in args.delete:
                delete_snapshot(args.location, name, args.prefix)
                print(f"deleted kept snapshot {name!r}")
            if args.keep is not None or args.max_age is not None:
                gone = prune_snapshots(args.location, args.prefix, args.keep, args.max_age)
                if gone:
                    print(f"deleted kept snapshots {', '.join(gone)}")
            snaps = list_snapshots(args.location, args.prefix)
            if args.json:
                print(json.dumps([json.loads(s.to_json()) for s in snaps], indent=2))
            else:
                print(_table(snaps))
        else:
            rec = restore_snapshot(
                args.location, args.name, args.prefix, args.from_prefix, args.flow, args.allow_dropped_state
            )
            target = args.prefix or args.from_prefix or rec.prefix
            checked = (
                ""
                if args.flow
                else "; a flow whose steps differ is refused when it starts (StateMismatchError)"
            )
            print(
                f"restored kept snapshot {rec.name!r} of dataflow {rec.prefix!r} (epoch {rec.epoch}) "
                f"into {target!r}: its next run resumes from epoch {rec.epoch}{checked}"
            )
    except (RecoveryStoreError, OSError, ValueError, HeadraceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _init(location: str, count: int) -> int:
    try:
        init_db_dir(location, count)
    except (ValueError, RecoveryStoreError, MissingPartitionsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: can't create recovery directory {location!r}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
