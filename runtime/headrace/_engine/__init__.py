"""The execution engine's face: what the entry points and the operator may use.

`headrace.run`, `headrace.testing`, `headrace.recovery` and the Kubernetes
operator import the engine from here, never from its modules: ``from
headrace._engine import execute, open_store``. The names are loaded on
first use (module ``__getattr__``), so importing one engine module, or the
operator importing `group_owner`, does not import the whole engine.

Layering (a module imports only from modules above it in this list; the
`layers` contract in pyproject.toml checks it):

- ``_hash``: key groups and owners; ``_plan``: the flow as core steps;
  ``_fuse``: stateless chains compiled to one loop; ``_sched``: steps run
  in declaration order; ``_marks``: when a run started, imported,
  restored and wrote output (a transition's output gap). (The metric
  catalogue, `headrace._metrics`, is a leaf below the engine: the
  operators' error policies record there too.)
- ``_store_checks``, ``_integrity``, ``_store_base`` (the interface),
  ``_redis_integrity``, ``_redis_cluster`` (a Redis Cluster's layout),
  ``_sqlite_parts``, ``_sqlite_store``, ``_store`` (Redis, and
  ``open_store``): the recovery stores; ``_snapshots``: kept snapshots, a
  committed epoch copied under a name, and restoring one.
- ``_basics``: batches, messages, the run's settings, the words of errors
  from user code; ``_stateful_run``: a stateful step's per-key logic,
  timers and EOF; ``_async_run``: a ``map_async`` step and the worker's
  event loop; ``_exchange``: edges, routers, out-buffers, combiners
  and credits; ``_wiring``: the plan as one worker's push graph (its
  docstring follows one item from source to sink); ``_writer``: the
  thread that writes a large epoch's snapshot off the worker's hot path;
  ``_worker``: the worker loop (poll, drain, barriers, epochs, snapshot and
  commit).
- ``_net_protocol``: the mesh's handshake and frames; ``_net``: the TCP
  mesh between processes; ``_serve``: the HTTP endpoints; ``_execute``:
  start a process's workers (and its mesh, store and server).

>>> from headrace._engine import group_owner
>>> group_owner(5, 8, 2)
1
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "DEFAULT_KEY_GROUPS",
    "REDIS_SCHEMES",
    "SECRET_ENV",
    "FencedError",
    "InconsistentPartitionsError",
    "KeptSnapshot",
    "LostStateError",
    "Meta",
    "MissingPartitionsError",
    "NoPartitionsError",
    "RecoveryStoreError",
    "SnapshotError",
    "StateMismatchError",
    "Store",
    "check_location",
    "execute",
    "execute_cluster",
    "flow_steps",
    "forget_snapshot",
    "group_owner",
    "init_parts",
    "keep_snapshot",
    "kept_snapshots",
    "key_group",
    "mark",
    "open_store",
    "part_owner",
    "prune_snapshots",
    "request_stop",
    "restore_snapshot",
    "stored_prefixes",
]

# The module (below this package) that defines each name of the face.
_FACE = {
    **dict.fromkeys(["execute", "execute_cluster", "request_stop"], "_execute"),
    "open_store": "_store",
    **dict.fromkeys(
        [
            "Store",
            "Meta",
            "RecoveryStoreError",
            "FencedError",
            "LostStateError",
            "StateMismatchError",
            "NoPartitionsError",
            "MissingPartitionsError",
            "InconsistentPartitionsError",
        ],
        "_store_base",
    ),
    "init_parts": "_sqlite_parts",
    "mark": "_marks",
    **dict.fromkeys(
        [
            "KeptSnapshot",
            "SnapshotError",
            "flow_steps",
            "forget_snapshot",
            "keep_snapshot",
            "kept_snapshots",
            "prune_snapshots",
            "restore_snapshot",
            "stored_prefixes",
        ],
        "_snapshots",
    ),
    "check_location": "_store_checks",
    "REDIS_SCHEMES": "_store_checks",
    "SECRET_ENV": "_net_protocol",
    **dict.fromkeys(["group_owner", "key_group", "part_owner", "DEFAULT_KEY_GROUPS"], "_hash"),
}

if TYPE_CHECKING:
    from headrace._engine._execute import execute, execute_cluster, request_stop
    from headrace._engine._hash import DEFAULT_KEY_GROUPS, group_owner, key_group, part_owner
    from headrace._engine._marks import mark
    from headrace._engine._net_protocol import SECRET_ENV
    from headrace._engine._snapshots import (
        KeptSnapshot,
        SnapshotError,
        flow_steps,
        forget_snapshot,
        keep_snapshot,
        kept_snapshots,
        prune_snapshots,
        restore_snapshot,
        stored_prefixes,
    )
    from headrace._engine._sqlite_parts import init_parts
    from headrace._engine._store import open_store
    from headrace._engine._store_base import (
        FencedError,
        InconsistentPartitionsError,
        LostStateError,
        Meta,
        MissingPartitionsError,
        NoPartitionsError,
        RecoveryStoreError,
        StateMismatchError,
        Store,
    )
    from headrace._engine._store_checks import REDIS_SCHEMES, check_location


def __getattr__(name: str) -> Any:
    """Load a name of the face from its module on first use (then it is a plain global).

    >>> import headrace._engine as engine
    >>> engine.part_owner(3, 2)
    1
    >>> hasattr(engine, "Worker")
    False
    """
    module = _FACE.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FACE))
