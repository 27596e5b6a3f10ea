"""The recovery store's interface: its data model, fencing, errors and the `Store` ABC.

Where this sits: the bottom of the recovery stores. `_store` (Redis) and
`_sqlite_store` (local part files) implement `Store`; `_redis_integrity`
and `_sqlite_parts` raise its errors; the engine's worker loop and
`_execute` program against `Store` only. `_store.open_store` picks the
implementation from the location.


Data model, shared by both stores:

- ``meta``: committed epoch, key-group count, worker count and execution id
  of the last run, commit time, snapshot sizes.
- *deltas*: for each epoch, the entries that changed in it, grouped by
  ``(step_id, group)`` where ``group`` is a key group (stateful steps) or
  ``"p"`` (source and sink partitions, keyed by partition name). A value
  is a pickle; an empty value is a tombstone (the key's state was dropped).
- *base*: the same shape, holding everything folded in by compaction up to
  ``base_epoch``.

State as of the committed epoch ``c`` is base, then every delta epoch in
``(base_epoch, c]`` in order. Deltas above ``c`` belong to an epoch that
never committed; they are deleted when a run starts. Writing is one
round trip per epoch per worker; committing is one atomic write of
``committed_epoch``.

Fencing (one owner at a time). ``start_execution`` records a new
execution id in the meta: from then on the store belongs to that
execution. A store handle remembers the execution it acts for
(``execution_id``; process 0 gets it from ``start_execution``, the other
processes of a cluster from the mesh handshake through
``join_execution``), and every ``write_epoch`` and ``commit`` checks,
atomically with the write, that the meta still names it; otherwise it
raises `FencedError` naming the newer execution, and nothing is written.
The owner also holds a lease (``heartbeat`` every `HEARTBEAT_SECONDS`,
valid `LEASE_SECONDS`) so that a new execution that takes over waits
until the old one has stopped writing output (it sees the fence at its
next heartbeat and stops, releasing the lease) or is dead (the lease
runs out) before it resumes.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from headrace._engine._marks import RunMarks, run_marks
from headrace.errors import HeadraceRuntimeError

log = logging.getLogger("headrace.recovery")

T = TypeVar("T")
Group = int | str
Entry = tuple[str, Group, str, bytes]  # step_id, group, key, value (b"" = tombstone)
PARTS = "p"
# Key groups read per round trip when a resume loads a step's state (`Store.iter_load`).
LOAD_CHUNK = 16


class RecoveryStoreError(HeadraceRuntimeError):
    """The recovery store failed (after retries) or holds inconsistent data.

    >>> issubclass(RecoveryStoreError, RuntimeError)
    True
    """


class NoPartitionsError(FileNotFoundError):
    """A recovery directory holds no partitions (run ``init_db_dir`` first).

    >>> issubclass(NoPartitionsError, FileNotFoundError)
    True
    """


class MissingPartitionsError(FileNotFoundError):
    """Some of a recovery directory's part files are missing.

    >>> issubclass(MissingPartitionsError, FileNotFoundError)
    True
    """


class InconsistentPartitionsError(ValueError):
    """Recovery partitions disagree: other inits, or one too old to resume with the others.

    >>> issubclass(InconsistentPartitionsError, ValueError)
    True
    """


class FencedError(RecoveryStoreError):
    """A newer execution of the dataflow took over the recovery store: this one must stop.

    >>> issubclass(FencedError, RecoveryStoreError)
    True
    """


class LostStateError(RecoveryStoreError):
    """Committed recovery state is gone (deleted, evicted, or the store lost its data).

    >>> issubclass(LostStateError, RecoveryStoreError)
    True
    """


class StateMismatchError(RecoveryStoreError):
    """Stored state does not match the dataflow (a renamed step, another flow's prefix).

    >>> issubclass(StateMismatchError, RecoveryStoreError)
    True
    """


# The owner renews its lease this often; a lease not renewed for
# LEASE_SECONDS has run out (its execution is dead or fenced).
HEARTBEAT_SECONDS = 1.0
LEASE_SECONDS = 5.0


def fenced_message(description: str, mine: str, newer: str | None, what: str) -> str:
    """Why an execution can't go on: another took over the store, or its record is gone.

    >>> fenced_message("Redis at r", "aaaa", "bbbb", "committing epoch 7")[:72]
    'execution aaaa of this dataflow was fenced off Redis at r by execution b'
    >>> "record of any execution" in fenced_message("Redis at r", "aaaa", "", "x")
    True
    """
    if newer:
        return (
            f"execution {mine} of this dataflow was fenced off {description} by execution "
            f"{newer}, started after it (the same dataflow started again, e.g. by a supervisor "
            f"while this run still ran): this run stops without {what}; the newer execution "
            "owns the store and resumes from the last committed epoch. Run one instance of a "
            "dataflow per recovery store (or per --recovery-prefix)"
        )
    return (
        f"execution {mine} of this dataflow can't go on: {description} holds no record of "
        f"any execution any more (deleted, or the store lost its data): this run stops "
        f"without {what}. Check the store, then restart the dataflow"
    )


# Raised and shown as headrace.recovery's, where users import them from.
for _cls in (
    RecoveryStoreError,
    FencedError,
    NoPartitionsError,
    MissingPartitionsError,
    InconsistentPartitionsError,
    LostStateError,
    StateMismatchError,
):
    _cls.__module__ = "headrace.recovery"


@dataclass
class Meta:
    """What the store knows about a dataflow's runs."""

    committed_epoch: int = 0
    key_groups: int = 0
    worker_count: int = 0
    execution_id: str = ""
    base_epoch: int = 0
    committed_at: float = 0.0
    epoch_bytes: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    # When output last came out, and the owning execution's start (`_marks`).
    marks: RunMarks = field(default_factory=RunMarks)

    def to_fields(self) -> dict[str, str]:
        return {
            "committed_epoch": str(self.committed_epoch),
            "key_groups": str(self.key_groups),
            "worker_count": str(self.worker_count),
            "execution_id": self.execution_id,
            "base_epoch": str(self.base_epoch),
            "committed_at": repr(self.committed_at),
            "epoch_bytes": str(self.epoch_bytes),
        }

    @classmethod
    def from_fields(cls, f: dict[str, str]) -> Meta:
        return cls(
            committed_epoch=int(f.get("committed_epoch", 0)),
            key_groups=int(f.get("key_groups", 0)),
            worker_count=int(f.get("worker_count", 0)),
            execution_id=f.get("execution_id", ""),
            base_epoch=int(f.get("base_epoch", 0)),
            committed_at=float(f.get("committed_at", 0.0)),
            epoch_bytes=int(f.get("epoch_bytes", 0)),
            marks=run_marks(f),
        )


class Store(ABC):
    """One dataflow's recovery data. Implementations must be thread-safe."""

    description: str = "store"
    # The execution this handle writes for ("" = unfenced: admin tools).
    execution_id: str = ""
    # Set by start_execution: the store held no state of the dataflow (a first run).
    first_run: bool = False
    # Store errors met (and retried) so far, and when the last one was.
    errors: int = 0
    last_error_at: float = 0.0

    def check_flow(self, flow_id: str, steps: list[str], allow_dropped: bool = False) -> list[str]:
        """Refuse stored state the flow has no step for, or another flow's store; return
        the steps whose state was dropped (only with ``allow_dropped``). Records the flow id
        and ``steps`` (the flow's steps that may hold state) for the next resume.

        >>> import tempfile
        >>> from headrace.recovery import init_db_dir
        >>> from headrace._engine import open_store
        >>> d = tempfile.mkdtemp(); init_db_dir(d, 1)
        >>> s = open_store(d, "f"); _ = s.start_execution(1, 8); s.check_flow("f", ["count"])
        []
        >>> _ = s.write_epoch(1, [("count", 3, "k", b"v")]); s.commit(1, 1)
        >>> s.check_flow("f", ["counter"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        headrace.recovery.StateMismatchError: SQLite store ... holds state of steps 'count' ...
        >>> s.check_flow("f", ["counter"], allow_dropped=True), s.load("count", [3])
        (['count'], {})
        """
        from headrace._engine._integrity import dropped_steps, mismatch_message

        stored_flow, stored = self._stored_flow()
        dropped = dropped_steps(stored, steps)
        msg = mismatch_message(self.description, flow_id, stored_flow, dropped, steps, self.reset_hint())
        if msg is not None:
            if not allow_dropped:
                raise StateMismatchError(msg)
            log.warning(
                "dropping the stored state of steps %s of %s (allowed by "
                "--allow-dropped-state); flow %r now owns it",
                dropped or "none",
                self.description,
                flow_id,
            )
            if dropped:
                self._drop_steps(dropped)
        self._record_flow(flow_id, steps)
        return dropped

    def _stored_flow(self) -> tuple[str, list[str]]:
        """The flow id recorded in the store ("" if none) and the steps with committed state."""
        raise NotImplementedError

    def _drop_steps(self, steps: list[str]) -> None:
        """Delete the committed state of ``steps`` (keeping the manifests true)."""
        raise NotImplementedError

    def _record_flow(self, flow_id: str, steps: list[str]) -> None:
        """Record the flow id and its state steps."""
        raise NotImplementedError

    def reset_hint(self) -> str:
        """The command that deletes this dataflow's state (the explicit reset)."""
        raise NotImplementedError

    @abstractmethod
    def load_meta(self) -> Meta | None:
        """The dataflow's meta, or ``None`` if it never committed anything."""

    @abstractmethod
    def start_execution(self, worker_count: int, key_groups: int) -> Meta:
        """Begin a run: take the store over (fence any running execution and wait for
        it to stop), drop uncommitted deltas, record a new execution id and hold its lease."""

    @abstractmethod
    def owner(self) -> str:
        """The execution id the store's meta names now ("" if none)."""

    def join_execution(self, execution_id: str) -> None:
        """Write for ``execution_id`` (started by process 0); raise `FencedError` if not current."""
        current = self.owner()
        if current != execution_id:
            raise FencedError(
                fenced_message(self.description, execution_id, current, "starting this process")
            )
        self.execution_id = execution_id

    @abstractmethod
    def heartbeat(self) -> None:
        """Renew this execution's lease; raise `FencedError` if another took over."""

    @abstractmethod
    def release(self) -> None:
        """Give up this execution's lease (it stopped): a new start need not wait it out."""

    def lease_holder(self) -> str:
        """The execution holding the lease now ("" if none: released, run out, never held).

        A new execution that must not fence a live one (a standby pod of the
        next generation) waits for this to be "" before `start_execution`.
        """
        raise NotImplementedError

    def note_standby(self, who: str) -> None:
        """Say that ``who`` (a process of the next pods) waits for the lease: a supervisor
        (the operator) stops the old execution once the next one is this far.

        Kept apart from the state (it is no part of a snapshot) and for a
        few minutes only; a store without a supervisor to tell ignores it.
        """
        return None

    def standby_note(self) -> str:
        """What `note_standby` said last ("" if nothing, or it ran out): ``"<who> <time>"``."""
        return ""

    @abstractmethod
    def write_epoch(self, epoch: int, entries: list[Entry]) -> int:
        """Write one worker's changes for ``epoch``; return bytes written."""

    # Whether `for_child` works: a forked child can write with a handle of its own.
    forkable: bool = False

    def for_child(self) -> Store:
        """In a forked child: this handle's copy with connections of its own (same execution, fencing)."""
        raise NotImplementedError

    @abstractmethod
    def commit(self, epoch: int, epoch_bytes: int, marks: Mapping[str, str] | None = None) -> None:
        """Atomically mark ``epoch`` committed (with ``marks``, `_marks.commit_fields`, in the meta)."""

    @abstractmethod
    def load(self, step_id: str, groups: Iterable[Group]) -> dict[Group, dict[str, bytes]]:
        """State of ``step_id`` as of the committed epoch, for ``groups``."""

    def iter_load(self, step_id: str, groups: Iterable[Group]) -> Iterator[dict[str, bytes]]:
        """`load`, a few groups at a time: each non-empty group's state, as it is read.

        For a resume, which rebuilds each group's keys and drops the bytes
        before reading the next groups (a lower peak of memory).

        >>> import tempfile
        >>> from headrace.recovery import init_db_dir
        >>> from headrace._engine import open_store
        >>> d = tempfile.mkdtemp(); init_db_dir(d, 1)
        >>> s = open_store(d, "f"); _ = s.start_execution(1, 8)
        >>> _ = s.write_epoch(1, [("c", 3, "k", b"v"), ("c", 5, "j", b"w")]); s.commit(1, 2)
        >>> list(s.iter_load("c", range(8)))
        [{'k': b'v'}, {'j': b'w'}]
        """
        groups = list(groups)
        for i in range(0, len(groups), LOAD_CHUNK):
            yield from self.load(step_id, groups[i : i + LOAD_CHUNK]).values()

    @abstractmethod
    def compact(self, up_to_epoch: int) -> None:
        """Fold committed deltas up to ``up_to_epoch`` into the base."""

    @abstractmethod
    def delete_all(self) -> int:
        """Delete everything of this dataflow; return the number of records."""

    @abstractmethod
    def summary(self) -> dict[str, dict[str, int]]:
        """Per step: keys and bytes in the committed state."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


def _count_store_error() -> None:
    from headrace._metrics import M

    M["headrace_recovery_store_errors_total"].inc()


def _merge(layers: Iterable[dict[str, bytes]]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for layer in layers:
        for k, v in layer.items():
            if v:
                out[k] = v
            else:
                out.pop(k, None)
    return out


def _safe_url(url: str) -> str:
    """Hide a password in a URL.

    >>> _safe_url("redis://:secret@host:6379/0")
    'redis://:***@host:6379/0'
    """
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
