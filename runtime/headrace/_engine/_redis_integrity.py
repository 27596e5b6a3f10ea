"""`RedisStore`'s integrity checks: manifests, lost state, stored steps, server settings.

The manifest lives in the meta hash ``hr{p}:meta``: the fenced snapshot
write (``_store._LUA_WRITE``) adds, atomically with the data, ``n:<e>``
(keys written in epoch ``e``) and ``f:<e>`` (their fields); compaction's
fold (`LUA_FOLD`) keeps ``base_keys`` and ``base_fields`` for the base,
also atomically. `verify` compares them with the keys there, on resume and
before each commit. The field ``manifest`` says the counts are complete
(set at a first run; a store of an older Headrace gets them rebuilt, by
`rebuild_manifest`, at its next start). See `_integrity` for the words.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from headrace._engine._integrity import (
    MANIFEST_FIELD,
    Layer,
    layer_problems,
    lost_meta_message,
    lost_state_message,
    redis_config_problems,
    reset_hint,
)

if TYPE_CHECKING:
    from headrace._engine._store import RedisStore

log = logging.getLogger("headrace.recovery")

# A hash created with more than 128 fields at once is made a hashtable first
# (a field with a value longer than `hash-max-listpack-value`, deleted again
# once the fields are in): Redis 7.0 would grow it as a listpack up to
# `hash-max-listpack-entries`, scanning and reallocating it for every field,
# 20x slower for a snapshot's delta. The field's name, the byte 0xff, is no
# key's UTF-8, so it can't meet a real one.
WIDE_LUA = """
local WIDE, WIDE_VALUE = '\\255', string.rep('w', 100)
"""

# Fold one delta hash into its base hash inside Redis, keeping the base's
# manifest. KEYS: meta, base, bases set, delta. An empty value is a tombstone.
LUA_FOLD = (
    WIDE_LUA
    + """
local before = redis.call('HLEN', KEYS[2])
local d = redis.call('HGETALL', KEYS[4])
local sets, dels = {}, {}
local wide = before == 0 and #d > 256
if wide then redis.call('HSET', KEYS[2], WIDE, WIDE_VALUE) end
for i = 1, #d, 2 do
  if d[i + 1] == '' then
    dels[#dels + 1] = d[i]
  else
    sets[#sets + 1] = d[i]
    sets[#sets + 1] = d[i + 1]
  end
  if #sets >= 4000 then
    redis.call('HSET', KEYS[2], unpack(sets))
    sets = {}
  end
  if #dels >= 4000 then
    redis.call('HDEL', KEYS[2], unpack(dels))
    dels = {}
  end
end
if #sets > 0 then redis.call('HSET', KEYS[2], unpack(sets)) end
if #dels > 0 then redis.call('HDEL', KEYS[2], unpack(dels)) end
if wide then redis.call('HDEL', KEYS[2], WIDE) end
local after = redis.call('HLEN', KEYS[2])
if after > 0 then
  if redis.call('SADD', KEYS[3], KEYS[2]) == 1 then redis.call('HINCRBY', KEYS[1], 'base_keys', 1) end
else
  if redis.call('SREM', KEYS[3], KEYS[2]) == 1 then redis.call('HINCRBY', KEYS[1], 'base_keys', -1) end
end
redis.call('HINCRBY', KEYS[1], 'base_fields', after - before)
return after
"""
)


def _s(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def meta_fields(store: RedisStore) -> dict[str, str]:
    """The raw meta hash (empty if there is none)."""
    raw = store._retry("reading meta", lambda: store._r.hgetall(store._k("meta")))
    return {_s(k): _s(v) for k, v in raw.items()}


def hint(store: RedisStore) -> str:
    """The explicit reset for this store."""
    from headrace._engine._store_base import _safe_url

    return reset_hint(_safe_url(store.url), store.prefix)


def key_step(store: RedisStore, name: str) -> tuple[str, str]:
    """``(step, group)`` of a base (``hr{p}:b:S:G``) or delta (``hr{p}:d:E:S:G``) key.

    On a Redis Cluster the hash tag is the group's own (``hr{p:g5}:b:S:5``).
    """
    head = store._k("")
    rest = name[len(head) :] if name.startswith(head) else name.partition("}:")[2]
    kind, _, rest = rest.partition(":")
    if kind == "d":
        rest = rest.partition(":")[2]
    step, _, group = rest.rpartition(":")
    return step, group


def describe_key(store: RedisStore, name: str) -> str:
    """A key's name with what it held, for messages."""
    step, group = key_step(store, name)
    what = (
        f"partition positions of step {step!r}"
        if group == "p"
        else f"state of step {step!r}, key group {group}"
    )
    return f"{name} ({what})"


def own_keys(store: RedisStore) -> list[str]:
    """Every key of this prefix (SCAN; on a Redis Cluster, every primary's, every tag's)."""
    return [n for pattern in store._own_patterns() for n in store._scan_keys(pattern)]


def leftovers(store: RedisStore, limit: int = 10) -> list[str]:
    """Keys of this prefix other than the meta, the lease and kept snapshots (at most ``limit``)."""
    skip = {store._k("meta"), store._k("lease")}
    kept = store._k("snap")  # hr{p}:snaps and hr{p}:snap:...: apart from the live state
    found = [n for n in own_keys(store) if n not in skip and not n.startswith(kept)]
    return sorted(found)[:limit]


def _listings(store: RedisStore, epochs: list[int]) -> tuple[list[list[str]], list[str], set[int]]:
    """The delta keys each epoch lists, the base keys, and the epochs the index holds."""

    def read() -> list[Any]:
        p = store._r.pipeline(transaction=True)
        for e in epochs:
            p.smembers(store._k("e", e))
        p.smembers(store._k("bases"))
        p.zrange(store._k("epochs"), 0, -1)
        return p.execute()

    res = store._retry("checking the committed state", read)
    deltas = [sorted(map(_s, r)) for r in res[: len(epochs)]]
    return deltas, sorted(map(_s, res[len(epochs)])), {int(_s(e)) for e in res[-1]}


def _lengths(store: RedisStore, names: list[str]) -> list[int]:
    def read() -> list[Any]:
        p = store._r.pipeline(transaction=False)
        for n in names:
            p.hlen(n)
        return p.execute()

    return [int(x) for x in store._retry("checking the committed state", read)] if names else []


def _recorded_epochs(fields: dict[str, str], lo: int, hi: int) -> list[int]:
    return sorted(
        int(k[2:]) for k in fields if k.startswith("n:") and k[2:].isdigit() and lo < int(k[2:]) <= hi
    )


def layers(store: RedisStore, fields: dict[str, str], upto: int) -> list[Layer]:
    """What the manifest in ``fields`` recorded up to epoch ``upto``, against what is there."""
    base_epoch = int(fields.get("base_epoch", 0))
    epochs = _recorded_epochs(fields, base_epoch, upto)
    deltas, bases, indexed = _listings(store, epochs)
    lengths = _lengths(store, [n for names in deltas for n in names] + bases)
    out: list[Layer] = []
    i = 0
    for e, names in zip(epochs, deltas, strict=True):
        lens = lengths[i : i + len(names)]
        i += len(names)
        missing = [describe_key(store, n) for n, ln in zip(names, lens, strict=True) if not ln]
        recorded = int(fields.get(f"n:{e}", 0))
        if len(names) < recorded:
            missing.append(f"{recorded - len(names)} of {recorded} keys from the list {store._k('e', e)}")
        if e not in indexed:
            missing.append(f"epoch {e} in the index {store._k('epochs')}")
        out.append(
            Layer(f"the snapshot of epoch {e}", int(fields.get(f"f:{e}", 0)), sum(lens), tuple(missing))
        )
    lens = lengths[i:]
    missing = [describe_key(store, n) for n, ln in zip(bases, lens, strict=True) if not ln]
    recorded_keys = int(fields.get("base_keys", 0))
    if len(bases) < recorded_keys:
        missing.append(
            f"{recorded_keys - len(bases)} of {recorded_keys} keys from the list {store._k('bases')}"
        )
    out.append(
        Layer(
            f"the compacted base (up to epoch {base_epoch})",
            int(fields.get("base_fields", 0)),
            sum(lens),
            tuple(missing),
        )
    )
    return out


def verify(store: RedisStore, upto: int, when: str, fields: dict[str, str] | None = None) -> None:
    """Raise `LostStateError` if anything the manifest recorded up to ``upto`` is gone."""
    from headrace._engine._store_base import LostStateError

    fields = meta_fields(store) if fields is None else fields
    if not fields.get("execution_id"):
        raise LostStateError(
            lost_meta_message(store.description, store.execution_id or "-", when, hint(store))
        )
    if MANIFEST_FIELD not in fields:
        return  # written by an older Headrace: rebuilt at the next start
    problems = layer_problems(layers(store, fields, upto))
    if problems:
        committed = int(fields.get("committed_epoch", 0))
        raise LostStateError(lost_state_message(store.description, committed, problems, when, hint(store)))


def rebuild_manifest(store: RedisStore) -> None:
    """Count what is there and record it as the manifest (an older store; dropped steps)."""
    fields = meta_fields(store)
    committed = int(fields.get("committed_epoch", 0))
    base_epoch = int(fields.get("base_epoch", 0))
    epochs = sorted(
        e
        for e in (
            int(_s(x))
            for x in store._retry("counting state", lambda: store._r.zrange(store._k("epochs"), 0, -1))
        )
        if base_epoch < e <= committed
    )
    deltas, bases, _ = _listings(store, epochs)
    lengths = _lengths(store, [n for names in deltas for n in names] + bases)
    new: dict[str, str] = {MANIFEST_FIELD: "1"}
    i = 0
    for e, names in zip(epochs, deltas, strict=True):
        lens = lengths[i : i + len(names)]
        i += len(names)
        new[f"n:{e}"] = str(sum(1 for ln in lens if ln))
        new[f"f:{e}"] = str(sum(lens))
    empty = [n for n, ln in zip(bases, lengths[i:], strict=True) if not ln]
    new["base_keys"] = str(len(bases) - len(empty))
    new["base_fields"] = str(sum(lengths[i:]))
    stale = [k for k in fields if k[:2] in ("n:", "f:")]

    def write() -> None:
        p = store._r.pipeline(transaction=True)
        if stale:
            p.hdel(store._k("meta"), *stale)
        if empty:
            p.srem(store._k("bases"), *empty)
        p.hset(store._k("meta"), mapping=new)
        p.execute()

    store._retry("recording the manifest", write)


def stored_steps(store: RedisStore) -> dict[str, list[str]]:
    """The steps with committed state, each with the keys holding it."""
    fields = meta_fields(store)
    committed = int(fields.get("committed_epoch", 0))
    base_epoch = int(fields.get("base_epoch", 0))
    epochs = sorted(
        e
        for e in (
            int(_s(x))
            for x in store._retry("listing state", lambda: store._r.zrange(store._k("epochs"), 0, -1))
        )
        if base_epoch < e <= committed
    )
    deltas, bases, _ = _listings(store, epochs)
    out: dict[str, list[str]] = {}
    for name in [n for names in deltas for n in names] + bases:
        out.setdefault(key_step(store, name)[0], []).append(name)
    return out


def drop_steps(store: RedisStore, steps: list[str]) -> int:
    """Delete the committed state of ``steps``; return the number of keys deleted."""
    by_step = stored_steps(store)
    names = [n for s in steps for n in by_step.get(s, [])]
    if not names:
        return 0
    epoch_sets = store._retry("listing epochs", lambda: store._r.zrange(store._k("epochs"), 0, -1))

    if store.cluster:  # the data is on other slots: deleted first, then unlisted
        store._retry("dropping state", partial(store._r.delete, *names))

    def drop() -> None:
        p = store._r.pipeline(transaction=True)
        if not store.cluster:
            p.delete(*names)
        else:
            p.hdel(store._k("bc"), *names)
        p.srem(store._k("bases"), *names)
        for e in epoch_sets:
            p.srem(store._k("e", _s(e)), *names)
        p.execute()

    store._retry("dropping state", drop)
    rebuild_manifest(store)
    return len(names)


def record(store: RedisStore, flow_id: str, steps: list[str]) -> None:
    """Record the flow id and its state steps in the meta."""
    fields = {"flow_id": flow_id, "steps": json.dumps(steps)}
    store._retry("recording the flow", lambda: store._r.hset(store._k("meta"), mapping=fields))


def server_config(store: RedisStore) -> dict[str, str]:
    """``maxmemory-policy``, ``save`` and ``appendonly`` (what the server lets us read)."""
    import redis

    out: dict[str, str] = {}
    for name in ("maxmemory-policy", "save", "appendonly"):
        try:
            got = store._retry("reading the Redis settings", partial(store._r.config_get, name))
        except redis.exceptions.ResponseError:  # CONFIG disabled (managed Redis)
            got = {}
        for k, v in got.items():
            out[_s(k)] = _s(v)
    if "maxmemory-policy" not in out:
        try:
            info = store._retry("reading the Redis settings", lambda: store._r.info("memory"))
            if "maxmemory_policy" in info:
                out["maxmemory-policy"] = _s(info["maxmemory_policy"])
        except redis.exceptions.ResponseError:
            log.debug("can't read maxmemory-policy of %s", store.description)
    return out


def check_server(store: RedisStore, allow_evicting: bool) -> None:
    """Refuse an evicting ``maxmemory-policy``; warn when Redis persists nothing."""
    from headrace._engine._store_base import RecoveryStoreError

    error, warning = redis_config_problems(store.description, server_config(store), allow_evicting)
    if error is not None:
        raise RecoveryStoreError(error)
    if warning is not None:
        log.warning("%s", warning)
