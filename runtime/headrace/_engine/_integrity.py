"""State integrity: lost state is an error, and stored state must match the flow.

Pure logic shared by both recovery stores (``_store.RedisStore`` and
``_sqlite_store.SqliteStore``), which gather the facts and raise.

*Manifests.* Every snapshot write records, atomically with it, how much it
wrote: per epoch (and, in a recovery directory, per step) the number of
keys/rows. Compaction keeps the same count for the base. A store compares
these records with what it finds, on resume and before each commit
(`layer_problems`); anything missing is lost state (`lost_state_message`),
never a silent fresh start.

*A store that never started* holds no meta record and nothing else under
its prefix. A meta record gone while other keys remain is lost state too
(`leftovers_message`). A store that lost *everything* looks like one that
never started from the inside; a supervisor that saw the dataflow commit
tells it apart by passing the epoch it saw (``--expect-epoch``; the
Kubernetes operator does so from the Dataflow's status): a store whose
committed epoch is older than that is lost state (`behind_problem`).

*Steps.* The meta records the flow id and the steps that may hold state.
A resume with stored state for steps the flow no longer has, or under a
prefix of another flow, is refused (`mismatch_message`) unless the user
allows dropping that state (`--allow-dropped-state`, as Flink's
allowNonRestoredState).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Core step kinds whose state the stores keep: per-key state, and source and
# sink partition positions.
STATE_KINDS = ("stateful_batch", "input", "output")
# The meta field set when a store's manifests are complete (a store written
# by an older Headrace has none, and is checked from its next start on).
MANIFEST_FIELD = "manifest"

DROP_FLAG = (
    "--allow-dropped-state (RecoveryConfig(..., allow_dropped_state=True), HEADRACE_ALLOW_DROPPED_STATE=1)"
)
EVICT_FLAG = (
    "--allow-evicting-redis (RecoveryConfig(..., allow_evicting_redis=True), HEADRACE_ALLOW_EVICTING_REDIS=1)"
)


@dataclass
class Layer:
    """What a manifest recorded for one part of the committed state, and what is there.

    ``what`` names it in messages (e.g. "epoch 7 of step 'count'");
    ``recorded`` is the count the manifest holds (``None``: not recorded);
    ``found`` the count there now; ``missing`` names listed keys not found.

    >>> Layer("the base", 3, 3).ok, Layer("epoch 2", 5, 4).ok
    (True, False)
    """

    what: str
    recorded: int | None
    found: int
    missing: tuple[str, ...] = ()
    unit: str = "entries"

    @property
    def ok(self) -> bool:
        """Whether nothing recorded is missing."""
        return not self.missing and (self.recorded is None or self.found >= self.recorded)


def layer_problems(layers: Iterable[Layer]) -> list[str]:
    """One line per layer that lost something, naming it.

    >>> layer_problems([Layer("the base", 4, 4), Layer("epoch 7 of step 'out'", 3, 1, unit="rows")])
    ["epoch 7 of step 'out': 1 of 3 rows left"]
    >>> layer_problems([Layer("epoch 2", 2, 1, ("hr{f}:d:2:count:5",), "keys")])
    ['epoch 2: missing hr{f}:d:2:count:5']
    """
    out = []
    for layer in layers:
        if layer.ok:
            continue
        if layer.missing:
            shown = ", ".join(layer.missing[:5])
            more = len(layer.missing) - 5
            out.append(f"{layer.what}: missing {shown}" + (f" and {more} more" if more > 0 else ""))
        else:
            out.append(f"{layer.what}: {layer.found} of {layer.recorded} {layer.unit} left")
    return out


def reset_hint(location: str, prefix: str) -> str:
    """How to start over deliberately (the explicit reset).

    >>> print(reset_hint("./state", "wc"))  # doctest: +NORMALIZE_WHITESPACE
    python -m headrace.recovery delete ./state --flow-id wc --yes (or, on Kubernetes, change
    the dataflow's spec.resetStateNonce)
    """
    return (
        f"python -m headrace.recovery delete {location} --flow-id {prefix} --yes (or, on "
        "Kubernetes, change the dataflow's spec.resetStateNonce)"
    )


def lost_state_message(description: str, committed: int, problems: list[str], when: str, hint: str) -> str:
    """The error for committed state that is gone, and the ways out.

    >>> print(lost_state_message("Redis at r (prefix 'f')", 7, ["epoch 7: missing k"],
    ...                          "resuming", "RESET"))  # doctest: +NORMALIZE_WHITESPACE
    Recovery state lost in Redis at r (prefix 'f'): the dataflow committed epoch 7, but
    epoch 7: missing k. Refusing to go on while resuming: the output would silently miss or
    repeat what that state covered. Restore the store from a backup (for Redis: persistence
    on, maxmemory-policy noeviction), or start over deliberately: RESET
    """
    listed = "; ".join(problems)
    return (
        f"Recovery state lost in {description}: the dataflow committed epoch {committed}, but "
        f"{listed}. Refusing to go on while {when}: the output would silently miss or repeat "
        "what that state covered. Restore the store from a backup (for Redis: persistence on, "
        f"maxmemory-policy noeviction), or start over deliberately: {hint}"
    )


EXPECT_FLAG = "--expect-epoch (RecoveryConfig(..., expect_epoch=N), HEADRACE_EXPECT_EPOCH=N)"


def behind_problem(committed: int, expected: int) -> str | None:
    """What is wrong when the store is older than the epoch a supervisor saw committed.

    ``expected`` is that epoch (0: nothing expected). ``None`` when the
    store holds it or a later one.

    >>> behind_problem(7, 7) is None, behind_problem(9, 7) is None, behind_problem(0, 0) is None
    (True, True, True)
    >>> behind_problem(0, 7)
    'the store holds no committed epoch of it (it lost its data, or it is another store)'
    >>> behind_problem(5, 7)
    "the store's latest committed epoch is 5 (it went back to an older copy)"
    """
    if committed >= expected:
        return None
    if not committed:
        return "the store holds no committed epoch of it (it lost its data, or it is another store)"
    return f"the store's latest committed epoch is {committed} (it went back to an older copy)"


def leftovers_message(description: str, leftovers: list[str], hint: str) -> str:
    """The error for a store whose meta record is gone while other state remains.

    >>> leftovers_message("S", ["hr{f}:bases"], "RESET").startswith(
    ...     "Recovery state lost in S: its meta record (the committed epoch) is gone")
    True
    """
    shown = ", ".join(leftovers[:5]) + (f" and {len(leftovers) - 5} more" if len(leftovers) > 5 else "")
    return (
        f"Recovery state lost in {description}: its meta record (the committed epoch) is "
        f"gone, but other state of the dataflow remains ({shown}), so this is not a first "
        "run. Refusing to start over silently (the output would repeat what was already "
        "produced). Restore the store from a backup, or start over deliberately: "
        f"{hint}"
    )


def lost_meta_message(description: str, mine: str, what: str, hint: str) -> str:
    """The error for a running execution whose store lost its meta record (e.g. FLUSHALL).

    >>> lost_meta_message("Redis at r", "e1", "committing epoch 3", "RESET")[:60]
    'Recovery state lost in Redis at r: execution e1 of this data'
    """
    return (
        f"Recovery state lost in {description}: execution {mine} of this dataflow finds no "
        f"meta record any more (the store was emptied, restarted without its data, or the "
        f"keys were deleted or evicted); it stops without {what}. A restart now would find "
        "nothing and start over from the beginning of every source, repeating output "
        "already written: restore the store from a backup, or start over deliberately: "
        f"{hint}"
    )


def went_back_message(description: str, expected: int, found: int, hint: str) -> str:
    """The error for a store whose committed epoch went back under a running execution.

    >>> went_back_message("S", 9, 4, "RESET").startswith(
    ...     "Recovery state lost in S: this execution committed epoch 9, but the store now says 4")
    True
    """
    return (
        f"Recovery state lost in {description}: this execution committed epoch {expected}, "
        f"but the store now says {found} (restored from an older copy?). Refusing to commit "
        f"over it. Restore the store from a newer backup, or start over deliberately: {hint}"
    )


def flow_state_steps(steps: Iterable[tuple[str, str]]) -> list[str]:
    """The ids of the steps that may hold state, from ``(step_id, kind)`` pairs.

    >>> flow_state_steps([("i", "input"), ("m", "map"), ("c", "stateful_batch"), ("o", "output")])
    ['c', 'i', 'o']
    """
    return sorted(s for s, kind in steps if kind in STATE_KINDS)


def dropped_steps(stored: Iterable[str], flow: Iterable[str]) -> list[str]:
    """Stored steps the flow does not have (their state would be dropped).

    >>> dropped_steps(["count", "lines", "out"], ["counter", "lines", "out"])
    ['count']
    """
    have = set(flow)
    return sorted(set(stored) - have)


def mismatch_message(
    description: str, flow_id: str, stored_flow: str, dropped: list[str], flow_steps: list[str], hint: str
) -> str | None:
    """Why stored state does not match the flow (``None`` if it does).

    >>> print(mismatch_message("S", "wc", "wc", ["count"], ["counter", "lines"], "RESET"))
    ... # doctest: +NORMALIZE_WHITESPACE
    S holds state of steps 'count' that dataflow 'wc' does not have (its steps that hold state:
    'counter', 'lines'); renamed or removed? Resuming would silently drop that state. Give the
    step its old id back, or pass --allow-dropped-state (RecoveryConfig(...,
    allow_dropped_state=True), HEADRACE_ALLOW_DROPPED_STATE=1) to drop it, or start over:
    RESET
    >>> mismatch_message("S", "wc", "wc", [], ["lines"], "RESET") is None
    True
    >>> mismatch_message("S", "wc", "other", [], ["lines"], "RESET")[:60]
    "S belongs to dataflow 'other', not 'wc' (a --recovery-prefix"
    """
    names = ", ".join(repr(s) for s in dropped)
    have = ", ".join(repr(s) for s in flow_steps) or "none"
    if stored_flow and stored_flow != flow_id:
        steps = f"; its state of steps {names} would be dropped" if dropped else ""
        return (
            f"{description} belongs to dataflow {stored_flow!r}, not {flow_id!r} (a "
            f"--recovery-prefix of another dataflow?){steps}. Use this dataflow's own prefix, "
            f"or pass {DROP_FLAG} to take the store over, dropping state of steps this dataflow "
            f"does not have, or start over: {hint}"
        )
    if not dropped:
        return None
    return (
        f"{description} holds state of steps {names} that dataflow {flow_id!r} does not have "
        f"(its steps that hold state: {have}); renamed or removed? Resuming would silently "
        f"drop that state. Give the step its old id back, or pass {DROP_FLAG} to drop it, or "
        f"start over: {hint}"
    )


EVICTING = (
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)


def redis_config_problems(
    description: str, config: Mapping[str, str], allow_evicting: bool
) -> tuple[str | None, str | None]:
    """``(error, warning)`` for a Redis server's settings: eviction refused, no persistence warned.

    ``config`` holds ``maxmemory-policy``, ``save`` and ``appendonly`` (a
    missing one is not judged).

    >>> err, warn = redis_config_problems("R", {"maxmemory-policy": "allkeys-lru"}, False)
    >>> err.startswith("R has maxmemory-policy allkeys-lru: Redis may evict"), warn
    (True, None)
    >>> redis_config_problems("R", {"maxmemory-policy": "allkeys-lru"}, True)[0] is None
    True
    >>> redis_config_problems("R", {"save": "", "appendonly": "no"}, False)[1][:40]
    'R has no persistence (save "" and append'
    """
    error = warning = None
    policy = config.get("maxmemory-policy", "noeviction")
    if policy in EVICTING and not allow_evicting:
        error = (
            f"{description} has maxmemory-policy {policy}: Redis may evict (silently delete) "
            "recovery state when it reaches maxmemory, and the dataflow would then resume "
            "from wrong state. Set `CONFIG SET maxmemory-policy noeviction` (and in "
            "redis.conf), use a Redis of its own for recovery, or, knowing that evicted state "
            f"stops the run with an error, pass {EVICT_FLAG}"
        )
    if config.get("save") == "" and config.get("appendonly") == "no":
        warning = (
            f'{description} has no persistence (save "" and appendonly no): if Redis '
            "restarts, the recovery state is gone and the dataflow can't resume (see "
            "docs/recovery.md). Turn on appendonly yes or RDB snapshots (save)"
        )
    return error, warning
