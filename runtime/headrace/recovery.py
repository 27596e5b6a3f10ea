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

Admin CLI::

    python -m headrace.recovery show redis://localhost:6379/0 --flow-id wordcount
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

from headrace._engine import (
    REDIS_SCHEMES,
    FencedError,
    InconsistentPartitionsError,
    LostStateError,
    Meta,
    MissingPartitionsError,
    NoPartitionsError,
    RecoveryStoreError,
    StateMismatchError,
    Store,
    check_location,
    open_store,
)

__all__ = [
    "FencedError",
    "InconsistentPartitionsError",
    "LostStateError",
    "MissingPartitionsError",
    "NoPartitionsError",
    "RecoveryConfig",
    "RecoveryStoreError",
    "StateMismatchError",
    "init_db_dir",
    "main",
]


@dataclass
class RecoveryConfig:
    """Where and how to keep snapshots.

    ``db_dir`` is a Redis URL (``redis://host:port/db``, ``rediss://``,
    ``unix://``) or a local directory (SQLite). ``backup_interval`` is how
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


_COMMANDS = ("show", "delete", "init")


def _init_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m headrace.recovery",
        description="Create a local recovery directory (Bytewax's form of `init`).",
        epilog="Other commands: python -m headrace.recovery {show,delete,init} --help",
    )
    p.add_argument("db_dir", help="local directory to create (with its parents)")
    p.add_argument("part_count", type=int, help="number of partitions (part-N.sqlite3 files) to create")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m headrace.recovery {show,delete,init} LOCATION`` or ``DB_DIR PART_COUNT``.

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
        ("delete", "delete all of a dataflow's recovery state"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("location", help="redis://host:port/db or a directory")
        sp.add_argument("--flow-id", required=True, help="the dataflow id (or key prefix)")
        if name == "delete":
            sp.add_argument("--yes", action="store_true", help="don't ask")
    ip = sub.add_parser("init", help="create a local recovery directory")
    ip.add_argument("location")
    ip.add_argument("count", type=int, nargs="?", default=1)
    args = p.parse_args(argv)
    if args.cmd == "init":
        return _init(args.location, args.count)
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
