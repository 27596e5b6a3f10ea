"""The recovery store on a Redis Cluster: state sharded by key group, epochs still atomic.

Where this sits: `ClusterLayout` is what `_store.RedisClusterStore`, the
`_store.RedisStore` of a ``redis+cluster://`` URL (`_store.open_store`),
does differently, on redis-py's ``RedisCluster``; it sits below `_store`,
as `_redis_integrity` does, and leans on ``RedisStore`` for the rest. A
single-node Redis keeps ``RedisStore``'s layout, with every key under one
hash tag; here every key group has a hash tag of its
own, so its keys land on their own slot and the slots, and the write load,
spread over the cluster's primaries:

- ``hr{p:g<G>}:d:<e>~<x>:<step>:<G>`` - a step's delta of key group ``G``
  in epoch ``e``, written by execution ``x`` (the first 12 characters of
  its id); ``hr{p:g<G>}:b:<step>:<G>`` - its compacted base;
- ``hr{p:p<B>}:d:...:<step>:p`` and ``hr{p:p<B>}:b:<step>:p`` - source and
  sink positions, each partition in bucket ``B = crc32(step, partition) %
  16`` (`PART_BUCKETS`);
- ``hr{p}:...`` - the commit slot, as in ``RedisStore``: the meta (the
  commit record: committed epoch, fencing, manifest), the lease, the epoch
  index ``hr{p}:epochs``, each epoch's key list ``hr{p}:e:<e>``, the base's
  key list ``hr{p}:bases`` and its per-key field counts ``hr{p}:bc``, and
  the write tokens ``hr{p}:w:<e>``.

The commit protocol. A worker's ``write_epoch`` writes its data first, on
the group slots (one pipeline, grouped by node), then records it on the
commit slot in one fenced script (`_LUA_RECORD`): the meta must still name
its execution; the key names go to the epoch's key list, their counts to
the manifest (``n:<e>``, ``f:<e>``), exactly once per write (the write's
token). A fenced or crashed writer leaves at most data no key list names,
under its own execution's key names, which nothing ever reads. The commit
itself is ``RedisStore``'s: the manifest is checked against the keys there
(on every slot), then one fenced script sets ``committed_epoch`` on the
commit slot, last. A resume reads the commit record first and drops
everything listed above it; so an epoch is committed whole or not at all,
whatever is killed when.

Compaction is per slot: each base key folds its delta in a script of its
own slot (`_LUA_FOLD1`), then one script on the commit slot
(`_LUA_FOLDED`) records the bases' counts and the new ``base_epoch``. The
meta field ``compacting`` marks an epoch whose fold started: a resume
finishes it (folding is idempotent) before it checks the manifest.
"""

from __future__ import annotations

import logging
import re
import uuid
import zlib
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from headrace._engine._store_base import PARTS, Entry, Group, Meta, RecoveryStoreError, _merge, _safe_url
from headrace._engine._store_checks import cluster_nodes

log = logging.getLogger("headrace.recovery")

PART_BUCKETS = 16
"""Source and sink positions are spread over this many hash tags per dataflow."""


if TYPE_CHECKING:
    from headrace._engine._store import RedisStore as _Base
else:
    _Base = object


class ClusterLayout(_Base):
    """Snapshots on a Redis Cluster: a hash tag per key group, the commit record in its own slot.

    A mixin of `_store.RedisClusterStore` (before ``RedisStore``).
    """

    cluster = True

    def __init__(self, url: str, prefix: str, retry_for: float = 30.0) -> None:
        import redis
        from redis.cluster import ClusterNode, RedisCluster

        cfg = cluster_nodes(url)
        self._new_client = partial(
            RedisCluster,
            startup_nodes=[ClusterNode(h, p) for h, p in cfg["nodes"]],
            username=cfg["username"],
            password=cfg["password"],
            ssl=cfg["ssl"],
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=10,
        )
        self._client: Any = None
        super().__init__(url, prefix, retry_for, client=_Lazy())
        self.description = f"Redis Cluster at {_safe_url(url)} (prefix {prefix!r})"
        self._redis_errors = (
            *self._redis_errors,
            redis.exceptions.ClusterError,
            redis.exceptions.TryAgainError,
            redis.exceptions.RedisClusterException,
        )
        self._tag_re = re.compile(r"hr\{" + re.escape(prefix) + r"(?::[gp]\d+)?\}:")

    # The client connects when it is created: it is created at its first use,
    # inside `_retry`, so an unreachable cluster is retried and worded as such.
    @property
    def _r(self) -> Any:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    @_r.setter
    def _r(self, value: Any) -> None:
        if not isinstance(value, _Lazy):
            self._client = value

    def _script(self, name: str, source: str) -> Any:
        def call(keys: list[str], args: list[Any]) -> Any:
            return super(ClusterLayout, self)._script(name, source)(keys=keys, args=args)

        return call

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _reconnect(self) -> None:
        self._client = None  # a new client at the next use

    # -- key names ---------------------------------------------------------

    def _tag(self, step_id: str, group: Group, key: str) -> str:
        if group == PARTS:
            bucket = zlib.crc32(f"{step_id}\x00{key}".encode()) % PART_BUCKETS
            return f"hr{{{self.prefix}:p{bucket}}}"
        return f"hr{{{self.prefix}:g{group}}}"

    def _dk(self, epoch: int, step_id: str, group: Group, key: str = "") -> str:
        tag = self._tag(step_id, group, key)
        return f"{tag}:d:{epoch}~{self.execution_id[:12] or 'admin'}:{step_id}:{group}"

    def _bk(self, step_id: str, group: Group, key: str = "") -> str:
        return f"{self._tag(step_id, group, key)}:b:{step_id}:{group}"

    @staticmethod
    def _base_of(name: str) -> str:
        """The base key a delta key folds into (the same hash tag)."""
        tag, _, rest = name.partition("}:")
        _d, _e, tail = rest.split(":", 2)
        return f"{tag}}}:b:{tail}"

    def _own_patterns(self) -> list[str]:
        head = _glob_escape(f"hr{{{self.prefix}")
        return [_glob_escape(self._k("")) + "*", head + ":g*", head + ":p*"]

    def _scan_keys(self, pattern: str) -> Iterable[str]:
        keys = self._retry("listing keys", lambda: list(self._r.scan_iter(match=pattern, count=1000)))
        for raw in keys:
            name = raw.decode() if isinstance(raw, bytes) else raw
            if "*" in self.prefix or self._tag_re.match(name):
                yield name

    # -- writing -----------------------------------------------------------

    def write_epoch(self, epoch: int, entries: list[Entry]) -> int:
        by_key: dict[str, dict[str, bytes]] = {}
        size = 0
        for step_id, group, key, value in entries:
            by_key.setdefault(self._dk(epoch, step_id, group, key), {})[key] = value
            size += len(key) + len(value)
        if not by_key:
            return 0
        what = f"writing the snapshot of epoch {epoch}"

        def data() -> list[Any]:
            p = self._r.pipeline(transaction=False)
            for name, mapping in by_key.items():
                p.hset(name, mapping=mapping)
            return p.execute()

        added = self._retry(what, data)
        args: list[Any] = [self.execution_id, str(epoch), uuid.uuid4().hex]
        for name, n in zip(by_key, added, strict=True):
            args.extend((name, str(n)))
        keys = [self._k("meta"), self._k("e", epoch), self._k("epochs"), self._k("w", epoch)]
        record = self._script("record", _LUA_RECORD)
        got = self._retry(what, lambda: record(keys=keys, args=args))
        if self.execution_id:
            self._check(got, what)
        return size

    def _delete_epochs(self, epochs: list[int]) -> int:
        n = 0
        for e in epochs:
            raw = self._retry("listing delta keys", partial(self._r.smembers, self._k("e", e)))
            names = [k.decode() if isinstance(k, bytes) else k for k in raw]
            # the data first (other slots), then its listing: nothing listed is ever missing
            for i in range(0, len(names), 1000):
                self._retry("deleting uncommitted deltas", partial(self._r.delete, *names[i : i + 1000]))

            def unlist(e: int = e) -> None:
                p = self._r.pipeline(transaction=True)
                p.delete(self._k("e", e), self._k("w", e))
                p.zrem(self._k("epochs"), e)
                p.hdel(self._k("meta"), f"n:{e}", f"f:{e}")
                p.execute()

            self._retry("deleting uncommitted deltas", unlist)
            n += len(names)
        return n

    # -- reading -----------------------------------------------------------

    def load(self, step_id: str, groups: Iterable[Group]) -> dict[Group, dict[str, bytes]]:
        from headrace._engine._redis_integrity import _listings, key_step

        meta = self.load_meta()
        wanted = {str(g): g for g in groups}
        if meta is None or not wanted:
            return {}
        epochs = self._epochs(meta.base_epoch + 1, meta.committed_epoch)
        deltas, bases, _ = _listings(self, epochs)
        # per group: its base keys, then each epoch's delta keys, in order
        layers: dict[str, list[str]] = {g: [] for g in wanted}
        for names in [bases, *deltas]:
            for name in names:
                step, group = key_step(self, name)
                if step == step_id and group in layers:
                    layers[group].append(name)
        order = [n for names in layers.values() for n in names]

        def read() -> list[Any]:
            p = self._r.pipeline(transaction=False)
            for name in order:
                p.hgetall(name)
            return p.execute()

        got = dict(zip(order, self._retry(f"loading the state of step {step_id!r}", read), strict=True))
        out: dict[Group, dict[str, bytes]] = {}
        for g, names in layers.items():
            merged = _merge({k.decode(): v for k, v in got[n].items()} for n in names)
            if merged:
                out[wanted[g]] = merged
        return out

    # -- compaction --------------------------------------------------------

    def compact(self, up_to_epoch: int) -> None:
        meta = self.load_meta()
        if meta is None:
            return
        for e in self._epochs(meta.base_epoch + 1, min(up_to_epoch, meta.committed_epoch)):
            self._fold_epoch(e)

    def _fold_epoch(self, e: int) -> None:
        """Fold epoch ``e``'s deltas into the bases, slot by slot, then record it."""
        self._retry("compacting", partial(self._r.hset, self._k("meta"), "compacting", str(e)))
        raw = self._retry("compacting", partial(self._r.smembers, self._k("e", e)))
        names = sorted(k.decode() if isinstance(k, bytes) else k for k in raw)

        def read() -> list[Any]:
            p = self._r.pipeline(transaction=False)
            for name in names:
                p.hgetall(name)
            return p.execute()

        layers = self._retry("compacting", read) if names else []
        fold = self._script("fold1", _LUA_FOLD1)
        done: list[Any] = [str(e)]
        for name, layer in zip(names, layers, strict=True):
            sets = {k: v for k, v in layer.items() if v}
            args: list[Any] = [str(len(sets))]
            for k, v in sets.items():
                args.extend((k, v))
            args.extend(k for k, v in layer.items() if not v)
            base = self._base_of(name)
            after = self._retry("compacting", partial(fold, keys=[base], args=args))
            done.extend((base, str(after)))
        keys = [
            self._k("meta"),
            self._k("bases"),
            self._k("bc"),
            self._k("e", e),
            self._k("w", e),
            self._k("epochs"),
        ]
        folded = self._script("folded", _LUA_FOLDED)
        self._retry("compacting", lambda: folded(keys=keys, args=done))
        for i in range(0, len(names), 1000):  # no longer listed: the deltas go
            self._retry("compacting", partial(self._r.delete, *names[i : i + 1000]))

    def _before_verify(self, fields: dict[str, str]) -> None:
        """Finish a compaction that a crash cut short (its fold is idempotent)."""
        e = int(fields.get("compacting", 0) or 0)
        if not e:
            return
        if int(fields.get("base_epoch", 0)) < e <= int(fields.get("committed_epoch", 0)):
            log.info("finishing the compaction of epoch %d that the last run left half done", e)
            self._fold_epoch(e)
        else:
            self._retry("compacting", partial(self._r.hdel, self._k("meta"), "compacting"))

    def start_execution(self, worker_count: int, key_groups: int) -> Meta:
        from headrace._engine._redis_integrity import hint, meta_fields

        restoring = meta_fields(self).get("restoring")
        if restoring:  # see `restore_bases`
            msg = (
                f"{self.description}: the restore of kept snapshot {restoring!r} did not finish "
                f"(its process was stopped); restore it again (python -m headrace.recovery restore "
                f"{_safe_url(self.url)} {restoring} --prefix {self.prefix}), or start over: {hint(self)}"
            )
            raise RecoveryStoreError(msg)
        return super().start_execution(worker_count, key_groups)

    # -- kept snapshots (`_snapshots`) -------------------------------------

    def restore_bases(
        self, name: str, state: dict[tuple[str, str], dict[str, bytes]], meta: dict[str, str]
    ) -> bool:
        """Make ``state`` the committed base with ``meta``; ``False`` if the store holds state.

        The slots share no transaction: the meta is marked ``restoring``
        first, the bases are written on their slots, then one transaction on
        the commit slot lists them and writes the meta, unmarked. A restore
        stopped halfway stops every start (`start_execution`) until the same
        restore is run again, which clears what it left and starts over.
        """
        from headrace._engine._redis_integrity import leftovers, meta_fields

        fields = meta_fields(self)
        if fields.get("restoring") == name:
            self.delete_all()
        elif fields or leftovers(self, limit=1):
            return False
        self._retry(
            f"restoring kept snapshot {name!r}", partial(self._r.hset, self._k("meta"), "restoring", name)
        )
        bases: dict[str, dict[str, bytes]] = {}
        for (step, group), mapping in state.items():
            for k, v in mapping.items():
                bases.setdefault(self._bk(step, group, k), {})[k] = v
        names = list(bases)
        for i in range(0, len(names), 500):

            def put(chunk: list[str] = names[i : i + 500]) -> None:
                p = self._r.pipeline(transaction=False)
                for n in chunk:
                    p.hset(n, mapping=bases[n])
                p.execute()

            self._retry(f"restoring kept snapshot {name!r}", put)
        record = {
            **meta,
            "base_keys": str(len(names)),
            "base_fields": str(sum(len(m) for m in bases.values())),
        }

        def commit() -> None:
            p = self._r.pipeline(transaction=True)
            if names:
                p.sadd(self._k("bases"), *names)
                p.hset(self._k("bc"), mapping={n: str(len(m)) for n, m in bases.items()})
            p.hset(self._k("meta"), mapping=record)
            p.hdel(self._k("meta"), "restoring")
            p.execute()

        self._retry(f"restoring kept snapshot {name!r}", commit)
        return True

    # -- server settings ---------------------------------------------------

    def check_server(self, allow_evicting: bool = False) -> None:
        """Refuse an evicting ``maxmemory-policy`` on any primary; warn when one persists nothing."""
        import redis
        from redis.cluster import RedisCluster

        from headrace._engine._integrity import redis_config_problems

        per_node: dict[str, dict[str, str]] = {}
        for name in ("maxmemory-policy", "save", "appendonly"):
            try:
                got = self._retry(
                    "reading the Redis settings",
                    partial(self._r.config_get, name, target_nodes=RedisCluster.PRIMARIES),
                )
            except redis.exceptions.ResponseError:  # CONFIG disabled (managed Redis)
                continue
            for node, values in got.items():
                for k, v in values.items():
                    per_node.setdefault(str(node), {})[_s(k)] = _s(v)
        warned = False
        for node, config in sorted(per_node.items()):
            error, warning = redis_config_problems(
                f"{self.description}, node {node},", config, allow_evicting
            )
            if error is not None:
                raise RecoveryStoreError(error)
            if warning is not None and not warned:
                log.warning("%s", warning)
                warned = True


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class _Lazy:
    """Stands for the cluster client until its first use."""


def _s(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


# Record one worker's write of an epoch on the commit slot, fenced: the
# key names into the epoch's list, their counts into the manifest, once per
# write token (a retried record changes nothing).
# KEYS: meta, e:<e>, epochs, w:<e>. ARGV: execution id ("" = admin), epoch,
# token, then name, fields added pairs.
_LUA_RECORD = """
local cur = redis.call('HGET', KEYS[1], 'execution_id')
if ARGV[1] ~= '' and cur ~= ARGV[1] then return cur or '' end
if redis.call('SADD', KEYS[4], ARGV[3]) == 1 then
  for i = 4, #ARGV, 2 do
    if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
      redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[2], 1)
    end
    local added = tonumber(ARGV[i + 1])
    if added > 0 then redis.call('HINCRBY', KEYS[1], 'f:' .. ARGV[2], added) end
  end
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[2])
end
return cur or ''
"""

# Fold one delta into its base, on the base's slot; return the base's length.
# KEYS: base. ARGV: number of sets, then k, v pairs, then deleted keys.
_LUA_FOLD1 = """
local n = tonumber(ARGV[1])
local i = 2
for _ = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
return redis.call('HLEN', KEYS[1])
"""

# Record a folded epoch on the commit slot: the bases' list and counts, the
# new base epoch; the epoch's list, tokens and manifest go.
# KEYS: meta, bases, bc, e:<e>, w:<e>, epochs. ARGV: epoch, then base, length pairs.
_LUA_FOLDED = """
local df = 0
for i = 2, #ARGV, 2 do
  local name, after = ARGV[i], tonumber(ARGV[i + 1])
  df = df + after - tonumber(redis.call('HGET', KEYS[3], name) or '0')
  if after > 0 then
    redis.call('HSET', KEYS[3], name, after)
    if redis.call('SADD', KEYS[2], name) == 1 then redis.call('HINCRBY', KEYS[1], 'base_keys', 1) end
  else
    redis.call('HDEL', KEYS[3], name)
    if redis.call('SREM', KEYS[2], name) == 1 then redis.call('HINCRBY', KEYS[1], 'base_keys', -1) end
  end
end
redis.call('HINCRBY', KEYS[1], 'base_fields', df)
redis.call('HSET', KEYS[1], 'base_epoch', ARGV[1])
redis.call('HDEL', KEYS[1], 'compacting', 'n:' .. ARGV[1], 'f:' .. ARGV[1])
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[6], ARGV[1])
return 1
"""
