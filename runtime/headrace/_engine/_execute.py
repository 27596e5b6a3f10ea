"""Start the workers of this process, connect to peer processes, wait.

W workers of one process run as W threads (Bytewax compatible; with one
worker and no peers it runs in the caller's thread). Any worker's failure,
or a lost peer process, stops them all and is re-raised here.
`request_stop()` (SIGTERM/SIGINT in the CLI) makes every process of the
cluster stop cleanly at the next epoch boundary.

With a recovery store, process 0 alone starts the execution (taking the
store over from any execution still running, see `_store`) and decides the
epoch to resume from; the others receive the execution id, that epoch and
the key-group count in the mesh handshake. Process 0 then holds the
store's lease (`_Lease`) until it stops; a newer execution that takes the
store over makes the lease's next renewal fail, which stops the run.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

from headrace import __version__
from headrace._engine._basics import Abort, Cluster, RunConfig
from headrace._engine._marks import START, mark
from headrace._engine._net import Mesh
from headrace._engine._net_protocol import PROTOCOL_VERSION, SECRET_ENV, Hello
from headrace._engine._plan import Plan, build_plan
from headrace._engine._serve import EndpointServer, Readiness
from headrace._engine._store_base import HEARTBEAT_SECONDS, FencedError, LostStateError, Meta, Store
from headrace._engine._worker import Worker
from headrace._metrics import M
from headrace.dataflow import Dataflow

log = logging.getLogger("headrace.run")

DEFAULT_EPOCH_INTERVAL = timedelta(seconds=10)

_ACTIVE: set[Cluster] = set()
_ACTIVE_LOCK = threading.Lock()


def request_stop() -> bool:
    """Ask every running cluster in this process to stop at the next epoch.

    Returns whether any run was active.

    >>> request_stop()
    False
    """
    with _ACTIVE_LOCK:
        for cluster in _ACTIVE:
            cluster.stop_requested.set()
        return bool(_ACTIVE)


def _stoppable(cluster: Cluster, on: bool) -> None:
    """Let `request_stop` (SIGTERM, SIGINT) reach ``cluster``, or stop letting it."""
    with _ACTIVE_LOCK:
        if on:
            _ACTIVE.add(cluster)
        else:
            _ACTIVE.discard(cluster)


def _serve(
    flow: Dataflow, port: int | None, host: str, readiness: Readiness, fallback: bool = False
) -> EndpointServer | None:
    if not port:
        return None

    def dataflow_json() -> str:
        from headrace.visualize import to_json

        return to_json(flow)

    return EndpointServer(host, port, dataflow_json, readiness, fallback=fallback)


def _store_probe(config: RunConfig, readiness: Readiness) -> None:
    store = config.store
    if store is None:
        return
    original = readiness.ready

    def ready() -> bool:
        recent_error = time.monotonic() - getattr(store, "last_error_at", 0.0) < 10
        if recent_error:
            readiness.reason = f"recovery store errors: {store.description}"
        return original() and not recent_error

    readiness.ready = ready  # type: ignore[method-assign]


def _tune_gc() -> tuple[int, int, int]:
    """Make the cyclic GC cheaper for a run; return the thresholds to restore.

    Batches allocate many short-lived tuples and lists, which trigger a
    young-generation collection every 700 allocations by default; each one
    also walks every long-lived object (the plan, the user's modules) unless
    those are frozen. Stream state is rarely cyclic, so collect young objects
    far less often and move what exists at startup out of the GC's way.
    """
    was = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, was[1], was[2])
    return was


def _run_worker(worker: Worker, cluster: Cluster) -> None:
    try:
        worker.run()
    except BaseException as exc:
        cluster.fail(exc)


def _config(
    epoch_interval: timedelta | None,
    fuse: bool,
    key_groups: int,
    recovery: Any,
    exchange_flush: timedelta | None = None,
) -> RunConfig:
    interval = DEFAULT_EPOCH_INTERVAL if epoch_interval is None else epoch_interval
    if interval < timedelta(0):
        msg = f"epoch_interval must not be negative; got {interval}"
        raise ValueError(msg)
    if key_groups < 1:
        msg = f"key_groups must be >= 1; got {key_groups}"
        raise ValueError(msg)
    config = RunConfig(epoch_interval=interval, fuse=fuse, key_groups=key_groups)
    if exchange_flush is not None:
        if exchange_flush < timedelta(0):
            msg = f"exchange_flush must not be negative; got {exchange_flush}"
            raise ValueError(msg)
        config.exchange_flush_seconds = exchange_flush.total_seconds()
    backup = getattr(recovery, "backup_interval", None)
    if backup is not None and interval > timedelta(0):
        config.keep_epochs = int(backup / interval)
    if backup is not None and not backup:  # backup_interval=0: keep no history (Bytewax's)
        config.compact_every = 1
    return config


class _Lease:
    """Process 0's hold on the recovery store: renewed every `HEARTBEAT_SECONDS`.

    When another execution has taken the store over, the renewal fails with
    `FencedError`, handed to ``on_fenced`` (which stops the run); `stop`
    ends the renewals and releases the lease, so that a new start need not
    wait for it to run out.

    >>> import tempfile
    >>> from headrace.recovery import init_db_dir
    >>> from headrace._engine import open_store
    >>> d = tempfile.mkdtemp(); init_db_dir(d, 1)
    >>> old, new = open_store(d, "f"), open_store(d, "f")
    >>> _ = old.start_execution(1, 8); lease = _Lease(old, print)
    >>> lease.stop()  # released: the next start need not wait
    >>> _ = new.start_execution(1, 8)
    >>> old.commit(1, 0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    headrace.recovery.FencedError: execution ... was fenced off SQLite store ...
    """

    def __init__(self, store: Store, on_fenced: Any) -> None:
        self.store = store
        self.on_fenced = on_fenced
        self.fenced = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="headrace-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.store.heartbeat()
            except (FencedError, LostStateError) as exc:
                self.fenced.set()
                self.on_fenced(exc)
                return
            except Exception as exc:  # an outage: the workers' own writes report it
                log.debug("could not renew the recovery store lease: %s", exc)

    def stop(self) -> None:
        """End the renewals and release the lease (once this run's workers stopped).

        A newer execution that fenced this one waits for that release, or
        for the lease to run out, before it resumes and writes output.
        """
        self._stop.set()
        self._thread.join()
        self.store.release()


def _open_recovery(
    recovery: Any, plan: Plan, config: RunConfig, start: bool, worker_count: int, leader: Hello | None = None
) -> None:
    """Open the store; process 0 starts the execution, the others join ``leader``'s."""
    if recovery is None:
        return
    store = recovery.open(plan.flow_id)
    if start:
        meta = _start_execution(store, recovery, plan, worker_count, config.key_groups)
        resume, key_groups = meta.committed_epoch, meta.key_groups
        # The last output before this run (an output gap's start), which its commits replace.
        mark("previous_output", meta.marks.last_output)
    else:
        assert leader is not None
        try:
            store.join_execution(leader.execution_id)
        except BaseException:
            store.close()
            raise
        resume, key_groups = leader.resume_epoch, leader.key_groups
    if key_groups != config.key_groups and start:
        log.warning(
            "using the stored key-group count %d instead of %d: key groups are fixed at "
            "a dataflow's first run",
            key_groups,
            config.key_groups,
        )
    config.key_groups = key_groups
    config.store = store
    config.resume_epoch = resume
    if resume:
        # Every process says it (process 0 decided the epoch; the others got it
        # in the handshake): a pod's log shows where it resumed.
        log.info("resuming from committed epoch %d (%s)", resume, store.description)


def _start_execution(store: Store, recovery: Any, plan: Plan, worker_count: int, key_groups: int) -> Meta:
    """Process 0's start: check the store's settings and state, then own it (see `_integrity`).

    Lost committed state stops the run (`LostStateError`), and so does
    stored state the flow has no step for, or another flow's store
    (`StateMismatchError`), unless ``recovery.allow_dropped_state``. A store
    older than ``recovery.expect_epoch`` (the epoch a supervisor saw
    committed) lost state too. A first run says so at the default log level.
    """
    from headrace._engine._integrity import behind_problem, flow_state_steps, lost_state_message

    try:
        check_server = getattr(store, "check_server", None)
        if check_server is not None:
            check_server(bool(getattr(recovery, "allow_evicting_redis", False)))
        meta = store.start_execution(worker_count, key_groups)
        try:
            expected = int(getattr(recovery, "expect_epoch", 0) or 0)
            problem = behind_problem(meta.committed_epoch, expected)
            if problem is not None:
                raise LostStateError(
                    lost_state_message(store.description, expected, [problem], "starting", store.reset_hint())
                )
            store.check_flow(
                plan.flow_id,
                flow_state_steps((s.step_id, s.kind) for s in plan.steps),
                bool(getattr(recovery, "allow_dropped_state", False)),
            )
        except BaseException:
            store.release()
            raise
    except BaseException:
        store.close()
        raise
    if not meta.committed_epoch:
        why = "holds no state of it" if store.first_run else "holds no committed epoch of it"
        log.warning(
            "first run of dataflow %r: %s %s; starting from the beginning of every source",
            plan.flow_id,
            store.description,
            why,
        )
    return meta


def _log_start() -> None:
    """Say how long this process took to start (`_marks`: the phases of an output gap)."""
    if "process" not in START:
        return
    t0 = START["process"]
    log.info(
        "workers built %.2fs after the process started (%s)",
        START["restored"] - t0,
        ", ".join(f"{k} +{v - t0:.2f}s" for k, v in START.items() if k != "process"),
    )


def _check_w(workers_per_process: int) -> None:
    if workers_per_process < 1:
        msg = f"workers_per_process must be >= 1; got {workers_per_process}"
        raise ValueError(msg)


def _run_local_workers(
    plan: Plan,
    cluster: Cluster,
    config: RunConfig,
    mesh: Mesh | None,
    server: EndpointServer | None = None,
    proc_id: int = 0,
    lease: _Lease | None = None,
) -> None:
    info = (plan.flow_id, str(proc_id), __version__)
    if config.metrics:
        M["headrace_worker_count"].set(cluster.worker_count)
        M["headrace_process_info"].labels(*info).set(1)
    try:
        workers = [Worker(plan, i, cluster, config) for i in cluster.local_workers]
        mark("restored")
        _log_start()
    except BaseException:
        _stoppable(cluster, False)
        if lease is not None:
            lease.stop()
        if mesh is not None:
            mesh.close(RuntimeError("failed to build the dataflow"))
        if server is not None:
            server.close()
        raise
    _stoppable(cluster, True)
    gc_was = _tune_gc()
    try:
        if len(workers) == 1 and mesh is None:
            _run_worker(workers[0], cluster)
        else:
            threads = [
                threading.Thread(
                    target=_run_worker,
                    args=(w, cluster),
                    name=f"headrace-worker-{w.index}",
                    daemon=True,
                )
                for w in workers
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        gc.set_threshold(*gc_was)
        if config.metrics:
            M["headrace_process_info"].remove(*info)
        _stoppable(cluster, False)
        if lease is not None:
            lease.stop()  # the workers have stopped: a newer execution may go on
        if mesh is not None:
            mesh.close(cluster.error)
        if config.store is not None:
            config.store.close()
        if server is not None:
            server.close()
    if cluster.error is not None:
        raise cluster.error
    if cluster.abort.is_set() and not cluster.aborted_by_source:
        raise Abort("run aborted")
    if any(w.stopped for w in workers):
        log.info("stopped cleanly at the end of epoch %d on request", workers[0].epoch)


def execute(
    flow: Dataflow,
    *,
    workers_per_process: int = 1,
    epoch_interval: timedelta | None = None,
    recovery: Any = None,
    key_groups: int = 256,
    fuse: bool = True,
    metrics: bool = True,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
    exchange_flush: timedelta | None = None,
    metrics_port_fallback: bool = False,
) -> None:
    """Run ``flow`` on ``workers_per_process`` workers in this process.

    ``metrics_port`` (when not ``None`` or 0) serves /metrics, /dataflow,
    /healthz and /readyz on ``metrics_host``; if the port is taken, that is
    an error, or with ``metrics_port_fallback`` one line on stderr and a free
    port (the CLI's default for a local run). ``exchange_flush`` is the
    longest a busy worker holds items bound for another worker before
    sending them (default 20 ms; see docs/running.md).

    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource, TestingSink
    >>> flow = Dataflow("d"); out = []
    >>> op.output("o", op.input("i", flow, TestingSource([1, 2])), TestingSink(out))
    >>> execute(flow, workers_per_process=2); sorted(out)
    [1, 2]
    """
    _check_w(workers_per_process)
    config = _config(epoch_interval, fuse, key_groups, recovery, exchange_flush)
    config.metrics = metrics
    plan = build_plan(flow)
    readiness = Readiness()
    server = _serve(flow, metrics_port, metrics_host, readiness, metrics_port_fallback)
    try:
        _open_recovery(recovery, plan, config, True, workers_per_process)
    except BaseException:
        if server is not None:
            server.close()
        raise
    _store_probe(config, readiness)
    readiness.peers = True
    cluster = Cluster(workers_per_process, range(workers_per_process))
    lease = None if config.store is None else _Lease(config.store, cluster.fail)
    _run_local_workers(plan, cluster, config, None, server, lease=lease)


def execute_cluster(
    flow: Dataflow,
    *,
    addresses: list[str],
    proc_id: int,
    workers_per_process: int = 1,
    epoch_interval: timedelta | None = None,
    bind_host: str | None = None,
    startup_timeout: float = 30.0,
    recovery: Any = None,
    key_groups: int = 256,
    fuse: bool = True,
    metrics: bool = True,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
    exchange_flush: timedelta | None = None,
    metrics_port_fallback: bool = False,
) -> None:
    """Run this process's share of a multi-process cluster.

    ``addresses[i]`` is process ``i``'s ``host:port``; this process is
    ``proc_id`` and runs workers ``proc_id * W ... proc_id * W + W - 1``.
    The other settings are `execute`'s.

    >>> execute_cluster(Dataflow("d"), addresses=["127.0.0.1:1"], proc_id=3)
    Traceback (most recent call last):
    ...
    ValueError: process id 3 is not an index into the 1 addresses
    """
    _check_w(workers_per_process)
    if not 0 <= proc_id < len(addresses):
        msg = f"process id {proc_id} is not an index into the {len(addresses)} addresses"
        raise ValueError(msg)
    config = _config(epoch_interval, fuse, key_groups, recovery, exchange_flush)
    config.metrics = metrics
    plan = build_plan(flow)
    w = workers_per_process
    readiness = Readiness()
    server = _serve(flow, metrics_port, metrics_host, readiness, metrics_port_fallback)
    try:
        _start_cluster_process(
            flow,
            plan,
            config,
            readiness,
            server,
            addresses,
            proc_id,
            w,
            bind_host,
            startup_timeout,
            recovery,
        )
    except BaseException:
        if server is not None:
            server.close()
        raise


def _start_cluster_process(
    flow: Dataflow,
    plan: Plan,
    config: RunConfig,
    readiness: Readiness,
    server: EndpointServer | None,
    addresses: list[str],
    proc_id: int,
    w: int,
    bind_host: str | None,
    startup_timeout: float,
    recovery: Any,
) -> None:
    if proc_id == 0:
        # Before listening: peers can't start an epoch until we accept them.
        _open_recovery(recovery, plan, config, True, len(addresses) * w)
    elif recovery is not None:
        # A bad recovery directory (no or missing parts) fails every process now.
        recovery.open(plan.flow_id).close()
    cluster = Cluster(len(addresses) * w, range(proc_id * w, proc_id * w + w))
    store = config.store
    # Process 0 tells every other process what it decided (see the module docstring).
    hello = Hello(
        PROTOCOL_VERSION,
        proc_id,
        len(addresses),
        w,
        plan.flow_id,
        plan.fingerprint(),
        addresses[proc_id],
        store.execution_id if store is not None else "",
        config.resume_epoch,
        config.key_groups,
    )

    def deliver(dst: int, msg: tuple[object, ...]) -> None:
        cluster.inboxes[dst].put(msg)

    secret = os.environ.get(SECRET_ENV, "").encode() or None
    mesh = Mesh(addresses, proc_id, hello, deliver, cluster.fail, bind_host, startup_timeout, secret)
    lease = None if store is None else _Lease(store, cluster.fail)
    try:
        mesh.start()
        mark("connected")
    except BaseException as exc:
        if lease is not None:
            lease.stop()
        if store is not None:
            store.close()
        if isinstance(cluster.error, FencedError):  # the reason the peers never came
            raise cluster.error from exc
        raise
    # Connected: from now on SIGTERM asks the whole cluster to stop at its
    # first epoch boundary instead of exiting, which the peers would take for
    # a crash (opening the store and restoring state can take a while).
    _stoppable(cluster, True)
    try:
        if proc_id != 0:
            _open_recovery(recovery, plan, config, False, len(addresses) * w, mesh.leader())
    except BaseException as exc:
        _stoppable(cluster, False)
        mesh.close(exc)
        raise
    _store_probe(config, readiness)
    readiness.peers = True
    cluster.remote_send = mesh.send
    _run_local_workers(plan, cluster, config, mesh, server, proc_id, lease)
