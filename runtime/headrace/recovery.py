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
>>> config = RecoveryConfig(tempfile.mkdtemp())
>>> out = []; run_main(build(out), recovery_config=config); out
[('a', 1)]
>>> out = []; run_main(build(out), recovery_config=config); out
[('a', 3)]

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

from headrace._engine._store import Meta, RecoveryStoreError, Store, open_store

__all__ = [
    "InconsistentPartitionsError",
    "MissingPartitionsError",
    "NoPartitionsError",
    "RecoveryConfig",
    "RecoveryStoreError",
    "init_db_dir",
    "main",
]


class InconsistentPartitionsError(ValueError):
    """Stored recovery data disagrees with itself (e.g. key-group counts).

    >>> issubclass(InconsistentPartitionsError, ValueError)
    True
    """


class NoPartitionsError(FileNotFoundError):
    """No recovery data where it was expected.

    >>> issubclass(NoPartitionsError, FileNotFoundError)
    True
    """


class MissingPartitionsError(FileNotFoundError):
    """Part of the recovery data is missing.

    >>> issubclass(MissingPartitionsError, FileNotFoundError)
    True
    """


@dataclass
class RecoveryConfig:
    """Where and how to keep snapshots.

    ``db_dir`` is a Redis URL (``redis://host:port/db``, ``rediss://``,
    ``unix://``) or a local directory (SQLite). ``backup_interval`` is how
    much snapshot history to keep before compacting it into the base.
    ``prefix`` names the dataflow's keys (default: its flow id).

    >>> RecoveryConfig("redis://localhost:6379/0").is_redis
    True
    >>> RecoveryConfig("./state").is_redis
    False
    """

    db_dir: str | Path
    backup_interval: timedelta | None = None
    prefix: str | None = None
    retry_for: float = 30.0

    @property
    def is_redis(self) -> bool:
        """Whether the location is a Redis URL.

        >>> RecoveryConfig("rediss://h:6380/1").is_redis
        True
        """
        return str(self.db_dir).startswith(("redis://", "rediss://", "unix://"))

    def open(self, flow_id: str) -> Store:
        """Open the store for ``flow_id`` (or the configured prefix).

        >>> import tempfile
        >>> RecoveryConfig(tempfile.mkdtemp()).open("f").load_meta() is None
        True
        """
        return open_store(str(self.db_dir), self.prefix or flow_id, self.retry_for)


def init_db_dir(db_dir: str | Path, count: int) -> None:
    """Create a local recovery directory (Bytewax-compatible helper).

    Headrace needs no pre-created partitions (key groups are fixed at the
    first run), so this only makes the directory (and its parents); doing it
    again is harmless, and a Redis URL needs nothing. ``count`` is checked
    but otherwise unused; 0 is accepted, as Bytewax accepts it.

    >>> import tempfile, os
    >>> d = os.path.join(tempfile.mkdtemp(), "rec")
    >>> init_db_dir(d, 1); os.path.isdir(d)
    True
    >>> init_db_dir("redis://localhost:6379/0", 1); os.path.exists("redis:")
    False
    """
    if count < 0:
        msg = f"count must be >= 0; got {count}"
        raise ValueError(msg)
    if RecoveryConfig(db_dir).is_redis:
        return
    Path(db_dir).mkdir(parents=True, exist_ok=True)


def _describe(meta: Meta | None) -> dict[str, object]:
    if meta is None:
        return {"committed_epoch": None}
    return {
        "committed_epoch": meta.committed_epoch,
        "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(meta.committed_at))
        if meta.committed_at else None,
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
    p.add_argument("part_count", type=int,
                   help="number of partitions; Headrace fixes its key groups at the first run, "
                   "so this is only checked")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m headrace.recovery {show,delete,init} LOCATION`` or ``DB_DIR PART_COUNT``.

    The second form is Bytewax's ``python -m bytewax.recovery DB_DIR
    PART_COUNT`` and does what ``init`` does. (A directory named like a
    command is written ``./show``.)

    >>> import os, tempfile
    >>> main(["show", tempfile.mkdtemp(), "--flow-id", "nothing"])
    {
      "location": ...
    }
    0
    >>> d = os.path.join(tempfile.mkdtemp(), "state")
    >>> main([d, "4"]), os.path.isdir(d)
    (0, True)
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
        store = open_store(args.location, args.flow_id, retry_for=5.0)
        if args.cmd == "show":
            info = {"location": store.description, **_describe(store.load_meta()),
                    "steps": store.summary()}
            print(json.dumps(info, indent=2, sort_keys=False))
        else:
            if not args.yes and sys.stdin.isatty():
                answer = input(f"delete all state of {args.flow_id!r} in {store.description}? ")
                if answer.strip().lower() not in ("y", "yes"):
                    return 1
            n = store.delete_all()
            print(f"deleted {n} records of {args.flow_id!r} from {store.description}")
        store.close()
    except RecoveryStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _init(location: str, count: int) -> int:
    try:
        init_db_dir(location, count)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: can't create recovery directory {location!r}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
