"""The operator's settings: every environment variable it reads, read here and only here.

Placed in the flow: `main` (the console script) and `handlers` (the kopf
handlers) both ask `load` for a `Settings`; nothing else in the package reads
the environment. The command line wins over the environment: `main` hands
the namespaces it chose on to the handlers with `export_namespaces`.

===========================================  ==============  ==========================================
variable                                     default         meaning
===========================================  ==============  ==========================================
``WATCH_NAMESPACES`` (or                     all             comma-separated namespaces to watch;
``HEADRACE_OPERATOR_NAMESPACES``)                            empty or ``*``: all
``HEADRACE_OPERATOR_METRICS_PORT`` (or       8080            ``/metrics``, ``/healthz``, ``/readyz``;
``HEADRACE_OPERATOR_PORT``)                                  0 disables
``HEADRACE_OPERATOR_PEERING``                unset           kopf peering name (standby replicas)
``HEADRACE_OPERATOR_CONSOLE_PORT``           8081            the web console (`console`); 0 disables
``HEADRACE_OPERATOR_CONSOLE_PROMETHEUS_URL`` unset           the Prometheus the console's charts query
``HEADRACE_OPERATOR_LOG_LEVEL``              INFO
``HEADRACE_OPERATOR_LOG_FORMAT``             json            ``json`` or ``plain``
``HEADRACE_OPERATOR_STALE_AFTER``            300             seconds before ``/healthz`` fails on a
                                                             stale watch
``HEADRACE_OPERATOR_LIVENESS_INTERVAL``      30              seconds between the liveness LISTs
``HEADRACE_OPERATOR_TIMER_INTERVAL``         2               seconds between timer ticks
``HEADRACE_OPERATOR_WORKERS``                8               kopf's thread pool for the handlers
``HEADRACE_OPERATOR_POD_NAMESPACE``          unset           the operator's own namespace
``HEADRACE_OPERATOR_LEADER_ELECTION``        false           ``true``: lead through a Lease; replicas
                                                             wait as standbys (`election`)
``HEADRACE_OPERATOR_LEASE_NAME``             headrace-       the Lease's name
                                             operator
``HEADRACE_OPERATOR_LEASE_NAMESPACE``        own, else       the Lease's namespace
                                             default
``HEADRACE_OPERATOR_LEASE_DURATION``         15              seconds before a standby takes over a
                                                             Lease that stopped changing
``HEADRACE_OPERATOR_RENEW_DEADLINE``         10              seconds the leader retries renewing
                                                             before it stops
``HEADRACE_OPERATOR_RETRY_PERIOD``           2               seconds between tries
``HEADRACE_OPERATOR_POD_NAME`` (or           host name       the first part of the replica's
``HOSTNAME``)                                                identity in the Lease
``HEADRACE_CLUSTER_DOMAIN``                  cluster.local   for the workers' peer addresses
``HEADRACE_WORKER_SERVICE_ACCOUNT``          unset           the workers' default service account...
``HEADRACE_WORKER_SERVICE_ACCOUNT_NAMESPACES``  watched + own  ...used only in these namespaces
===========================================  ==============  ==========================================

>>> s = load({"WATCH_NAMESPACES": "a,b", "HEADRACE_OPERATOR_PORT": "9090"})
>>> s.namespaces, s.metrics_port, s.timer_interval, s.console_port
(['a', 'b'], 9090, 2.0, 8081)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

__all__ = [
    "Settings",
    "export_console_port",
    "export_namespaces",
    "load",
    "watch_namespaces",
    "watch_scope",
    "worker_service_account",
]


def watch_scope(text: str | None) -> tuple[bool, list[str]]:
    """``(clusterwide, namespaces)`` from a ``WATCH_NAMESPACES`` value.

    >>> watch_scope("*"), watch_scope("team-a, team-b")
    ((True, []), (False, ['team-a', 'team-b']))
    """
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names or "*" in names:
        return True, []
    return False, names


@dataclass(frozen=True)
class Settings:
    """The operator's settings (see the module docstring for the variables).

    >>> Settings().metrics_port, Settings().namespaces
    (8080, [])
    """

    namespaces: list[str] = field(default_factory=list)  # watched; [] = all
    metrics_port: int = 8080
    console_port: int = 8081
    console_prometheus_url: str = ""
    peering: str | None = None
    log_level: str = "INFO"
    log_format: str = "json"
    stale_after: float = 300.0
    liveness_interval: float = 30.0
    timer_interval: float = 2.0
    workers: int = 8
    pod_namespace: str = ""
    cluster_domain: str = "cluster.local"
    worker_service_account: str = ""
    worker_service_account_namespaces: list[str] | None = None  # None: watched + own
    leader_election: bool = False
    lease_name: str = "headrace-operator"
    lease_namespace: str = ""  # "": the operator's own namespace, else "default"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    pod_name: str = ""

    def lease_location(self) -> tuple[str, str]:
        """``(namespace, name)`` of the leader Lease.

        >>> Settings(pod_namespace="ops").lease_location()
        ('ops', 'headrace-operator')
        >>> Settings().lease_location()
        ('default', 'headrace-operator')
        """
        return self.lease_namespace or self.pod_namespace or "default", self.lease_name

    def service_account_for(self, namespace: str) -> str:
        """The workers' default service account in ``namespace``, where it exists.

        It is used in ``worker_service_account_namespaces`` if set, else in the
        watched namespaces and the operator's own (where the chart creates it).
        Elsewhere the pods use the namespace's default account, without a token.

        >>> s = Settings(namespaces=["a", "b"], worker_service_account="hr-worker")
        >>> s.service_account_for("a"), s.service_account_for("c")
        ('hr-worker', '')
        """
        if not self.worker_service_account:
            return ""
        if self.worker_service_account_namespaces is not None:
            where = set(self.worker_service_account_namespaces)
        else:
            where = {*self.namespaces, self.pod_namespace}
        return self.worker_service_account if namespace in where else ""


def load(env: Mapping[str, str] | None = None) -> Settings:
    """The settings from ``env`` (default: the process environment).

    >>> load({"HEADRACE_OPERATOR_METRICS_PORT": "0", "HEADRACE_OPERATOR_PORT": "9"}).metrics_port
    0
    """
    env = os.environ if env is None else env
    listed = env.get("HEADRACE_WORKER_SERVICE_ACCOUNT_NAMESPACES")
    return Settings(
        namespaces=watch_namespaces(env),
        metrics_port=int(
            env.get("HEADRACE_OPERATOR_METRICS_PORT") or env.get("HEADRACE_OPERATOR_PORT") or "8080"
        ),
        console_port=int(env.get("HEADRACE_OPERATOR_CONSOLE_PORT") or "8081"),
        console_prometheus_url=env.get("HEADRACE_OPERATOR_CONSOLE_PROMETHEUS_URL", ""),
        peering=env.get("HEADRACE_OPERATOR_PEERING") or None,
        log_level=env.get("HEADRACE_OPERATOR_LOG_LEVEL", "INFO"),
        log_format=env.get("HEADRACE_OPERATOR_LOG_FORMAT", "json"),
        stale_after=float(env.get("HEADRACE_OPERATOR_STALE_AFTER", "300")),
        liveness_interval=float(env.get("HEADRACE_OPERATOR_LIVENESS_INTERVAL", "30")),
        timer_interval=float(env.get("HEADRACE_OPERATOR_TIMER_INTERVAL", "2")),
        workers=int(env.get("HEADRACE_OPERATOR_WORKERS", "8")),
        pod_namespace=env.get("HEADRACE_OPERATOR_POD_NAMESPACE", ""),
        cluster_domain=env.get("HEADRACE_CLUSTER_DOMAIN", "cluster.local"),
        worker_service_account=env.get("HEADRACE_WORKER_SERVICE_ACCOUNT", ""),
        worker_service_account_namespaces=(
            None if listed is None else [n.strip() for n in listed.split(",") if n.strip()]
        ),
        leader_election=_flag(env.get("HEADRACE_OPERATOR_LEADER_ELECTION", "")),
        lease_name=env.get("HEADRACE_OPERATOR_LEASE_NAME") or "headrace-operator",
        lease_namespace=env.get("HEADRACE_OPERATOR_LEASE_NAMESPACE", ""),
        lease_duration=float(env.get("HEADRACE_OPERATOR_LEASE_DURATION") or "15"),
        renew_deadline=float(env.get("HEADRACE_OPERATOR_RENEW_DEADLINE") or "10"),
        retry_period=float(env.get("HEADRACE_OPERATOR_RETRY_PERIOD") or "2"),
        pod_name=env.get("HEADRACE_OPERATOR_POD_NAME") or env.get("HOSTNAME", ""),
    )


def _flag(text: str) -> bool:
    """``true``/``1``/``yes``/``on`` (any case) is True.

    >>> _flag("True"), _flag("0"), _flag("")
    (True, False, False)
    """
    return text.strip().lower() in ("1", "true", "yes", "on")


def watch_namespaces(env: Mapping[str, str]) -> list[str]:
    """The watched namespaces from the environment; ``[]`` means all.

    >>> watch_namespaces({"HEADRACE_OPERATOR_NAMESPACES": "a,b"})
    ['a', 'b']
    """
    text = env.get("WATCH_NAMESPACES") or env.get("HEADRACE_OPERATOR_NAMESPACES")
    return watch_scope(text)[1]


def worker_service_account(namespace: str, env: Mapping[str, str]) -> str:
    """The workers' default service account in ``namespace`` (`Settings.service_account_for`).

    >>> env = {"HEADRACE_WORKER_SERVICE_ACCOUNT": "hr-worker", "WATCH_NAMESPACES": "a,b"}
    >>> worker_service_account("a", env), worker_service_account("c", env)
    ('hr-worker', '')
    """
    return load(env).service_account_for(namespace)


def export_namespaces(namespaces: list[str], env: MutableMapping[str, str] | None = None) -> None:
    """Record the namespaces the command line chose, for the handlers' `load` (liveness
    LIST, service accounts): ``[]`` is all.

    >>> env = {}
    >>> export_namespaces([], env); load(env).namespaces
    []
    >>> export_namespaces(["a"], env); load(env).namespaces
    ['a']
    """
    env = os.environ if env is None else env
    env["WATCH_NAMESPACES"] = ",".join(namespaces) or "*"


def export_console_port(port: int, env: MutableMapping[str, str] | None = None) -> None:
    """Record the console port the command line chose (``--console-port``), for the handlers' `load`.

    >>> env = {}
    >>> export_console_port(0, env); load(env).console_port
    0
    """
    env = os.environ if env is None else env
    env["HEADRACE_OPERATOR_CONSOLE_PORT"] = str(port)
