"""The ``headrace-operator`` console script: run the kopf operator.

Options (kopf's own spelling, so ``kopf run`` habits carry over)::

    headrace-operator [--standalone | --peering NAME] [--all-namespaces | -n NS ...]
                      [--verbose] [--log-format json|plain]

Environment (options win):

- ``WATCH_NAMESPACES`` (or ``HEADRACE_OPERATOR_NAMESPACES``): comma-separated
  namespaces to watch; empty or ``*`` watches all namespaces.
- ``HEADRACE_OPERATOR_METRICS_PORT`` (or ``HEADRACE_OPERATOR_PORT``, default
  8080): ``/metrics``, ``/healthz`` (fails when the watch goes stale), ``/readyz``;
  0 disables.
- ``HEADRACE_OPERATOR_PEERING``: a kopf peering name, to run standby replicas
  (needs kopf's peering CRDs); unset runs standalone (one replica, Recreate).
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
import sys
from collections.abc import Mapping

__all__ = ["main", "watch_namespaces", "watch_scope"]


def watch_scope(text: str | None) -> tuple[bool, list[str]]:
    """``(clusterwide, namespaces)`` from a ``WATCH_NAMESPACES`` value.

    >>> watch_scope("*")
    (True, [])
    """
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names or "*" in names:
        return True, []
    return False, names


def watch_namespaces(env: Mapping[str, str]) -> list[str]:
    """The watched namespaces from the environment; ``[]`` means all.

    >>> watch_namespaces({"HEADRACE_OPERATOR_NAMESPACES": "a,b"})
    ['a', 'b']
    """
    text = env.get("WATCH_NAMESPACES") or env.get("HEADRACE_OPERATOR_NAMESPACES")
    return watch_scope(text)[1]


def _parser() -> argparse.ArgumentParser:
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
        default=os.environ.get("HEADRACE_OPERATOR_PEERING") or None,
        help="kopf peering name for standby replicas",
    )
    p.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    p.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--log-format",
        choices=["json", "plain"],
        default=os.environ.get("HEADRACE_OPERATOR_LOG_FORMAT", "json"),
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the operator until it is stopped (SIGTERM/SIGINT); return the exit code."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    import kopf

    level = "DEBUG" if args.verbose else os.environ.get("HEADRACE_OPERATOR_LOG_LEVEL", "INFO")
    kopf.configure(
        verbose=level.upper() == "DEBUG",
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger().setLevel(level.upper())
    import headrace_operator.handlers  # noqa: F401 - registers the handlers

    namespaces = [] if args.all_namespaces else (args.namespace or watch_namespaces(os.environ))
    # The handlers read the scope from the environment (liveness LIST, service accounts).
    os.environ["WATCH_NAMESPACES"] = ",".join(namespaces) or "*"
    standalone = args.standalone or args.peering is None
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=standalone,
        peering_name=None if standalone else args.peering,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
