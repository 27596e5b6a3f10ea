"""Start the workers of this process and wait for them.

W workers of one process run as W threads (Bytewax compatible); with one
worker it runs in the caller's thread. Any worker's failure stops them all
and is re-raised here.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from headrace._engine._plan import build_plan
from headrace._engine._worker import Abort, Cluster, RunConfig, Worker
from headrace.dataflow import Dataflow

log = logging.getLogger("headrace.run")

DEFAULT_EPOCH_INTERVAL = timedelta(seconds=10)


def _run_worker(worker: Worker, cluster: Cluster) -> None:
    try:
        worker.run()
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        cluster.fail(exc)


def execute(
    flow: Dataflow,
    *,
    workers_per_process: int = 1,
    epoch_interval: timedelta | None = None,
    fuse: bool = True,
) -> None:
    """Run ``flow`` on ``workers_per_process`` workers in this process.

    >>> import headrace.operators as op
    >>> from headrace.testing import TestingSource, TestingSink
    >>> flow = Dataflow("d"); out = []
    >>> op.output("o", op.input("i", flow, TestingSource([1, 2])), TestingSink(out))
    >>> execute(flow, workers_per_process=2); sorted(out)
    [1, 2]
    """
    if workers_per_process < 1:
        msg = f"workers_per_process must be >= 1; got {workers_per_process}"
        raise ValueError(msg)
    interval = DEFAULT_EPOCH_INTERVAL if epoch_interval is None else epoch_interval
    if interval < timedelta(0):
        msg = f"epoch_interval must not be negative; got {interval}"
        raise ValueError(msg)
    plan = build_plan(flow)
    config = RunConfig(epoch_interval=interval, fuse=fuse)
    cluster = Cluster(workers_per_process, range(workers_per_process))
    workers = [Worker(plan, i, cluster, config) for i in range(workers_per_process)]
    if workers_per_process == 1:
        _run_worker(workers[0], cluster)
    else:
        threads = [
            threading.Thread(
                target=_run_worker, args=(w, cluster), name=f"headrace-worker-{w.index}", daemon=True
            )
            for w in workers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if cluster.error is not None:
        raise cluster.error
    if cluster.abort.is_set() and not cluster.aborted_by_source:
        raise Abort("run aborted")
