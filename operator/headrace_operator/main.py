"""The ``headrace-operator`` console script: run the kopf operator.

Options (kopf's own spelling, so ``kopf run`` habits carry over)::

    headrace-operator [--standalone | --peering NAME] [--leader-election]
                      [--all-namespaces | -n NS ...] [--verbose] [--log-format json|plain]
                      [--console-port PORT]

Environment (options win; every variable the operator reads is in `config`):

- ``WATCH_NAMESPACES`` (or ``HEADRACE_OPERATOR_NAMESPACES``): comma-separated
  namespaces to watch; empty or ``*`` watches all namespaces.
- ``HEADRACE_OPERATOR_METRICS_PORT`` (or ``HEADRACE_OPERATOR_PORT``, default
  8080): ``/metrics``, ``/healthz`` (fails when the watch goes stale), ``/readyz``;
  0 disables.
- ``HEADRACE_OPERATOR_CONSOLE_PORT`` (default 8081; ``--console-port``): the
  read-only web console (`headrace_operator.console`); 0 disables.
  ``HEADRACE_OPERATOR_CONSOLE_PROMETHEUS_URL``: the Prometheus its charts query.
- ``HEADRACE_OPERATOR_LEADER_ELECTION`` (``true``; or ``--leader-election``): run
  as one of several replicas; only the holder of a ``coordination.k8s.io``
  Lease (``HEADRACE_OPERATOR_LEASE_NAME`` in ``HEADRACE_OPERATOR_LEASE_NAMESPACE``)
  starts kopf, the others wait as standbys (`election`). Unset: the process
  reconciles at once (one replica, Recreate).
- ``HEADRACE_OPERATOR_PEERING``: a kopf peering name instead (needs kopf's
  peering CRDs and distinct ``settings.peering.priority`` per replica).
- ``HEADRACE_OPERATOR_LOG_FORMAT`` (``json`` or ``plain``), ``HEADRACE_OPERATOR_LOG_LEVEL``.
- ``HEADRACE_CLUSTER_DOMAIN`` (``cluster.local``): for the workers' peer addresses.
- ``HEADRACE_WORKER_SERVICE_ACCOUNT`` and ``HEADRACE_WORKER_SERVICE_ACCOUNT_NAMESPACES``:
  the workers' default service account and where it exists.

>>> watch_scope("")
(True, [])
>>> watch_scope("team-a, team-b")
(False, ['team-a', 'team-b'])
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import uuid

from headrace_operator import config
from headrace_operator.config import watch_namespaces, watch_scope
from headrace_operator.election import Elector, Timing
from headrace_operator.metrics import metric

__all__ = ["main", "watch_namespaces", "watch_scope"]


def _parser(settings: config.Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="headrace-operator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--standalone",
        action="store_true",
        help="no peering: one operator replica (the default without --peering)",
    )
    p.add_argument(
        "--peering",
        default=settings.peering,
        help="kopf peering name for standby replicas",
    )
    p.add_argument(
        "--leader-election",
        action="store_true",
        default=settings.leader_election,
        help="lead through a Lease; wait as a standby while another replica holds it",
    )
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    p.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--console-port",
        type=int,
        default=settings.console_port,
        help="port of the read-only web console (0 disables)",
    )
    p.add_argument(
        "--log-format",
        choices=["json", "plain"],
        default=settings.log_format,
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the operator until it is stopped (SIGTERM/SIGINT); return the exit code."""
    settings = config.load()
    args = _parser(settings).parse_args(sys.argv[1:] if argv is None else argv)
    import kopf

    level = "DEBUG" if args.verbose else settings.log_level
    kopf.configure(
        verbose=level.upper() == "DEBUG",
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger().setLevel(level.upper())
    import headrace_operator.handlers as handlers  # registers the handlers

    namespaces = [] if args.all_namespaces else (args.namespace or settings.namespaces)
    # The handlers read the scope from the settings (liveness LIST, service accounts).
    config.export_namespaces(namespaces)
    config.export_console_port(args.console_port)
    standalone = args.standalone or args.peering is None
    if args.leader_election and not standalone:
        print("headrace-operator: --leader-election and --peering exclude each other", file=sys.stderr)
        return 2
    elector = None
    if args.leader_election:
        elector = _elector(settings)
        # A standby serves /metrics (headrace_operator_leader 0), /healthz, /readyz and
        # the console, with the settings as exported above.
        handlers.STATE.settings = config.load()
        handlers.serve_endpoints()
        handlers.STATE.ready = True
        if not elector.wait_until_leading():
            return 0
        threading.Thread(
            target=elector.keep_leading, args=(_stop_now,), name="headrace-lease", daemon=True
        ).start()
    else:
        metric("headrace_operator_leader").set(1)
    try:
        kopf.run(
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=standalone,
            peering_name=None if standalone else args.peering,
        )
    finally:
        if elector is not None:
            # kopf has stopped handling: a standby may take over at its next try.
            elector.release()
    return 0


def _elector(settings: config.Settings) -> Elector:
    from headrace_operator._kube import Leases

    timing = Timing(settings.lease_duration, settings.renew_deadline, settings.retry_period)
    namespace, name = settings.lease_location()
    # Unique per process, as controller-runtime's: a restarted container is a new candidate.
    identity = f"{settings.pod_name or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    return Elector(Leases(timeout=max(1.0, settings.retry_period)), namespace, name, identity, timing)


def _stop_now() -> None:
    """The Lease is lost: stop handling at once (another replica may lead already).

    No graceful kopf shutdown: a handler running on would race the new leader.
    The container restarts and waits as a standby.
    """
    logging.shutdown()
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
