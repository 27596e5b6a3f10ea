"""Child objects of a Dataflow: StatefulSet, headless Service, mesh Secret and PodMonitor.

Pure builders: a parsed spec in, plain dicts (Kubernetes JSON, camelCase) out.
Pod ``i`` of the StatefulSet runs process ``i`` of the cluster (its ordinal
comes from the pod name), finds its peers through the headless Service
(``publishNotReadyAddresses`` so names resolve before readiness), and gets
the Redis URL from a Secret when the spec names one. Every pod also gets the
cluster secret from the Dataflow's own mesh Secret (`build_mesh_secret`), so
only its own pods can join its workers' cluster.

The StatefulSet uses ``updateStrategy: OnDelete`` on purpose: a rolling
update would replace one pod at a time, and a cluster whose processes
disagree on the worker count can't run. The operator changes the template
only while the StatefulSet is scaled to zero (a coordinated stop).

A Dataflow has one of two StatefulSets at a time, its *set*: ``<name>``
(pods ``<name>-0``...) or ``<name>-b`` (pods ``<name>-b-0``...), the newest
one (annotation ``headrace.dev/set``, a sequence number) current. A
rescale, upgrade or restart starts the next pods in the other set
(`other_set`) before the old ones stop: they are up, with the flow
imported, waiting for the old execution to release the store
(``HEADRACE_STANDBY_TIMEOUT``, the runtime's ``--standby-timeout``). The template hash is the same for both
sets (the peer pattern is hashed as the first set's).

>>> from headrace_operator.spec import parse_spec
>>> spec = parse_spec({"image": "app:1", "flow": {"import": "app:flow"}, "replicas": 3})
>>> ref = Owner(name="wc", namespace="prod", uid="1234")
>>> sts = build_statefulset(spec, ref)
>>> sts["spec"]["podManagementPolicy"], sts["spec"]["replicas"]
('Parallel', 3)
>>> env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
>>> env["HEADRACE_PEER_PATTERN"]
'wc-{i}.wc.prod.svc.cluster.local:2101'
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from headrace_operator.crd import GROUP, KIND, VERSION
from headrace_operator.spec import CLUSTER_PORT, DataflowSpec, Duration, to_json

__all__ = [
    "ANN_GENERATION",
    "ANN_REPLICAS",
    "ANN_RESET_NONCE",
    "ANN_RESTART_NONCE",
    "ANN_SET",
    "ANN_SPEC",
    "ANN_TEMPLATE_HASH",
    "CLUSTER_PORT",
    "EXPECT_EPOCH_ENV",
    "LABEL_DATAFLOW",
    "MAX_STS_NAME",
    "MESH_SECRET_KEY",
    "OTHER_SET_SUFFIX",
    "TERMINATION_LOG",
    "TERMINATION_LOG_ENV",
    "Owner",
    "build_check_pod",
    "build_mesh_secret",
    "build_pod_monitor",
    "build_service",
    "build_statefulset",
    "current_set",
    "key_prefix",
    "labels",
    "merge_pod_template",
    "mesh_secret_name",
    "other_set",
    "pod_assignment",
    "selector",
    "set_seq",
    "sts_annotations",
    "sts_name",
    "sts_replicas",
    "template_hash",
]

CONTAINER = "worker"
RUN_AS_USER = 10001

ANN_TEMPLATE_HASH = "headrace.dev/template-hash"
ANN_SPEC = "headrace.dev/spec"
ANN_REPLICAS = "headrace.dev/replicas"
ANN_RESTART_NONCE = "headrace.dev/restart-nonce"
ANN_RESET_NONCE = "headrace.dev/reset-state-nonce"
ANN_GENERATION = "headrace.dev/generation"
ANN_SET = "headrace.dev/set"  # the set's sequence number: the highest one is current
LABEL_DATAFLOW = "headrace.dev/dataflow"
# Env vars the operator sets; a user's spec.flow.env entry of the same name wins.
REPLICAS_ENV = "HEADRACE_REPLICAS"
# The last committed epoch the operator saw (the runtime's --expect-epoch): a
# store that no longer holds it stops the start with LostStateError.
EXPECT_EPOCH_ENV = "HEADRACE_EXPECT_EPOCH"
# Where a worker whose input ended writes its "finished" line (the container's
# terminationMessagePath), so the operator can tell an end of input from a crash.
TERMINATION_LOG_ENV = "HEADRACE_TERMINATION_LOG"
TERMINATION_LOG = "/dev/termination-log"
# How long process 0 of a new set waits for the old execution to release the
# store (the runtime's --standby-timeout): within the startup probe's budget
# (it answers only once the wait is over), so that the error says why.
STANDBY_ENV = "HEADRACE_STANDBY_TIMEOUT"
STARTUP_PERIOD, STARTUP_FAILURES = 2, 60
STANDBY_SECONDS = STARTUP_PERIOD * STARTUP_FAILURES - 10
PEER_PATTERN_ENV = "HEADRACE_PEER_PATTERN"
# The suffix of a Dataflow's second set's name.
OTHER_SET_SUFFIX = "-b"
# The longest StatefulSet name (its pods carry "<name>-<revision hash>" in a 63-character label).
MAX_STS_NAME = 52
# Values that change from one start to the next without changing what runs:
# left out of the template hash (a change of them is not an upgrade).
_UNHASHED_ENV = {REPLICAS_ENV, EXPECT_EPOCH_ENV, TERMINATION_LOG_ENV, STANDBY_ENV}
# The workers' shared cluster secret (the runtime's `_net.SECRET_ENV`), and
# its key in the mesh Secret.
SECRET_ENV = "HEADRACE_CLUSTER_SECRET"
MESH_SECRET_KEY = "secret"


@dataclass(frozen=True)
class Owner:
    """The Dataflow that owns the children (for names and ownerReferences)."""

    name: str
    namespace: str
    uid: str
    generation: int = 0
    cluster_domain: str = "cluster.local"
    service_account: str = ""  # the workers' default, when spec.serviceAccountName is unset

    def reference(self) -> dict[str, Any]:
        """The ownerReference children carry (garbage collection on deletion).

        >>> Owner("wc", "ns", "u1").reference()["kind"]
        'Dataflow'
        """
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def selector(name: str) -> dict[str, str]:
    """The label selector of a Dataflow's pods (immutable in a StatefulSet).

    >>> selector("wc")
    {'headrace.dev/dataflow': 'wc'}
    """
    return {LABEL_DATAFLOW: name}


def sts_annotations(sts: dict[str, Any] | None) -> dict[str, str]:
    """What a StatefulSet records of what runs (its annotations; ``{}`` if none).

    >>> sts_annotations({"metadata": {"annotations": {ANN_REPLICAS: "3"}}})
    {'headrace.dev/replicas': '3'}
    """
    return ((sts or {}).get("metadata") or {}).get("annotations") or {}


def sts_name(sts: dict[str, Any]) -> str:
    """A StatefulSet's name.

    >>> sts_name({"metadata": {"name": "wc-b"}})
    'wc-b'
    """
    return str((sts.get("metadata") or {}).get("name") or "")


def set_seq(sts: dict[str, Any] | None) -> int:
    """A set's sequence number (0 for the first, or one without the annotation).

    >>> set_seq({"metadata": {"annotations": {ANN_SET: "4"}}}), set_seq(None)
    (4, 0)
    """
    got = sts_annotations(sts).get(ANN_SET, "0")
    return int(got) if got.isdigit() else 0


def other_set(name: str, current: str) -> str:
    """The name of a Dataflow ``name``'s set that is not ``current``.

    >>> other_set("wc", "wc"), other_set("wc", "wc-b")
    ('wc-b', 'wc')
    """
    return name if current != name else name + OTHER_SET_SUFFIX


def current_set(
    first: dict[str, Any] | None, second: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Of a Dataflow's two sets (either may be missing), the current one and the old one.

    The current set is the one with the higher sequence number (`set_seq`).

    >>> a = {"metadata": {"name": "wc", "annotations": {ANN_SET: "2"}}}
    >>> b = {"metadata": {"name": "wc-b", "annotations": {ANN_SET: "1"}}}
    >>> [sts_name(s) if s else None for s in current_set(a, b)]
    ['wc', 'wc-b']
    >>> [sts_name(s) if s else None for s in current_set(None, b)]
    ['wc-b', None]
    """
    if first is None or second is None:
        return first or second, None
    return (first, second) if set_seq(first) >= set_seq(second) else (second, first)


def sts_replicas(sts: dict[str, Any]) -> int:
    """A StatefulSet's ``spec.replicas`` (0 when unset).

    >>> sts_replicas({"spec": {"replicas": 2}}), sts_replicas({})
    (2, 0)
    """
    return int((sts.get("spec") or {}).get("replicas") or 0)


def labels(name: str, component: str = "worker") -> dict[str, str]:
    """Labels of a Dataflow's children.

    >>> labels("wc")["app.kubernetes.io/instance"]
    'wc'
    """
    return {
        "app.kubernetes.io/name": "headrace",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "headrace-operator",
        LABEL_DATAFLOW: name,
    }


def key_prefix(spec: DataflowSpec, owner: Owner) -> str:
    """The Redis key prefix of the Dataflow's state.

    >>> from headrace_operator.spec import parse_spec
    >>> key_prefix(parse_spec({"image": "i", "flow": {"import": "m:f"}}), Owner("wc", "ns", "u"))
    'ns/wc'
    """
    if spec.recovery is not None and spec.recovery.key_prefix:
        return spec.recovery.key_prefix
    return f"{owner.namespace}/{owner.name}"


def _seconds_str(duration: Duration) -> str:
    s = duration.seconds
    return str(int(s)) if s == int(s) else str(s)


def _env(spec: DataflowSpec, owner: Owner, expect_epoch: int) -> list[dict[str, Any]]:
    o = spec.observability
    svc = f"{owner.name}.{owner.namespace}.svc.{owner.cluster_domain}"
    env: list[dict[str, Any]] = [
        {"name": "HEADRACE_PROCESS_ID_FROM_HOSTNAME", "value": "1"},
        {"name": PEER_PATTERN_ENV, "value": f"{owner.name}-{{i}}.{svc}:{CLUSTER_PORT}"},
        {"name": REPLICAS_ENV, "value": str(spec.replicas)},
        {"name": "HEADRACE_BIND_HOST", "value": "0.0.0.0"},
        {"name": "HEADRACE_WORKERS_PER_PROCESS", "value": str(spec.workers_per_process)},
        {"name": "HEADRACE_KEY_GROUPS", "value": str(spec.partitions)},
        {"name": "HEADRACE_METRICS_PORT", "value": str(o.metrics_port)},
        {"name": "HEADRACE_LOG_LEVEL", "value": o.log_level},
        {"name": "HEADRACE_LOG_FORMAT", "value": o.log_format},
        {"name": "HEADRACE_STARTUP_TIMEOUT", "value": "120"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": TERMINATION_LOG_ENV, "value": TERMINATION_LOG},
        {"name": "HEADRACE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": SECRET_ENV,
            "valueFrom": {"secretKeyRef": {"name": mesh_secret_name(owner.name), "key": MESH_SECRET_KEY}},
        },
    ]
    r = spec.recovery
    if r is not None:
        if r.secret_ref is not None:
            env.append(
                {
                    "name": "HEADRACE_RECOVERY",
                    "valueFrom": {"secretKeyRef": {"name": r.secret_ref.name, "key": r.secret_ref.key}},
                }
            )
        else:
            env.append({"name": "HEADRACE_RECOVERY", "value": r.url})
        env.append({"name": "HEADRACE_RECOVERY_PREFIX", "value": key_prefix(spec, owner)})
        env.append({"name": "HEADRACE_EPOCH_INTERVAL", "value": _seconds_str(r.snapshot_interval)})
        if r.backup_interval:
            env.append({"name": "HEADRACE_BACKUP_INTERVAL", "value": _seconds_str(r.backup_interval)})
        env.append({"name": EXPECT_EPOCH_ENV, "value": str(expect_epoch)})
        env.append({"name": STANDBY_ENV, "value": str(STANDBY_SECONDS)})
        if r.allow_dropped_state:
            env.append({"name": "HEADRACE_ALLOW_DROPPED_STATE", "value": "1"})
        if r.allow_evicting_redis:
            env.append({"name": "HEADRACE_ALLOW_EVICTING_REDIS", "value": "1"})
    if spec.flow.bytewax_compat:
        # Only when asked: other Dataflows' pod templates (and hashes) stay as they were.
        env.append({"name": "HEADRACE_BYTEWAX_COMPAT", "value": "1"})
    if o.otlp_endpoint:
        env.append({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": o.otlp_endpoint})
        env.append({"name": "OTEL_SERVICE_NAME", "value": owner.name})
    user = {e.get("name") for e in spec.flow.env}
    return [e for e in env if e["name"] not in user] + copy.deepcopy(spec.flow.env)


def _container(spec: DataflowSpec, owner: Owner, expect_epoch: int) -> dict[str, Any]:
    port = spec.observability.metrics_port
    c: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["python", "-m", "headrace.run"],
        "args": [spec.flow.import_str, *spec.flow.args],
        "env": _env(spec, owner, expect_epoch),
        "ports": [
            {"name": "cluster", "containerPort": CLUSTER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": port, "protocol": "TCP"},
        ],
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": STARTUP_PERIOD,
            "failureThreshold": STARTUP_FAILURES,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 2,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # The runtime prints what failed (a bad import string...) before exiting;
        # this puts those lines into the pod status, where the operator reads them.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if spec.flow.env_from:
        c["envFrom"] = copy.deepcopy(spec.flow.env_from)
    if spec.resources:
        c["resources"] = copy.deepcopy(spec.resources)
    return c


def _grace(spec: DataflowSpec) -> int:
    """The pods' termination grace period (seconds): ``stopTimeout``, at least 30."""
    return max(30, int(spec.restart_policy.stop_timeout.seconds))


def _pod_template(spec: DataflowSpec, owner: Owner, expect_epoch: int = 0) -> dict[str, Any]:
    grace = _grace(spec)
    pod_spec: dict[str, Any] = {
        "containers": [_container(spec, owner, expect_epoch)],
        "terminationGracePeriodSeconds": grace,
        # Workers need no Kubernetes API access.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # The pod's pause process is PID 1, not the worker: a SIGTERM that
        # arrives while Python starts (before its handler is installed: a pod
        # deleted as the kubelet restarts its container) then ends the worker
        # at once. As PID 1 it would be dropped by the kernel, and the pod
        # would stay Terminating for its whole grace period.
        "shareProcessNamespace": True,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if spec.service_account_name or owner.service_account:
        pod_spec["serviceAccountName"] = spec.service_account_name or owner.service_account
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = copy.deepcopy(spec.tolerations)
    if spec.affinity:
        pod_spec["affinity"] = copy.deepcopy(spec.affinity)
    template = {
        "metadata": {
            "labels": labels(owner.name),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(spec.observability.metrics_port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod_spec,
    }
    return merge_pod_template(template, spec.pod_template)


def _deep_merge(base: Any, overlay: Any) -> Any:
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for k, v in overlay.items():
            out[k] = _deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(overlay)


def _merge_named(base: list[dict[str, Any]], overlay: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [dict(x) for x in base]
    index = {x.get("name"): i for i, x in enumerate(out)}
    for item in overlay:
        i = index.get(item.get("name"))
        if i is None:
            out.append(copy.deepcopy(item))
        else:
            merged = _deep_merge(
                out[i], {k: v for k, v in item.items() if k not in ("env", "volumeMounts", "ports")}
            )
            for key in ("env", "volumeMounts", "ports"):
                if key in item:
                    merged[key] = _merge_named(out[i].get(key, []), item[key])
            out[i] = merged
    return out


def merge_pod_template(template: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Merge a user's ``podTemplate`` into the generated pod template.

    Maps merge recursively; ``containers``, ``initContainers`` and ``volumes``
    merge by name (a container named ``worker`` changes the worker container);
    other lists are replaced.

    >>> base = {"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "worker",
    ...         "image": "x", "env": [{"name": "A", "value": "1"}]}]}}
    >>> over = {"metadata": {"labels": {"b": "2"}}, "spec": {"containers": [{"name": "worker",
    ...         "env": [{"name": "B", "value": "2"}]}, {"name": "sidecar", "image": "y"}]}}
    >>> out = merge_pod_template(base, over)
    >>> out["metadata"]["labels"], [c["name"] for c in out["spec"]["containers"]]
    ({'a': '1', 'b': '2'}, ['worker', 'sidecar'])
    >>> [e["name"] for e in out["spec"]["containers"][0]["env"]]
    ['A', 'B']
    """
    if not overlay:
        return template
    out = copy.deepcopy(template)
    meta = overlay.get("metadata") or {}
    for key in ("labels", "annotations"):
        if meta.get(key):
            out["metadata"].setdefault(key, {}).update(meta[key])
    ospec = overlay.get("spec") or {}
    for key, value in ospec.items():
        if key in ("containers", "initContainers", "volumes"):
            out["spec"][key] = _merge_named(out["spec"].get(key, []), value)
        elif key in out["spec"]:
            out["spec"][key] = _deep_merge(out["spec"][key], value)
        else:
            out["spec"][key] = copy.deepcopy(value)
    # The selector label must stay, whatever the overlay says.
    own = (template.get("metadata") or {}).get("labels", {}).get(LABEL_DATAFLOW)
    if own:
        out["metadata"]["labels"][LABEL_DATAFLOW] = own
    return out


def template_hash(template: dict[str, Any]) -> str:
    """A short hash of a pod template, ignoring the replica count (that is a rescale)
    and the values that change from one start to the next (the expected epoch).

    >>> from headrace_operator.spec import parse_spec
    >>> s1 = parse_spec({"image": "a", "flow": {"import": "m:f"}, "replicas": 1})
    >>> s2 = parse_spec({"image": "a", "flow": {"import": "m:f"}, "replicas": 2})
    >>> o = Owner("wc", "ns", "u")
    >>> t = lambda s: build_statefulset(s, o)["spec"]["template"]
    >>> template_hash(t(s1)) == template_hash(t(s2))
    True
    """
    t = copy.deepcopy(template)
    t["metadata"].get("annotations", {}).pop(ANN_TEMPLATE_HASH, None)
    for c in t["spec"].get("containers", []):
        c["env"] = [e for e in c.get("env", []) if e.get("name") not in _UNHASHED_ENV]
    blob = json.dumps(t, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_statefulset(
    spec: DataflowSpec,
    owner: Owner,
    replicas: int | None = None,
    expect_epoch: int = 0,
    set_name: str | None = None,
    seq: int = 0,
) -> dict[str, Any]:
    """The worker StatefulSet; ``replicas`` overrides spec.replicas (0 while stopped).

    ``expect_epoch`` is the last committed epoch the operator saw: every pod
    gets it as ``HEADRACE_EXPECT_EPOCH``, so a recovery store that lost it
    stops the start instead of starting over (0: no expectation).

    Annotations record what is deployed (template hash, spec, replicas,
    nonces) so the operator compares desired and deployed state from the
    cluster alone. ``set_name`` (default: the Dataflow's name) and ``seq``
    say which of the Dataflow's two sets it is (`other_set`); the hash is
    the same for both.

    >>> from headrace_operator.spec import parse_spec
    >>> spec = parse_spec({"image": "i", "flow": {"import": "m:f"}})
    >>> a = build_statefulset(spec, Owner("wc", "ns", "u"))
    >>> b = build_statefulset(spec, Owner("wc", "ns", "u"), set_name="wc-b", seq=1)
    >>> b["metadata"]["name"], b["metadata"]["annotations"][ANN_SET], sts_annotations(a).get(ANN_SET)
    ('wc-b', '1', None)
    >>> [e["value"] for e in b["spec"]["template"]["spec"]["containers"][0]["env"]
    ...  if e["name"] == PEER_PATTERN_ENV]
    ['wc-b-{i}.wc.ns.svc.cluster.local:2101']
    >>> sts_annotations(a)[ANN_TEMPLATE_HASH] == sts_annotations(b)[ANN_TEMPLATE_HASH]
    True
    """
    template = _pod_template(spec, owner, expect_epoch)
    thash = template_hash(template)
    template["metadata"]["annotations"][ANN_TEMPLATE_HASH] = thash
    name = set_name or owner.name
    if name != owner.name:
        for e in template["spec"]["containers"][0]["env"]:
            if e["name"] == PEER_PATTERN_ENV and "value" in e:
                e["value"] = name + e["value"][len(owner.name) :]
    annotations = {
        ANN_TEMPLATE_HASH: thash,
        ANN_SPEC: json.dumps(to_json(spec), sort_keys=True, separators=(",", ":")),
        ANN_REPLICAS: str(spec.replicas),
        ANN_RESTART_NONCE: str(spec.restart_nonce),
        ANN_RESET_NONCE: str(spec.reset_state_nonce),
        ANN_GENERATION: str(owner.generation),
    }
    if seq:
        annotations[ANN_SET] = str(seq)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": labels(owner.name),
            "annotations": annotations,
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "replicas": spec.replicas if replicas is None else replicas,
            "serviceName": owner.name,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector(owner.name)},
            "template": template,
        },
    }


def build_check_pod(sts: dict[str, Any]) -> dict[str, Any]:
    """A pod of the StatefulSet's template, for a server-side dry run only.

    The API server accepts a StatefulSet whose template it would refuse as a
    pod (a container without an image, say); its pods would then never be
    created. The operator checks one with ``dryRun=All`` first.

    >>> from headrace_operator.spec import parse_spec
    >>> sts = build_statefulset(parse_spec({"image": "i", "flow": {"import": "m:f"}}), Owner("wc", "ns", "u"))
    >>> pod = build_check_pod(sts)
    >>> pod["kind"], pod["metadata"]["generateName"], pod["spec"]["containers"][0]["name"]
    ('Pod', 'wc-check-', 'worker')
    """
    meta = sts["metadata"]
    template = copy.deepcopy(sts["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            **template.get("metadata", {}),
            "generateName": f"{meta['name']}-check-",
            "namespace": meta["namespace"],
        },
        "spec": template["spec"],
    }


def build_service(spec: DataflowSpec, owner: Owner) -> dict[str, Any]:
    """The headless Service giving each pod a stable DNS name.

    >>> from headrace_operator.spec import parse_spec
    >>> svc = build_service(parse_spec({"image": "i", "flow": {"import": "m:f"}}), Owner("wc", "ns", "u"))
    >>> svc["spec"]["clusterIP"], svc["spec"]["publishNotReadyAddresses"]
    ('None', True)
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": labels(owner.name),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "clusterIP": "None",
            # Peers must resolve each other before any is Ready (readiness needs the peers).
            "publishNotReadyAddresses": True,
            "selector": selector(owner.name),
            "ports": [
                {"name": "cluster", "port": CLUSTER_PORT, "targetPort": "cluster", "protocol": "TCP"},
                {
                    "name": "metrics",
                    "port": spec.observability.metrics_port,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def mesh_secret_name(name: str) -> str:
    """The name of a Dataflow's mesh Secret.

    >>> mesh_secret_name("wc")
    'wc-mesh'
    """
    return f"{name}-mesh"


def build_mesh_secret(owner: Owner) -> dict[str, Any]:
    """The Secret holding the workers' shared cluster secret, without its value.

    The operator creates it once with a random value (`_kube.Kube.create_secret`)
    and never changes it; it goes with the Dataflow (ownerReference). A worker
    that can't prove it holds the value can't join the cluster, and nothing a
    stranger sends the cluster port is unpickled.

    >>> sec = build_mesh_secret(Owner("wc", "ns", "u"))
    >>> sec["metadata"]["name"], sec["type"], "data" in sec
    ('wc-mesh', 'Opaque', False)
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": mesh_secret_name(owner.name),
            "namespace": owner.namespace,
            "labels": labels(owner.name, "mesh"),
            "ownerReferences": [owner.reference()],
        },
    }


def build_pod_monitor(spec: DataflowSpec, owner: Owner) -> dict[str, Any]:
    """The Prometheus Operator PodMonitor scraping every worker.

    >>> from headrace_operator.spec import parse_spec
    >>> s = parse_spec({"image": "i", "flow": {"import": "m:f"},
    ...                 "observability": {"podMonitor": {"enabled": True,
    ...                                                  "labels": {"release": "prom"}}}})
    >>> pm = build_pod_monitor(s, Owner("wc", "ns", "u"))
    >>> pm["metadata"]["labels"]["release"]
    'prom'
    >>> pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["targetLabel"]
    'dataflow'
    """
    pm = spec.observability.pod_monitor
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": {**labels(owner.name), **pm.labels},
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "selector": {"matchLabels": selector(owner.name)},
            "podMetricsEndpoints": [
                {
                    "port": "metrics",
                    "path": "/metrics",
                    "interval": pm.interval,
                    # The dashboards and alerts select by `dataflow`, `namespace`, `pod`.
                    "relabelings": [
                        {
                            "action": "replace",
                            "targetLabel": "dataflow",
                            "sourceLabels": ["__meta_kubernetes_pod_label_headrace_dev_dataflow"],
                        },
                        {
                            "action": "replace",
                            "targetLabel": "namespace",
                            "sourceLabels": ["__meta_kubernetes_namespace"],
                        },
                        {
                            "action": "replace",
                            "targetLabel": "pod",
                            "sourceLabels": ["__meta_kubernetes_pod_name"],
                        },
                    ],
                }
            ],
        },
    }


def _span(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def pod_assignment(
    replicas: int, workers_per_process: int, key_groups: int, limit: int = 64
) -> list[dict[str, Any]]:
    """Key groups owned by each pod (the runtime's contiguous ranges), first ``limit`` pods.

    >>> pod_assignment(2, 2, 8)
    [{'pod': 0, 'workers': '0-1', 'keyGroups': '0-3'}, {'pod': 1, 'workers': '2-3', 'keyGroups': '4-7'}]
    """
    from headrace._engine import group_owner

    workers = replicas * workers_per_process
    owners = [group_owner(g, key_groups, workers) for g in range(key_groups)]
    out = []
    for pod in range(min(replicas, limit)):
        w0, w1 = pod * workers_per_process, (pod + 1) * workers_per_process - 1
        groups = [g for g, w in enumerate(owners) if w0 <= w <= w1]
        out.append(
            {
                "pod": pod,
                "workers": _span(w0, w1),
                "keyGroups": _span(groups[0], groups[-1]) if groups else "",
            }
        )
    return out
