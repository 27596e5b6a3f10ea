"""The Redis recovery store, and `open_store`, which picks a store for a location.

Where this sits: `RedisStore` implements the interface of `_store_base`
(data model, fencing, errors); its integrity checks are in
`_redis_integrity`. `open_store` returns a `RedisStore` for a Redis URL
and a `_sqlite_store.SqliteStore` for a local directory.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
import time
import uuid
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any, TypeVar

from headrace._engine._redis_cluster import ClusterLayout
from headrace._engine._redis_integrity import LUA_FOLD, WIDE_LUA
from headrace._engine._store_base import (
    HEARTBEAT_SECONDS,
    LEASE_SECONDS,
    LOAD_CHUNK,
    PARTS,
    Entry,
    FencedError,
    Group,
    LostStateError,
    Meta,
    RecoveryStoreError,
    Store,
    _count_store_error,
    _merge,
    _safe_url,
    fenced_message,
)
from headrace._engine._store_checks import CLUSTER_SCHEMES, REDIS_SCHEMES, check_location, refusal

log = logging.getLogger("headrace.recovery")
T = TypeVar("T")


class RedisStore(Store):
    """Snapshots in Redis under ``{prefix}`` (one hash tag: one cluster slot)."""

    cluster = False  # a Redis Cluster: `_redis_cluster.RedisClusterStore`

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
        self._r: Any = client if client is not None else self._connect()
        self._redis_errors: tuple[type[BaseException], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
            redis.exceptions.BusyLoadingError,
            OSError,
        )
        self.errors = 0
        self.last_error_at = 0.0
        self.on_error: Callable[[BaseException], None] | None = None
        self._committed = 0  # the epoch this execution committed last (or resumed from)
        self._metered = True  # errors count in the process's metrics (not in a forked child)

    forkable = True

    def _connect(self) -> Any:
        import redis

        return redis.Redis.from_url(
            self.url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=10
        )

    def for_child(self) -> RedisStore:
        """A copy for a forked child: a client of its own, never the parent's sockets.

        It writes for the same execution, so the store's fencing applies to
        it as to the parent. Its errors are counted in ``errors`` only (the
        parent adds them to its metrics).
        """
        child = copy.copy(self)
        child.__dict__.pop("_scripts", None)  # registered with the parent's client
        child.on_error = None
        child.errors = 0
        child._metered = False
        child._reconnect()
        return child

    def _reconnect(self) -> None:
        self._r = self._connect()

    # key names: every key carries the same {hash tag}
    def _k(self, *parts: object) -> str:
        return ":".join([f"hr{{{self.prefix}}}", *map(str, parts)])

    # a step's delta of one key group (or "p": its partitions) and its base;
    # `_redis_cluster.RedisClusterStore` gives each group a hash tag of its own
    def _dk(self, epoch: int, step_id: str, group: Group, key: str = "") -> str:
        return self._k("d", epoch, step_id, group)

    def _bk(self, step_id: str, group: Group, key: str = "") -> str:
        return self._k("b", step_id, group)

    def _scan_keys(self, pattern: str) -> Iterable[str]:
        """The names of the keys matching ``pattern``, in batches (SCAN)."""
        cursor = 0
        while True:
            cursor, found = self._retry(
                "listing keys", partial(self._r.scan, cursor, match=pattern, count=1000)
            )
            yield from (k.decode() if isinstance(k, bytes) else k for k in found)
            if cursor == 0:
                return

    def _own_patterns(self) -> list[str]:
        """SCAN patterns matching every key of this prefix (and only those)."""
        return [glob_escape(self._k("")) + "*"]

    def _before_verify(self, fields: dict[str, str]) -> None:
        """Finish what a crash left half done before the resume's check (see the cluster store)."""

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_for
        delay = 0.1
        while True:
            try:
                return fn()
            except Exception as exc:
                # A wrong password or a refused write (OOM, ...) stays so: not retried.
                why = refusal(self.description, what, exc)
                if why is None and not isinstance(exc, self._redis_errors):
                    raise
                self.errors += 1
                self.last_error_at = time.monotonic()
                if self._metered:
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
                p = self._r.pipeline(transaction=True)
                if names:
                    p.delete(*names)
                p.delete(self._k("e", e))
                p.zrem(self._k("epochs"), e)
                p.hdel(self._k("meta"), f"n:{e}", f"f:{e}")  # its manifest
                p.execute()

            self._retry("deleting uncommitted deltas", drop)
            n += len(names)
        return n

    def start_execution(self, worker_count: int, key_groups: int) -> Meta:
        from headrace._engine import _redis_integrity as ri
        from headrace._engine._integrity import MANIFEST_FIELD, leftovers_message

        prior = ri.meta_fields(self)
        if not prior.get("execution_id") and "committed_epoch" not in prior:
            left = ri.leftovers(self)  # before anything is written or deleted
            if left:
                raise LostStateError(leftovers_message(self.description, left, ri.hint(self)))
            prior = {}
        self.first_run = not prior
        self._take_over(uuid.uuid4().hex, worker_count, key_groups)
        if self.first_run:
            self._retry("recording the manifest", lambda: self._r.hset(self._k("meta"), MANIFEST_FIELD, "1"))
        meta = self.load_meta() or Meta(key_groups=key_groups)
        stale = self._epochs(meta.committed_epoch + 1, float("inf"))
        if stale:
            log.info("dropping %d uncommitted epoch(s) %s", len(stale), stale)
            self._delete_epochs(stale)
        fields = ri.meta_fields(self)
        ahead = [
            k
            for k in fields
            if k[:2] in ("n:", "f:") and k[2:].isdigit() and int(k[2:]) > meta.committed_epoch
        ]
        if ahead:  # the manifest of epochs that never committed
            self._retry("dropping uncommitted epochs", lambda: self._r.hdel(self._k("meta"), *ahead))
        if MANIFEST_FIELD in fields:
            self._before_verify(fields)
            ri.verify(self, meta.committed_epoch, "resuming")
        else:  # state of an older Headrace: counted now, checked from here on
            ri.rebuild_manifest(self)
        self._committed = meta.committed_epoch
        self.heartbeat()
        return meta

    def write_epoch(self, epoch: int, entries: list[Entry]) -> int:
        if not entries:
            return 0
        hashes, size = _by_hash(entries)
        if self.execution_id:
            self._fenced_write(epoch, {self._dk(epoch, st, g): kv for (st, g), kv in hashes.items()})
            return size
        by_key = {self._dk(epoch, st, g): dict(zip(*kv, strict=True)) for (st, g), kv in hashes.items()}

        def write() -> None:
            p = self._r.pipeline(transaction=False)
            for name, mapping in by_key.items():
                p.hset(name, mapping=mapping)
            p.sadd(self._k("e", epoch), *by_key)
            p.zadd(self._k("epochs"), {str(epoch): epoch})
            p.execute()

        self._retry(f"writing the snapshot of epoch {epoch}", write)
        return size

    def commit(self, epoch: int, epoch_bytes: int, marks: Mapping[str, str] | None = None) -> None:
        fields = {
            "committed_epoch": str(epoch),
            "committed_at": repr(time.time()),
            "epoch_bytes": str(epoch_bytes),
            **(marks or {}),
        }
        if self.execution_id:
            from headrace._engine._redis_integrity import verify

            # Everything committed so far, and this epoch's writes, must still be there.
            verify(self, epoch, f"committing epoch {epoch}")
            self._fenced_commit(epoch, fields)
            self._committed = epoch
            return
        self._retry(f"committing epoch {epoch}", lambda: self._r.hset(self._k("meta"), mapping=fields))

    # -- fencing: one execution owns the store (see the module docstring) -----

    def _script(self, name: str, source: str) -> Any:
        scripts: dict[str, Any] = self.__dict__.setdefault("_scripts", {})
        if name not in scripts:
            scripts[name] = self._r.register_script(source)
        return scripts[name]

    def _check(self, got: Any, what: str) -> None:
        """Raise `FencedError` unless a fenced script answered with our execution id.

        No execution id at all: the meta is gone (`LostStateError`); ``!N``:
        the committed epoch is N, not the one this execution committed last.
        """
        current = got.decode() if isinstance(got, bytes) else str(got or "")
        if current != self.execution_id:
            from headrace._engine import _integrity as ig
            from headrace._engine._redis_integrity import hint

            if not current:
                raise LostStateError(
                    ig.lost_meta_message(self.description, self.execution_id, what, hint(self))
                )
            if current.startswith("!"):
                raise LostStateError(
                    ig.went_back_message(self.description, self._committed, int(current[1:] or 0), hint(self))
                )
            raise FencedError(fenced_message(self.description, self.execution_id, current, what))

    def owner(self) -> str:
        got = self._retry("reading the execution id", lambda: self._r.hget(self._k("meta"), "execution_id"))
        return got.decode() if isinstance(got, bytes) else str(got or "")

    def _take_over(self, new_id: str, worker_count: int, key_groups: int) -> None:
        """Record ``new_id`` as the owner (fencing any other); wait for a live one to stop."""
        if self.execution_id:
            self.release()  # this handle's own previous execution
        fence = self._script("fence", _LUA_FENCE)
        keys = [self._k("meta"), self._k("lease")]
        args = [new_id, str(worker_count), str(key_groups)]
        prev = self._retry("recording the execution", lambda: fence(keys=keys, args=args))
        self.execution_id = new_id
        if not prev:
            return
        previous = prev.decode() if isinstance(prev, bytes) else str(prev)
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
            held = self._retry("waiting for the previous execution", lambda: self._r.get(self._k("lease")))
            if held is None or held.decode() != previous:
                log.info("execution %s stopped; execution %s owns %s", previous, new_id, self.description)
                return
            time.sleep(0.1)
        msg = (
            f"execution {previous} still holds the lease of {self.description} {wait:.0f}s "
            "after it was fenced; is its process stopped (SIGSTOP)? Stop it, then restart"
        )
        raise RecoveryStoreError(msg)

    def heartbeat(self) -> None:
        beat = self._script("beat", _LUA_BEAT)
        keys = [self._k("meta"), self._k("lease")]
        args = [self.execution_id, str(int(LEASE_SECONDS * 1000))]
        self._check(
            self._retry("renewing the lease", lambda: beat(keys=keys, args=args)), "committing anything more"
        )

    def lease_holder(self) -> str:
        held = self._retry("reading the lease", lambda: self._r.get(self._k("lease")))
        return held.decode() if isinstance(held, bytes) else str(held or "")

    # Next to the prefix's keys, not among them (``hr{p}:...``): the integrity
    # checks, snapshots and deletion never see it. The same hash tag: one slot.
    def _standby_key(self) -> str:
        return f"hr{{{self.prefix}}}-standby"

    def note_standby(self, who: str) -> None:
        note = f"{who} {time.time()!r}"
        self._retry("noting the standby", lambda: self._r.set(self._standby_key(), note, ex=300))

    def standby_note(self) -> str:
        got = self._retry("reading the standby note", lambda: self._r.get(self._standby_key()))
        return got.decode() if isinstance(got, bytes) else str(got or "")

    def release(self) -> None:
        if not self.execution_id:
            return
        drop = self._script("release", _LUA_RELEASE)
        keys, args = [self._k("lease")], [self.execution_id]
        try:
            self._retry("releasing the lease", lambda: drop(keys=keys, args=args))
        except RecoveryStoreError as exc:  # it runs out by itself
            log.warning("could not release the lease: %s", exc)

    def _fenced_write(self, epoch: int, by_key: dict[str, tuple[list[bytes], list[bytes]]]) -> None:
        # Each hash's fields travel as two arguments (`_packed`), which the
        # script unpacks: far fewer arguments for the client to encode. One
        # script per `_WRITE_CHUNK` fields or so, all in one round trip: a
        # large epoch never holds Redis busy for long in one script.
        write = self._script("write", _LUA_WRITE)
        head, tail = [self._k("meta")], [self._k("e", epoch), self._k("epochs")]
        calls: list[tuple[list[str], list[Any]]] = []
        keys: list[str] = []
        args: list[Any] = []
        fields = 0
        for name, (ks, vs) in by_key.items():
            keys.append(name)
            args.extend(_packed(ks, vs))
            fields += len(ks)
            if fields >= _WRITE_CHUNK:
                calls.append((keys, args))
                keys, args, fields = [], [], 0
        if keys:
            calls.append((keys, args))
        fence = [self.execution_id, str(epoch)]

        def run() -> list[Any]:
            p = self._r.pipeline(transaction=False)
            for names, packed in calls:
                write(keys=[*head, *names, *tail], args=[*fence, *packed], client=p)
            return p.execute()

        for got in self._retry(f"writing the snapshot of epoch {epoch}", run):
            self._check(got, f"writing the snapshot of epoch {epoch}")

    def _fenced_commit(self, epoch: int, fields: dict[str, str]) -> None:
        commit = self._script("commit", _LUA_COMMIT)
        keys = [self._k("meta")]
        args = [self.execution_id, str(self._committed), *(x for kv in fields.items() for x in kv)]
        got = self._retry(f"committing epoch {epoch}", lambda: commit(keys=keys, args=args))
        self._check(got, f"committing epoch {epoch}")

    def load(self, step_id: str, groups: Iterable[Group]) -> dict[Group, dict[str, bytes]]:
        meta = self.load_meta()
        groups = list(groups)
        if meta is None or not groups:
            return {}
        epochs = self._epochs(meta.base_epoch + 1, meta.committed_epoch)

        def read() -> list[Any]:
            p = self._r.pipeline(transaction=False)
            for g in groups:
                p.hgetall(self._bk(step_id, g))
                for e in epochs:
                    p.hgetall(self._dk(e, step_id, g))
            return p.execute()

        res = self._retry(f"loading the state of step {step_id!r}", read)
        out: dict[Group, dict[str, bytes]] = {}
        per = 1 + len(epochs)
        for i, g in enumerate(groups):
            layers = [{k.decode(): v for k, v in layer.items()} for layer in res[i * per : (i + 1) * per]]
            merged = _merge(layers)
            if merged:
                out[g] = merged
        return out

    def iter_load(self, step_id: str, groups: Iterable[Group]) -> Iterator[dict[str, bytes]]:
        # One pipeline per `LOAD_CHUNK` groups; each group's replies are
        # turned into its state and let go before the next chunk is read.
        # Each hash is read as HKEYS and HVALS, two flat lists (an HGETALL
        # reply is a map under RESP3, which costs the client ~4x more to
        # parse), in one MULTI per chunk: no other command can come
        # between the two and reorder the hash (a lookup moves a
        # rehashing hash's buckets), so the lists match.
        if self.cluster:  # groups on other slots: `load`, a chunk at a time
            yield from Store.iter_load(self, step_id, groups)
            return
        meta = self.load_meta()
        groups = list(groups)
        if meta is None or not groups:
            return
        epochs = self._epochs(meta.base_epoch + 1, meta.committed_epoch)
        per = 2 * (1 + len(epochs))
        chunks = [groups[i : i + LOAD_CHUNK] for i in range(0, len(groups), LOAD_CHUNK)]
        what = f"loading the state of step {step_id!r}"

        def read(chunk: list[Group]) -> list[Any]:
            p = self._r.pipeline(transaction=True)
            for g in chunk:
                for name in [self._bk(step_id, g), *(self._dk(e, step_id, g) for e in epochs)]:
                    p.hkeys(name)
                    p.hvals(name)
            return p.execute()

        for chunk in chunks:
            res = self._retry(what, partial(read, chunk))
            for j in range(len(chunk)):
                layers = res[j * per : (j + 1) * per]
                res[j * per : (j + 1) * per] = [None] * per  # let each group's replies go
                state = _layered(layers)
                if state:
                    yield state

    def compact(self, up_to_epoch: int) -> None:
        meta = self.load_meta()
        if meta is None:
            return
        up_to = min(up_to_epoch, meta.committed_epoch)
        epochs = self._epochs(meta.base_epoch + 1, up_to)
        if not epochs:
            return
        fold = self._script("fold", LUA_FOLD)
        for e in epochs:
            names = self._retry("compacting", partial(self._r.smembers, self._k("e", e)))
            prefix = self._k("d", e) + ":"

            def fold_all(names: Any = names, prefix: str = prefix) -> None:
                # One round trip: each delta hash folds into its base inside
                # Redis, atomically with the base's manifest (see _redis_integrity).
                p = self._r.pipeline(transaction=False)
                for raw in names:
                    name = raw.decode()
                    base = self._k("b") + ":" + name[len(prefix) :]
                    fold(keys=[self._k("meta"), base, self._k("bases"), name], client=p)
                p.execute()

            self._retry("compacting", fold_all)
            self._retry("compacting", partial(self._r.hset, self._k("meta"), "base_epoch", str(e)))
            self._delete_epochs([e])

    def delete_all(self) -> int:
        from headrace._engine._redis_integrity import own_keys

        kept = self._k("snap")  # kept snapshots (`_snapshots`) outlive the live state
        keys = [k for k in own_keys(self) if not k.startswith(kept)]
        for i in range(0, len(keys), 1000):
            self._retry("deleting state", partial(self._r.delete, *keys[i : i + 1000]))
        return len(keys)

    def expire_all(self, seconds: float) -> int:
        """Let every key of the live state expire in ``seconds`` (kept snapshots stay); return how many.

        Every key of the prefix: on a Redis Cluster, every key group's hash tag too.
        """
        from headrace._engine._redis_integrity import own_keys

        kept = self._k("snap")
        keys = [k for k in own_keys(self) if not k.startswith(kept)]
        for key in keys:
            self._retry("letting the state expire", partial(self._r.expire, key, max(1, int(seconds))))
        return len(keys)

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
        from headrace._engine._redis_integrity import key_step

        steps: dict[str, set[tuple[str, str]]] = {}
        for name in names:
            step, group = key_step(self, name)  # hr{p}:b:step:group  or  hr{p}:d:epoch:step:group
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

    # -- integrity (see _redis_integrity) ---------------------------------

    def check_server(self, allow_evicting: bool = False) -> None:
        """Refuse an evicting ``maxmemory-policy``; warn when Redis persists nothing."""
        from headrace._engine._redis_integrity import check_server

        check_server(self, allow_evicting)

    def _stored_flow(self) -> tuple[str, list[str]]:
        from headrace._engine import _redis_integrity as ri

        return ri.meta_fields(self).get("flow_id", ""), sorted(ri.stored_steps(self))

    def _drop_steps(self, steps: list[str]) -> None:
        from headrace._engine._redis_integrity import drop_steps

        drop_steps(self, steps)

    def _record_flow(self, flow_id: str, steps: list[str]) -> None:
        from headrace._engine._redis_integrity import record

        record(self, flow_id, steps)

    def reset_hint(self) -> str:
        from headrace._engine._redis_integrity import hint

        return hint(self)


# Fencing scripts: each compares the meta's execution id with ours (ARGV[1])
# and writes only if they match, atomically; each returns the current id.
_LUA_FENCE = """
local prev = redis.call('GET', KEYS[2])
redis.call('HSET', KEYS[1], 'execution_id', ARGV[1], 'worker_count', ARGV[2])
redis.call('HSETNX', KEYS[1], 'key_groups', ARGV[3])
if prev and prev ~= ARGV[1] then return prev end
return false
"""
_LUA_BEAT = """
local cur = redis.call('HGET', KEYS[1], 'execution_id')
if cur ~= ARGV[1] then return cur or '' end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return cur
"""
_LUA_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
_LUA_COMMIT = """
local cur = redis.call('HGET', KEYS[1], 'execution_id')
if cur ~= ARGV[1] then return cur or '' end
local was = redis.call('HGET', KEYS[1], 'committed_epoch') or '0'
if was ~= ARGV[2] then return '!' .. was end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return cur
"""
# Fields per snapshot-writing script (`RedisStore._fenced_write`).
_WRITE_CHUNK = 20_000

# ARGV: execution id, epoch, then per hash in KEYS[2..] two arguments: the
# lengths of its fields and values (4-byte little-endian each, alternating)
# and those fields and values, concatenated (`_packed`).
_LUA_WRITE = (
    WIDE_LUA
    + """
local cur = redis.call('HGET', KEYS[1], 'execution_id')
if cur ~= ARGV[1] then return cur or '' end
for k = 2, #KEYS - 2 do
  local lens, data = ARGV[2 * k - 1], ARGV[2 * k]
  local pos, n, added = 1, 0, 0
  local t = {}
  local wide = #lens > 1024 and redis.call('EXISTS', KEYS[k]) == 0
  if wide then redis.call('HSET', KEYS[k], WIDE, WIDE_VALUE) end
  for j = 1, #lens, 4 do
    local len = struct.unpack('<I4', lens, j)
    n = n + 1
    t[n] = string.sub(data, pos, pos + len - 1)
    pos = pos + len
    if n >= 4000 then
      added = added + redis.call('HSET', KEYS[k], unpack(t, 1, n))
      n = 0
    end
  end
  if n > 0 then added = added + redis.call('HSET', KEYS[k], unpack(t, 1, n)) end
  if wide then redis.call('HDEL', KEYS[k], WIDE) end
  -- the epoch's manifest: keys and fields written (exact also when retried)
  if redis.call('SADD', KEYS[#KEYS - 1], KEYS[k]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[2], 1)
  end
  if added > 0 then redis.call('HINCRBY', KEYS[1], 'f:' .. ARGV[2], added) end
end
redis.call('ZADD', KEYS[#KEYS], ARGV[2], ARGV[2])
return cur
"""
)


def _layered(flat: list[list[bytes]]) -> dict[str, bytes]:
    """A group's layers as HKEYS, HVALS replies (base, then each delta) as its state.

    Keys are decoded and tombstones (empty values) applied, layer after
    layer; the loops are C's but for a layer holding a tombstone.

    >>> _layered([[b"a", b"b"], [b"1", b"2"], [b"a", b"c"], [b"", b"3"], [b"a"], [b"4"]])
    {'b': b'2', 'c': b'3', 'a': b'4'}
    """
    out: dict[str, bytes] = {}
    decode = bytes.decode
    for i in range(0, len(flat), 2):
        keys, values = flat[i], flat[i + 1]
        if not keys:
            continue
        if not out:
            out = dict(zip(map(decode, keys), values, strict=True))
        else:
            out.update(zip(map(decode, keys), values, strict=True))
        if b"" in values:
            for k, v in zip(keys, values, strict=True):
                if not v:
                    del out[k.decode()]
    return out


def _by_hash(entries: list[Entry]) -> tuple[dict[tuple[str, Group], tuple[list[bytes], list[bytes]]], int]:
    """Entries grouped by ``(step, group)``: encoded keys and values, in order; and their size.

    One pass with a list per hash (an epoch may hold a million entries: this
    is 4-5x cheaper than sorting them by hash).

    >>> _by_hash([("s", 1, "a", b"x"), ("s", 2, "b", b""), ("s", 1, "c", b"y")])
    ({('s', 1): ([b'a', b'c'], [b'x', b'y']), ('s', 2): ([b'b'], [b''])}, 5)
    """
    out: dict[tuple[str, Group], tuple[list[bytes], list[bytes]]] = {}
    get = out.get
    size = 0
    for step, group, key, value in entries:
        kv = get((step, group))
        if kv is None:
            kv = out[step, group] = ([], [])
        encoded = key.encode()
        kv[0].append(encoded)
        kv[1].append(value)
        size += len(key) + len(value)
    return out, size


def _packed(keys: list[bytes], values: list[bytes]) -> tuple[bytes, bytes]:
    """One hash's fields as two script arguments: their lengths, and their bytes.

    >>> _packed([b"k"], [b"vv"])
    (b'\\x01\\x00\\x00\\x00\\x02\\x00\\x00\\x00', b'kvv')
    """
    flat: list[bytes] = [b""] * (2 * len(keys))
    flat[0::2] = keys
    flat[1::2] = values
    lens = array("I", map(len, flat))
    if sys.byteorder != "little":
        lens.byteswap()
    return lens.tobytes(), b"".join(flat)


class RedisClusterStore(ClusterLayout, RedisStore):
    """`RedisStore` on a Redis Cluster (``redis+cluster://``): see `_redis_cluster`."""


def glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN pattern.

    >>> glob_escape("hr{a*b}:")
    'hr{a\\\\*b}:'
    """
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


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
    if check_location(location).startswith(CLUSTER_SCHEMES):
        return RedisClusterStore(location, prefix, retry_for=retry_for)
    if location.startswith(REDIS_SCHEMES):
        return RedisStore(location, prefix, retry_for=retry_for)
    from headrace._engine._sqlite_store import SqliteStore

    return SqliteStore(location, prefix, check=check)
