"""Recovery stores: where epoch snapshots live (Redis here; SQLite part files in `_sqlite_store`).

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
pipelined round trip per epoch per worker; committing is one atomic write
of ``committed_epoch``.
"""

from __future__ import annotations

import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from headrace._engine._store_checks import REDIS_SCHEMES, check_location, refusal
from headrace.errors import HeadraceRuntimeError

log = logging.getLogger("headrace.recovery")

T = TypeVar("T")
Group = int | str
Entry = tuple[str, Group, str, bytes]  # step_id, group, key, value (b"" = tombstone)
PARTS = "p"


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


# Raised and shown as headrace.recovery's, where users import them from.
for _cls in (NoPartitionsError, MissingPartitionsError, InconsistentPartitionsError):
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
        )


class Store(ABC):
    """One dataflow's recovery data. Implementations must be thread-safe."""

    description: str = "store"

    @abstractmethod
    def load_meta(self) -> Meta | None:
        """The dataflow's meta, or ``None`` if it never committed anything."""

    @abstractmethod
    def start_execution(self, worker_count: int, key_groups: int) -> Meta:
        """Begin a run: drop uncommitted deltas, record a new execution id."""

    @abstractmethod
    def write_epoch(self, epoch: int, entries: list[Entry]) -> int:
        """Write one worker's changes for ``epoch``; return bytes written."""

    @abstractmethod
    def commit(self, epoch: int, epoch_bytes: int) -> None:
        """Atomically mark ``epoch`` committed."""

    @abstractmethod
    def load(self, step_id: str, groups: Iterable[Group]) -> dict[Group, dict[str, bytes]]:
        """State of ``step_id`` as of the committed epoch, for ``groups``."""

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
    from headrace._engine._metrics import M

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


# ---------------------------------------------------------------- Redis


class RedisStore(Store):
    """Snapshots in Redis under ``{prefix}`` (one hash tag: one cluster slot)."""

    def __init__(
        self,
        url: str,
        prefix: str,
        retry_for: float = 30.0,
        client: Any = None,
    ) -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self.retry_for = retry_for
        self.description = f"Redis at {_safe_url(url)} (prefix {prefix!r})"
        self._r: Any = client if client is not None else redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=10
        )
        self._redis_errors: tuple[type[BaseException], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
            redis.exceptions.BusyLoadingError,
            OSError,
        )
        self.errors = 0
        self.last_error_at = 0.0
        self.last_latency = 0.0
        self.on_error: Callable[[BaseException], None] | None = None

    # key names: every key carries the same {hash tag}
    def _k(self, *parts: object) -> str:
        return ":".join([f"hr{{{self.prefix}}}", *map(str, parts)])

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_for
        delay = 0.1
        while True:
            t0 = time.monotonic()
            try:
                result = fn()
                self.last_latency = time.monotonic() - t0
                return result
            except Exception as exc:
                # A wrong password or a refused write (OOM, ...) stays so: not retried.
                why = refusal(self.description, what, exc)
                if why is None and not isinstance(exc, self._redis_errors):
                    raise
                self.errors += 1
                self.last_error_at = time.monotonic()
                _count_store_error()
                if self.on_error is not None:
                    self.on_error(exc)
                if why is not None:
                    exc.__suppress_context__ = True  # e.g. redis-py's NOSCRIPT fallback: noise
                    raise RecoveryStoreError(why) from exc
                if time.monotonic() >= deadline:
                    msg = (
                        f"{self.description} unreachable for {self.retry_for:.0f}s while "
                        f"{what}: {exc}. Nothing past the last committed epoch was committed; "
                        "restart the dataflow once Redis is reachable and it resumes from there"
                    )
                    raise RecoveryStoreError(msg) from exc
                log.warning("recovery store error while %s (retrying): %s", what, exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def load_meta(self) -> Meta | None:
        raw = self._retry("reading meta", lambda: self._r.hgetall(self._k("meta")))
        if not raw:
            return None
        return Meta.from_fields({k.decode(): v.decode() for k, v in raw.items()})

    def _epochs(self, lo: int, hi: float) -> list[int]:
        got = self._retry(
            "listing epochs",
            lambda: self._r.zrangebyscore(self._k("epochs"), lo, hi),
        )
        return sorted(int(e) for e in got)

    def _delete_epochs(self, epochs: list[int]) -> int:
        n = 0
        for e in epochs:
            keys = self._retry("listing delta keys", partial(self._r.smembers, self._k("e", e)))
            names = [k.decode() if isinstance(k, bytes) else k for k in keys]

            def drop(names: list[str] = names, e: int = e) -> None:
                p = self._r.pipeline(transaction=False)
                if names:
                    p.delete(*names)
                p.delete(self._k("e", e))
                p.zrem(self._k("epochs"), e)
                p.execute()

            self._retry("deleting uncommitted deltas", drop)
            n += len(names)
        return n

    def start_execution(self, worker_count: int, key_groups: int) -> Meta:
        meta = self.load_meta() or Meta(key_groups=key_groups)
        stale = self._epochs(meta.committed_epoch + 1, float("inf"))
        if stale:
            log.info("dropping %d uncommitted epoch(s) %s", len(stale), stale)
            self._delete_epochs(stale)
        meta.worker_count = worker_count
        meta.execution_id = uuid.uuid4().hex
        if not meta.key_groups:
            meta.key_groups = key_groups
        fields = meta.to_fields()
        self._retry(
            "recording the execution",
            lambda: self._r.hset(self._k("meta"), mapping={
                "worker_count": fields["worker_count"],
                "execution_id": fields["execution_id"],
                "key_groups": fields["key_groups"],
            }),
        )
        return meta

    def write_epoch(self, epoch: int, entries: list[Entry]) -> int:
        by_key: dict[str, dict[str, bytes]] = {}
        size = 0
        for step_id, group, key, value in entries:
            by_key.setdefault(self._k("d", epoch, step_id, group), {})[key] = value
            size += len(key) + len(value)
        if not by_key:
            return 0

        def write() -> None:
            p = self._r.pipeline(transaction=False)
            for name, mapping in by_key.items():
                p.hset(name, mapping=mapping)
            p.sadd(self._k("e", epoch), *by_key)
            p.zadd(self._k("epochs"), {str(epoch): epoch})
            p.execute()

        self._retry(f"writing the snapshot of epoch {epoch}", write)
        return size

    def commit(self, epoch: int, epoch_bytes: int) -> None:
        self._retry(
            f"committing epoch {epoch}",
            lambda: self._r.hset(self._k("meta"), mapping={
                "committed_epoch": str(epoch),
                "committed_at": repr(time.time()),
                "epoch_bytes": str(epoch_bytes),
            }),
        )

    def load(self, step_id: str, groups: Iterable[Group]) -> dict[Group, dict[str, bytes]]:
        meta = self.load_meta()
        groups = list(groups)
        if meta is None or not groups:
            return {}
        epochs = self._epochs(meta.base_epoch + 1, meta.committed_epoch)

        def read() -> list[Any]:
            p = self._r.pipeline(transaction=False)
            for g in groups:
                p.hgetall(self._k("b", step_id, g))
                for e in epochs:
                    p.hgetall(self._k("d", e, step_id, g))
            return p.execute()

        res = self._retry(f"loading the state of step {step_id!r}", read)
        out: dict[Group, dict[str, bytes]] = {}
        per = 1 + len(epochs)
        for i, g in enumerate(groups):
            layers = [
                {k.decode(): v for k, v in layer.items()} for layer in res[i * per:(i + 1) * per]
            ]
            merged = _merge(layers)
            if merged:
                out[g] = merged
        return out

    def compact(self, up_to_epoch: int) -> None:
        meta = self.load_meta()
        if meta is None:
            return
        up_to = min(up_to_epoch, meta.committed_epoch)
        epochs = self._epochs(meta.base_epoch + 1, up_to)
        if not epochs:
            return
        for e in epochs:
            names = self._retry("compacting", partial(self._r.smembers, self._k("e", e)))
            for raw in names:
                name = raw.decode()
                base = name.replace(self._k("d", e) + ":", self._k("b") + ":", 1)
                layer = self._retry("compacting", partial(self._r.hgetall, name))
                sets = {k: v for k, v in layer.items() if v}
                dels = [k for k, v in layer.items() if not v]

                def fold(base: str = base, sets: dict[Any, Any] = sets, dels: list[Any] = dels,
                         name: str = name) -> None:
                    p = self._r.pipeline(transaction=False)
                    if sets:
                        p.hset(base, mapping=sets)
                    if dels:
                        p.hdel(base, *dels)
                    p.sadd(self._k("bases"), base)
                    p.execute()

                self._retry("compacting", fold)
            self._retry("compacting", partial(self._r.hset, self._k("meta"), "base_epoch", str(e)))
            self._delete_epochs([e])

    def delete_all(self) -> int:
        pattern = self._k("*")
        n = 0
        cursor = 0
        while True:
            cursor, keys = self._retry(
                "deleting state", partial(self._r.scan, cursor, match=pattern, count=1000))
            if keys:
                self._retry("deleting state", partial(self._r.delete, *keys))
                n += len(keys)
            if cursor == 0:
                return n

    def summary(self) -> dict[str, dict[str, int]]:
        meta = self.load_meta()
        if meta is None:
            return {}
        names: set[str] = set()
        for raw in self._retry("summarising", lambda: self._r.smembers(self._k("bases"))):
            names.add(raw.decode())
        for e in self._epochs(meta.base_epoch + 1, meta.committed_epoch):
            for raw in self._retry("summarising", partial(self._r.smembers, self._k("e", e))):
                names.add(raw.decode())
        steps: dict[str, set[tuple[str, str]]] = {}
        for name in names:
            parts = name.split(":")
            # hr{p}:b:step:group  or  hr{p}:d:epoch:step:group
            step, group = (parts[2], parts[3]) if parts[1] == "b" else (parts[3], parts[4])
            steps.setdefault(step, set()).add((step, group))
        out: dict[str, dict[str, int]] = {}
        for step, pairs in steps.items():
            groups: list[Group] = [g if g == PARTS else int(g) for _, g in pairs]
            state = self.load(step, groups)
            out[step] = {
                "keys": sum(len(v) for v in state.values()),
                "bytes": sum(len(k) + len(b) for v in state.values() for k, b in v.items()),
                "groups": len(state),
            }
        return out

    def close(self) -> None:
        self._r.close()


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


def open_store(location: str, prefix: str, retry_for: float = 30.0, check: bool = True) -> Store:
    """Open the store named by ``location``: a Redis URL or a recovery directory.

    A directory must hold part files (``init_db_dir``) or a legacy
    ``<prefix>.sqlite3``; ``check=False`` skips the check that its parts can
    be rolled back to one epoch (for ``python -m headrace.recovery``).

    >>> import tempfile
    >>> from headrace.recovery import init_db_dir
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 2)
    >>> open_store(d, "flow").description  # doctest: +ELLIPSIS
    "SQLite store '...' (2 parts, flow 'flow')"
    """
    if check_location(location).startswith(REDIS_SCHEMES):
        return RedisStore(location, prefix, retry_for=retry_for)
    from headrace._engine._sqlite_store import SqliteStore

    return SqliteStore(location, prefix, check=check)
