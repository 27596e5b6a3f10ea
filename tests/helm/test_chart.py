"""The Helm chart (helm/headrace): lint, render with default and other values,
and check what comes out (kinds, labels, security, RBAC, monitoring objects,
dashboards, schema, examples), plus static checks of the Dockerfile.

Needs the `helm` binary: $HELM, `helm` on $PATH or in ~/go/bin, else the test
session builds it once at the pinned version (`tests.support._tools`).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.helm import (
    CHART,
    FULLNAME,
    NAMESPACE,
    PROMETHEUS_API,
    RELEASE,
    ROOT,
    by_kind,
    helm,
    one,
    render,
    render_notes,
    values_args,
)

APP = ROOT / "examples" / "k8s" / "app"
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
ALERTS = {"DataflowNotReady", "SnapshotStale", "LagGrowing", "StepErrors", "OperatorDown", "ReconcileErrors"}
pytestmark = pytest.mark.tools("helm")


# ------------------------------------------------------------------ helpers


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """A role's rules flattened to (apiGroup, resource, verb) triples."""
    out = set()
    for r in role["rules"]:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    out.add((g, res, v))
    return out


def _triples(group: str, resources: list[str], verbs: list[str]) -> set[tuple[str, str, str]]:
    return {(group, r, v) for r in resources for v in verbs}


CRUD = ["get", "list", "watch", "create", "update", "patch", "delete"]
NAMESPACED_RULES = (
    _triples("headrace.dev", ["dataflows"], ["get", "list", "watch", "patch", "update"])
    | _triples("headrace.dev", ["dataflows/status", "dataflows/scale"], ["get", "patch", "update"])
    | _triples("apps", ["statefulsets"], CRUD)
    | _triples("", ["services"], CRUD)
    | _triples("", ["pods"], ["get", "list", "watch", "create", "delete"])
    | _triples("", ["events"], ["create", "patch"])
    | _triples("events.k8s.io", ["events"], ["create", "patch"])
    | _triples("", ["secrets"], ["get", "create"])
    | _triples("monitoring.coreos.com", ["podmonitors"], CRUD)
)
CLUSTER_RULES = _triples("apiextensions.k8s.io", ["customresourcedefinitions"], ["get", "list", "watch"])


def assert_restricted(pod_spec: dict[str, Any], what: str) -> None:
    """The 'restricted' Pod Security Standard, plus a read-only root filesystem."""
    psc = pod_spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod_spec.get(key), f"{what}: {key}"
    for vol in pod_spec.get("volumes", []):
        kinds = set(vol) - {"name"}
        assert kinds <= {
            "emptyDir",
            "configMap",
            "secret",
            "projected",
            "downwardAPI",
            "persistentVolumeClaim",
            "ephemeral",
            "csi",
        }, f"{what}: volume {vol}"
    for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        sc = c.get("securityContext", {})
        name = f"{what}/{c['name']}"
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, name
        assert sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, name
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), name
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert not sc.get("privileged"), name
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
        assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, name
        assert sc.get("readOnlyRootFilesystem") is True, name
        assert "hostPort" not in json.dumps(c.get("ports", [])), name


# ------------------------------------------------------------------ lint


NON_DEFAULT = {
    "fullnameOverride": "hrx",
    "image": {"repository": "registry.local/headrace", "tag": "9.9.9", "pullPolicy": "Never"},
    "imagePullSecrets": ["regcred"],
    "watchNamespaces": ["team-a", "team-b"],
    "clusterDomain": "corp.local",
    "operator": {
        "logLevel": "DEBUG",
        "logFormat": "plain",
        "port": 9090,
        "staleAfterSeconds": 120,
        "extraEnv": [{"name": "X", "value": "1"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"a": "b"},
        "manageDataflowPodMonitors": False,
        "replicas": 3,
        "leaderElection": {
            "leaseName": "hrx-leader",
            "leaseDurationSeconds": 30,
            "renewDeadlineSeconds": 20,
            "retryPeriodSeconds": 4,
        },
        "podAntiAffinity": "required",
    },
    "serviceAccount": {"worker": {"namespaces": ["team-c"], "annotations": {"x": "y"}}},
    "service": {"port": 9191},
    "monitoring": {
        "prometheusRule": {"notReadyFor": "3m", "lagMinItems": 50, "alertLabels": {"team": "data"}},
        "serviceMonitor": {"labels": {"release": "kps"}},
    },
    "dashboards": {
        "namespace": "grafana",
        "annotations": {"grafana_folder": "Headrace"},
        "labels": {"grafana_dashboard": "1", "team": "data"},
    },
    "redis": {"enabled": True},
}


def test_lint_with_default_and_non_default_values(tmp_path: Path) -> None:
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), *values_args(NON_DEFAULT, tmp_path))


# ------------------------------------------------------------------ default render


def test_default_render_has_the_operator_and_nothing_optional(tmp_path: Path) -> None:
    objs = render(tmp_path)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "PodDisruptionBudget",
            "Deployment",
            "Service",
            "Service",  # the console's
        ]
        + ["ConfigMap"] * len(list((CHART / "dashboards").glob("*.json")))
    )
    assert not MONITORING_KINDS & set(kinds), "monitoring objects without the API"
    assert not [o for o in objs if o["metadata"]["name"].endswith("-redis")]
    for o in objs:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "headrace", o["metadata"]["name"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "headrace-0.1.0"
        if not o["kind"].startswith("Cluster"):
            assert o["metadata"]["namespace"] == NAMESPACE, o["metadata"]["name"]


def test_operator_deployment_is_two_restricted_replicas_with_leader_election(tmp_path: Path) -> None:
    dep = one(render(tmp_path), "Deployment")
    assert dep["metadata"]["name"] == f"{FULLNAME}-operator"
    assert dep["spec"]["replicas"] == 2
    # The Lease, not the Deployment, keeps two operators from reconciling at once.
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    spec = pod["spec"]
    assert spec["serviceAccountName"] == f"{FULLNAME}-operator"
    assert_restricted(spec, "operator")
    (c,) = spec["containers"]
    assert c["image"] == "headrace:0.1.0"
    assert c["command"] == ["headrace-operator"] and "args" not in c
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["WATCH_NAMESPACES"] == "", "empty: every namespace"
    assert env["HEADRACE_OPERATOR_METRICS_PORT"] == "8080"
    assert env["HEADRACE_OPERATOR_LOG_LEVEL"] == "INFO"
    assert env["HEADRACE_CLUSTER_DOMAIN"] == "cluster.local"
    # Leader election on a Lease, not kopf peering (no peering objects or RBAC).
    assert "HEADRACE_OPERATOR_PEERING" not in env
    assert env["HEADRACE_OPERATOR_LEADER_ELECTION"] == "true"
    assert env["HEADRACE_OPERATOR_LEASE_NAME"] == f"{FULLNAME}-operator"
    assert env["HEADRACE_OPERATOR_LEASE_NAMESPACE"] == NAMESPACE
    assert env["HEADRACE_OPERATOR_LEASE_DURATION"] == "15"
    assert env["HEADRACE_OPERATOR_RENEW_DEADLINE"] == "10"
    assert env["HEADRACE_OPERATOR_RETRY_PERIOD"] == "2"
    assert env["HEADRACE_OPERATOR_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert c["ports"] == [
        {"name": "metrics", "containerPort": 8080, "protocol": "TCP"},
        {"name": "console", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # A read-only root filesystem needs a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in spec["volumes"])
    assert c["resources"]["limits"]["memory"]


def test_without_leader_election_one_replica_is_replaced_by_recreate(tmp_path: Path) -> None:
    values = {"operator": {"replicas": 1, "leaderElection": {"enabled": False}}}
    objs = render(tmp_path, values)
    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert not [e for e in c["env"] if "LEASE" in e["name"] or "LEADER" in e["name"]]
    assert "affinity" not in dep["spec"]["template"]["spec"]
    assert not by_kind(objs, "Role") and not by_kind(objs, "PodDisruptionBudget")
    # Two replicas without a Lease would both reconcile: refused by the schema ...
    values["operator"]["replicas"] = 2
    proc = helm("template", RELEASE, str(CHART), *values_args(values, tmp_path), check=False)
    assert proc.returncode != 0 and "/operator/replicas" in proc.stderr, proc.stderr
    # ... and by the template, should the schema be skipped.
    proc = helm(
        "template", RELEASE, str(CHART), "--skip-schema-validation",
        *values_args(values, tmp_path), check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "needs operator.leaderElection.enabled" in proc.stderr, proc.stderr


def test_leader_election_rbac_is_one_lease_in_the_release_namespace(tmp_path: Path) -> None:
    objs = render(tmp_path)
    role = one(objs, "Role", f"{FULLNAME}-operator-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    # create cannot name its object; get and update only this Lease; no list, watch or delete.
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [f"{FULLNAME}-operator"],
            "verbs": ["get", "update"],
        },
    ]
    binding = one(objs, "RoleBinding", f"{FULLNAME}-operator-leader-election")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{FULLNAME}-operator", "namespace": NAMESPACE}
    ]
    # No lease rights anywhere else.
    others = [r for r in by_kind(objs, "ClusterRole") + by_kind(objs, "Role") if r is not role]
    assert not [
        r["metadata"]["name"] for r in others if any(g == "coordination.k8s.io" for g, _, _ in rules_of(r))
    ]
    bad = {"operator": {"leaderElection": {"leaseDurationSeconds": 10, "renewDeadlineSeconds": 10}}}
    proc = helm("template", RELEASE, str(CHART), *values_args(bad, tmp_path), check=False)
    assert proc.returncode != 0 and "must be longer than renewDeadlineSeconds" in proc.stderr, proc.stderr
    named = render(tmp_path, {"operator": {"leaderElection": {"leaseName": "ops-lease"}}})
    assert one(named, "Role", f"{FULLNAME}-operator-leader-election")["rules"][1]["resourceNames"] == [
        "ops-lease"
    ]
    (c,) = one(named, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {"name": "HEADRACE_OPERATOR_LEASE_NAME", "value": "ops-lease"} in c["env"]


def test_replicas_are_spread_over_nodes_and_drained_one_at_a_time(tmp_path: Path) -> None:
    objs = render(tmp_path)
    spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    selector = {
        "app.kubernetes.io/name": "headrace",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "operator",
    }
    assert spec["affinity"] == {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": selector},
                    },
                }
            ]
        }
    }
    pdb = one(objs, "PodDisruptionBudget", f"{FULLNAME}-operator")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    required = one(render(tmp_path, {"operator": {"podAntiAffinity": "required"}}), "Deployment")
    assert required["spec"]["template"]["spec"]["affinity"] == {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector}}
            ]
        }
    }
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    mine = one(render(tmp_path, {"operator": {"affinity": own}}), "Deployment")
    assert mine["spec"]["template"]["spec"]["affinity"] == own
    objs = render(
        tmp_path, {"operator": {"podAntiAffinity": "none", "podDisruptionBudget": {"enabled": False}}}
    )
    assert "affinity" not in one(objs, "Deployment")["spec"]["template"]["spec"]
    assert not by_kind(objs, "PodDisruptionBudget")


def test_operator_reads_every_setting_the_chart_gives_it(tmp_path: Path) -> None:
    """The chart configures the operator through environment variables; each
    must be one the operator's code reads (or a setting is silently lost)."""
    source = "\n".join(p.read_text() for p in (ROOT / "operator" / "headrace_operator").glob("*.py"))
    (c,) = one(render(tmp_path), "Deployment")["spec"]["template"]["spec"]["containers"]
    for e in c["env"]:
        assert f'"{e["name"]}"' in source, f"the operator never reads {e['name']}"


def test_metrics_service_selects_the_operator_pod(tmp_path: Path) -> None:
    objs = render(tmp_path)
    svc = one(objs, "Service", f"{FULLNAME}-operator")
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]


# ------------------------------------------------------------------ RBAC


def test_cluster_wide_rbac_grants_exactly_what_the_operator_needs(tmp_path: Path) -> None:
    objs = render(tmp_path)
    role = one(objs, "ClusterRole", f"{FULLNAME}-operator")
    assert rules_of(role) == NAMESPACED_RULES | CLUSTER_RULES
    # The only Role: the leader election Lease's (its own test below).
    assert [r["metadata"]["name"] for r in by_kind(objs, "Role")] == [f"{FULLNAME}-operator-leader-election"]
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{FULLNAME}-operator", "namespace": NAMESPACE}
    ]
    flat = {t for r in by_kind(objs, "ClusterRole") for t in rules_of(r)}
    assert not any("*" in t for t in flat), "no wildcards"
    assert not any(res in ("pods/exec", "pods/attach", "pods/portforward") for _, res, _ in flat)
    # Secrets: read spec.recovery.secretRef, create mesh Secrets; never list, watch or change.
    assert {v for _, res, v in rules_of(role) if res == "secrets"} == {"get", "create"}


def test_watch_namespaces_gives_roles_per_namespace_and_a_crd_only_cluster_role(tmp_path: Path) -> None:
    objs = render(tmp_path, {"watchNamespaces": ["team-a", "team-b"]}, *PROMETHEUS_API)
    role = one(objs, "ClusterRole", f"{FULLNAME}-operator")
    assert rules_of(role) == CLUSTER_RULES
    roles = [r for r in by_kind(objs, "Role") if r["metadata"]["name"] == f"{FULLNAME}-operator"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for r in roles:
        assert rules_of(r) == NAMESPACED_RULES
    bindings = [b for b in by_kind(objs, "RoleBinding") if b["metadata"]["name"] == f"{FULLNAME}-operator"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": f"{FULLNAME}-operator",
        }
        assert b["subjects"][0]["namespace"] == NAMESPACE
    (c,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["WATCH_NAMESPACES"] == "team-a,team-b"
    workers = [o for o in by_kind(objs, "ServiceAccount") if o["metadata"]["name"] == f"{FULLNAME}-worker"]
    assert sorted(o["metadata"]["namespace"] for o in workers) == [NAMESPACE, "team-a", "team-b"]
    pm = one(objs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_podmonitor_rights_follow_manage_dataflow_podmonitors(tmp_path: Path) -> None:
    objs = render(tmp_path, {"operator": {"manageDataflowPodMonitors": False}})
    triples = rules_of(one(objs, "ClusterRole", f"{FULLNAME}-operator"))
    assert not [t for t in triples if t[0] == "monitoring.coreos.com"]


def test_workers_service_account_has_no_rights_and_no_token(tmp_path: Path) -> None:
    objs = render(tmp_path, NON_DEFAULT, *PROMETHEUS_API)
    workers = [
        o
        for o in by_kind(objs, "ServiceAccount")
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]
    assert sorted(o["metadata"]["namespace"] for o in workers) == [NAMESPACE, "team-a", "team-b", "team-c"]
    for sa in workers:
        assert sa["automountServiceAccountToken"] is False
        assert sa["metadata"]["annotations"] == {"x": "y"}
    worker_name = workers[0]["metadata"]["name"]
    for b in by_kind(objs, "RoleBinding") + by_kind(objs, "ClusterRoleBinding"):
        assert all(s["name"] != worker_name for s in b["subjects"]), b["metadata"]["name"]


def test_rbac_and_service_accounts_can_be_left_to_the_user(tmp_path: Path) -> None:
    objs = render(
        tmp_path,
        {
            "rbac": {"create": False},
            "serviceAccount": {
                "operator": {"create": False, "name": "op"},
                "worker": {"create": False, "name": "wk"},
            },
        },
    )
    assert {o["kind"] for o in objs} == {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}
    spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "op"


def test_user_roles_aggregate_dataflow_rights(tmp_path: Path) -> None:
    objs = render(tmp_path)
    edit = one(objs, "ClusterRole", f"{FULLNAME}-dataflows-edit")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert ("headrace.dev", "dataflows/scale", "patch") in rules_of(edit)
    view = one(objs, "ClusterRole", f"{FULLNAME}-dataflows-view")
    assert {v for _, _, v in rules_of(view)} == {"get", "list", "watch"}
    objs = render(tmp_path, {"rbac": {"aggregateToDefaultRoles": False}})
    assert len(by_kind(objs, "ClusterRole")) == 1


# ------------------------------------------------------------------ monitoring


def test_monitoring_objects_render_only_with_the_prometheus_operator_api(tmp_path: Path) -> None:
    assert not MONITORING_KINDS & {o["kind"] for o in render(tmp_path)}
    objs = render(tmp_path, None, *PROMETHEUS_API)
    assert MONITORING_KINDS <= {o["kind"] for o in objs}
    for kind, key in (
        ("PodMonitor", "podMonitor"),
        ("ServiceMonitor", "serviceMonitor"),
        ("PrometheusRule", "prometheusRule"),
    ):
        off = render(tmp_path, {"monitoring": {key: {"enabled": False}}}, *PROMETHEUS_API)
        assert kind not in {o["kind"] for o in off}
        assert MONITORING_KINDS - {kind} <= {o["kind"] for o in off}


def test_podmonitor_scrapes_workers_and_relabels_the_dataflow(tmp_path: Path) -> None:
    pm = one(render(tmp_path, None, *PROMETHEUS_API), "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    sel = pm["spec"]["selector"]
    assert sel["matchLabels"] == {"app.kubernetes.io/name": "headrace"}
    assert sel["matchExpressions"] == [{"key": "headrace.dev/dataflow", "operator": "Exists"}]
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics"
    assert {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_pod_label_headrace_dev_dataflow"],
        "targetLabel": "dataflow",
    } in ep["relabelings"]


def test_podmonitor_matches_the_operators_worker_pods(tmp_path: Path) -> None:
    """The chart's PodMonitor selects the pods the operator builds, by label and port."""
    manifests = pytest.importorskip("headrace_operator.manifests")
    from headrace_operator.spec import parse_spec

    sts = manifests.build_statefulset(
        parse_spec({"image": "i", "flow": {"import": "m:f"}, "replicas": 2}),
        manifests.Owner("wc", "ns", "uid"),
    )
    pod = sts["spec"]["template"]
    pm = one(render(tmp_path, None, *PROMETHEUS_API), "PodMonitor")
    sel = pm["spec"]["selector"]
    assert sel["matchLabels"].items() <= pod["metadata"]["labels"].items()
    for expr in sel["matchExpressions"]:
        assert expr["key"] in pod["metadata"]["labels"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] in ports
    # The operator's own pod must not be scraped as a worker.
    op_labels = one(render(tmp_path), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert "headrace.dev/dataflow" not in op_labels


def test_worker_pods_the_operator_builds_are_restricted_too() -> None:
    """docs/kubernetes.md promises restricted pods from the chart and the operator."""
    manifests = pytest.importorskip("headrace_operator.manifests")
    from headrace_operator.spec import parse_spec

    sts = manifests.build_statefulset(
        parse_spec({"image": "i", "flow": {"import": "m:f"}}), manifests.Owner("wc", "ns", "u")
    )
    spec = sts["spec"]["template"]["spec"]
    assert_restricted(spec, "worker")
    assert spec["automountServiceAccountToken"] is False


def test_servicemonitor_scrapes_the_operator_service_keeping_its_labels(tmp_path: Path) -> None:
    objs = render(tmp_path, NON_DEFAULT, *PROMETHEUS_API)
    sm = one(objs, "ServiceMonitor")
    svc = one(objs, "Service", "hrx-operator")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == svc["spec"]["ports"][0]["name"]
    assert ep["honorLabels"] is True
    assert sm["metadata"]["labels"]["release"] == "kps"


def test_prometheus_rule_has_the_six_alerts(tmp_path: Path) -> None:
    rule = one(render(tmp_path, None, *PROMETHEUS_API), "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert set(alerts) == ALERTS
    for name, a in alerts.items():
        assert a["expr"].strip(), name
        assert re.fullmatch(r"\d+[smh]", a["for"]), name
        assert a["labels"]["severity"] in ("warning", "critical"), name
        assert a["annotations"]["summary"] and a["annotations"]["description"], name
    assert alerts["OperatorDown"]["labels"]["severity"] == "critical"
    # OperatorDown watches this release's operator, by the Service-derived job.
    assert f'job="{FULLNAME}-operator"' in alerts["OperatorDown"]["expr"]
    assert f'namespace="{NAMESPACE}"' in alerts["OperatorDown"]["expr"]


def test_prometheus_rule_follows_values(tmp_path: Path) -> None:
    rule = one(render(tmp_path, NON_DEFAULT, *PROMETHEUS_API), "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert alerts["DataflowNotReady"]["for"] == "3m"
    assert "> 50" in alerts["LagGrowing"]["expr"]
    assert all(a["labels"]["team"] == "data" for a in alerts.values())
    assert 'job="hrx-operator"' in alerts["OperatorDown"]["expr"]


# ------------------------------------------------------------------ dashboards


def test_dashboards_are_configmaps_for_the_grafana_sidecar(tmp_path: Path) -> None:
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert {f.stem for f in files} >= {"dataflow", "operator", "autoscaler", "snapshots"}
    cms = by_kind(render(tmp_path), "ConfigMap")
    assert len(cms) == len(files)
    for f in files:
        cm = one(cms, "ConfigMap", f"{FULLNAME}-dashboard-{f.stem}")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["data"] == {f.name: f.read_text().rstrip("\n")}
        json.loads(cm["data"][f.name])
    custom = by_kind(render(tmp_path, NON_DEFAULT), "ConfigMap")
    for cm in custom:
        assert cm["metadata"]["namespace"] == "grafana"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Headrace"}
        assert cm["metadata"]["labels"]["team"] == "data"
    assert not by_kind(render(tmp_path, {"dashboards": {"enabled": False}}), "ConfigMap")


# ------------------------------------------------------------------ non-default values


def test_non_default_values_reach_the_operator(tmp_path: Path) -> None:
    objs = render(tmp_path, NON_DEFAULT)
    dep = one(objs, "Deployment", "hrx-operator")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"] == "registry.local/headrace:9.9.9"
    assert c["imagePullPolicy"] == "Never"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HEADRACE_OPERATOR_LOG_LEVEL"] == "DEBUG" and env["X"] == "1"
    assert env["HEADRACE_OPERATOR_LOG_FORMAT"] == "plain"
    assert env["HEADRACE_OPERATOR_STALE_AFTER"] == "120"
    assert env["HEADRACE_OPERATOR_METRICS_PORT"] == "9090"
    assert env["HEADRACE_CLUSTER_DOMAIN"] == "corp.local"
    assert env["WATCH_NAMESPACES"] == "team-a,team-b"
    assert dep["spec"]["replicas"] == 3
    assert env["HEADRACE_OPERATOR_LEASE_NAME"] == "hrx-leader"
    assert (
        env["HEADRACE_OPERATOR_LEASE_DURATION"],
        env["HEADRACE_OPERATOR_RENEW_DEADLINE"],
        env["HEADRACE_OPERATOR_RETRY_PERIOD"],
    ) == ("30", "20", "4")
    assert "requiredDuringSchedulingIgnoredDuringExecution" in spec["affinity"]["podAntiAffinity"]
    assert c["ports"][0]["containerPort"] == 9090
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert dep["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}
    assert one(objs, "Service", "hrx-operator")["spec"]["ports"][0]["port"] == 9191


def test_demo_redis_is_off_by_default_and_restricted_when_on(tmp_path: Path) -> None:
    objs = render(tmp_path, {"redis": {"enabled": True}})
    dep = one(objs, "Deployment", f"{FULLNAME}-redis")
    svc = one(objs, "Service", f"{FULLNAME}-redis")
    spec = dep["spec"]["template"]["spec"]
    assert_restricted(spec, "redis")
    assert spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    assert c["command"][0] == "redis-server"
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    operator = one(objs, "Deployment", f"{FULLNAME}-operator")
    # The two Deployments must not select each other's pods.
    assert not (svc["spec"]["selector"].items() <= operator["spec"]["template"]["metadata"]["labels"].items())
    notes = render_notes(tmp_path, {"redis": {"enabled": True}})
    assert f"redis://{FULLNAME}-redis.{NAMESPACE}.svc:6379/0" in notes


def test_notes_tell_what_to_do_next(tmp_path: Path) -> None:
    notes = render_notes(tmp_path)
    assert f"rollout status deployment/{FULLNAME}-operator" in notes
    assert "kubectl get df" in notes and "every namespace" in notes
    assert "monitoring.coreos.com/v1) was not found" in notes
    notes = render_notes(tmp_path, {"watchNamespaces": ["a", "b"]}, *PROMETHEUS_API)
    assert "these namespaces: a, b" in notes and "PrometheusRule" in notes


# ------------------------------------------------------------------ schema


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"logLevel": "LOUD"}}, "/operator/logLevel"),
        ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        (
            {"monitoring": {"prometheusRule": {"notReadyFor": "ten minutes"}}},
            "/monitoring/prometheusRule/notReadyFor",
        ),
        ({"operator": {"replicas": 2, "leaderElection": {"enabled": False}}}, "/operator/replicas"),
        ({"operator": {"replicas": 0}}, "/operator/replicas"),
        ({"operator": {"podAntiAffinity": "sometimes"}}, "/operator/podAntiAffinity"),
        ({"operator": {"leaderElection": {"leaseDurationSeconds": "15s"}}}, "leaseDurationSeconds"),
        ({"redsi": {"enabled": True}}, "redsi"),
    ],
)
def test_schema_rejects_bad_values(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    proc = helm("template", RELEASE, str(CHART), *values_args(values, tmp_path), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def _leaves(tree: dict[str, Any], schema: dict[str, Any], path: str) -> Iterable[str]:
    """Paths in ``tree`` that ``schema`` does not declare."""
    props = schema.get("properties")
    if props is None:
        return
    for key, value in tree.items():
        if key not in props:
            yield f"{path}.{key}"
        elif isinstance(value, dict):
            yield from _leaves(value, props[key], f"{path}.{key}")


def test_every_value_is_in_the_schema_and_documented() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)
    assert list(_leaves(values, schema, "values")) == []
    # Every key has a comment right above it, or sits in a documented block.
    documented: list[int] = []  # indents of the documented ancestors
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        documented = [d for d in documented if d < indent]
        prev = lines[i - 1].strip() if i else ""
        if prev.startswith("#"):
            documented.append(indent)
        elif not documented and isinstance(_lookup(values, lines, i), dict | type(None)):
            # A bare section header: its children carry the documentation.
            continue
        elif not documented:
            undocumented.append(m.group(2))
    assert undocumented == []


def _lookup(values: dict[str, Any], lines: list[str], i: int) -> Any:
    """The value of the key on line ``i`` of values.yaml (by walking its parents)."""
    path = []
    indent = len(lines[i]) - len(lines[i].lstrip())
    path.append(lines[i].strip().split(":")[0])
    for j in range(i - 1, -1, -1):
        m = re.match(r"^( *)([A-Za-z_][\w.-]*):", lines[j])
        if m and len(m.group(1)) < indent:
            path.append(m.group(2))
            indent = len(m.group(1))
    node: Any = values
    for key in reversed(path):
        node = node[key]
    return node


# ------------------------------------------------------------------ kubernetes models


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if v is not None and v != {}}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


CORE_MODELS = {
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "ServiceAccount": "V1ServiceAccount",
    "ConfigMap": "V1ConfigMap",
    "ClusterRole": "V1ClusterRole",
    "ClusterRoleBinding": "V1ClusterRoleBinding",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
    "PodDisruptionBudget": "V1PodDisruptionBudget",
}


@pytest.mark.parametrize("values", [None, NON_DEFAULT], ids=["default", "non-default"])
def test_core_objects_are_valid_kubernetes_objects(tmp_path: Path, values: dict[str, Any] | None) -> None:
    """Each object goes through the Kubernetes client's typed models and back:
    a misspelt or misplaced field would be dropped and the round trip differ."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    objs = render(tmp_path, values)
    assert {o["kind"] for o in objs} <= set(CORE_MODELS)
    for obj in objs:
        model = api._ApiClient__deserialize(copy.deepcopy(obj), CORE_MODELS[obj["kind"]])  # type: ignore[attr-defined]
        back = _prune(api.sanitize_for_serialization(model))
        assert back == _prune(obj), f"{obj['kind']} {obj['metadata']['name']}"


# ------------------------------------------------------------------ CRDs and examples


def _crd_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((CHART / "crds").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_crds_are_installed_the_helm_way(tmp_path: Path) -> None:
    names = [d["metadata"]["name"] for d in _crd_docs()]
    assert "dataflows.headrace.dev" in names, "helm/headrace/crds/ holds no Dataflow CRD"
    # Helm installs crds/ before the templates and never templates or deletes them.
    assert not by_kind(render(tmp_path), "CustomResourceDefinition")
    with_crds = render(tmp_path, None, "--include-crds")
    assert [o["metadata"]["name"] for o in by_kind(with_crds, "CustomResourceDefinition")] == names
    assert "dataflows.headrace.dev" in helm("show", "crds", str(CHART)).stdout


def _undeclared(schema: dict[str, Any], obj: Any, path: str) -> list[str]:
    """Fields the API server would prune (not declared in the structural schema)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(obj, dict):
        props = schema.get("properties")
        if props is None:
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                return [p for k, v in obj.items() for p in _undeclared(extra, v, f"{path}.{k}")]
            return []
        out = []
        for k, v in obj.items():
            if k not in props:
                out.append(f"{path}.{k}")
            else:
                out += _undeclared(props[k], v, f"{path}.{k}")
        return out
    if isinstance(obj, list) and "items" in schema:
        return [p for i, v in enumerate(obj) for p in _undeclared(schema["items"], v, f"{path}[{i}]")]
    return []


def _check_example_app(spec: dict[str, Any], where: str) -> None:
    """An example Dataflow runs the example app (examples/k8s/app): its image, a flow in
    its ``flows.py`` (``flows:<attr>`` or ``flows:<factory>()``), and variables that flow reads."""
    from headrace.dataflow import Dataflow

    assert spec["image"] == "headrace-example:0.1.0", where
    source = (APP / "flows.py").read_text()
    for var in spec["flow"].get("env", []):
        assert f'"{var["name"]}"' in source, f"{where}: flows.py does not read {var['name']}"
    import_str = spec["flow"]["import"]
    module, _, attr = import_str.partition(":")
    assert module == "flows", f"{import_str}: the example app's module is `flows`"
    module_spec = importlib.util.spec_from_file_location("example_app_flows", APP / "flows.py")
    assert module_spec is not None and module_spec.loader is not None
    mod = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(mod)
    name = attr.removesuffix("()")
    assert hasattr(mod, name), f"{import_str}: no {name!r} in {APP / 'flows.py'}"
    flow = getattr(mod, name)() if attr.endswith("()") else getattr(mod, name)
    assert isinstance(flow, Dataflow), f"{where}: {import_str}"


def _example_dataflows() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((CHART / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Dataflow":
                out.append((path.name, doc))
    return out


def test_examples_are_valid_dataflows() -> None:
    (crd,) = [d for d in _crd_docs() if d["metadata"]["name"] == "dataflows.headrace.dev"]
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema = version["schema"]["openAPIV3Schema"]
    examples = _example_dataflows()
    assert len(examples) >= 3
    names = set()
    for fname, doc in examples:
        assert doc["apiVersion"] == f"{crd['spec']['group']}/{version['name']}", fname
        assert "namespace" not in doc["metadata"], f"{fname}: leave the namespace to -n"
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
        assert errors == [], fname
        assert _undeclared(schema, doc, "") == [], fname
        names.add(doc["metadata"]["name"])
        _check_example_app(doc["spec"], fname)
    assert len(names) == len(examples), "example Dataflows must not share a name"


def test_examples_pass_the_operators_own_validation() -> None:
    spec_mod = pytest.importorskip("headrace_operator.spec")
    for fname, doc in _example_dataflows():
        spec = spec_mod.parse_spec(doc["spec"])
        assert spec_mod.validate(spec) == [], fname


# ------------------------------------------------------------------ Dockerfile


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_and_base_agnostic() -> None:
    ins = _instructions(ROOT / "Dockerfile")
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    # Only `python3 -m pip` and a POSIX shell may be assumed of the base.
    for tool in ("apt-get", "apk ", "useradd", "adduser", "curl", "wget", "venv", "git "):
        assert tool not in runs, tool
    assert "python3 -m pip install" in runs and '".[' in runs
    users = [rest for word, rest in final if word == "USER"]
    assert users and re.fullmatch(r"\$\{HEADRACE_UID\}:\$\{HEADRACE_UID\}|\d+:\d+", users[-1])
    uid = dict(rest.split("=", 1) for word, rest in final if word == "ARG" and "=" in rest)
    assert int(uid["HEADRACE_UID"]) > 0
    assert any(w == "COPY" and rest.startswith("--from=build") for w, rest in final)
    assert "/app" in dict(final).get("WORKDIR", "")


def test_dockerfile_runs_workers_the_way_the_operator_starts_them() -> None:
    """The worker container's command must exist in the image: `python` is
    not in Debian's python3 package, so the image provides it."""
    manifests = pytest.importorskip("headrace_operator.manifests")
    from headrace_operator.spec import parse_spec

    sts = manifests.build_statefulset(
        parse_spec({"image": "i", "flow": {"import": "m:f"}}), manifests.Owner("wc", "ns", "uid")
    )
    cmd = sts["spec"]["template"]["spec"]["containers"][0]["command"][0]
    text = (ROOT / "Dockerfile").read_text()
    assert cmd in ("python3", "python"), cmd
    if cmd == "python":
        assert "/opt/headrace/site/bin/python" in text


def test_dockerignore_keeps_what_pip_needs_and_nothing_else() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: ignore everything, then re-include"
    kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"pyproject.toml", "runtime", "operator"} <= kept
    assert not kept & {"tests", "benchmarks", ".git", "helm"}
    # Everything setuptools packages is in the kept directories.
    pyproject = (ROOT / "pyproject.toml").read_text()
    for d in re.findall(r'"(\w+)/headrace\w*"', pyproject):
        assert d in kept, d


def test_repo_k8s_examples_are_valid_dataflows() -> None:
    """examples/k8s/*.yaml (e.g. the autoscaled Kafka flow) validate like the chart's."""
    from headrace_operator.spec import parse_spec

    (crd,) = [d for d in _crd_docs() if d["metadata"]["name"] == "dataflows.headrace.dev"]
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema = version["schema"]["openAPIV3Schema"]
    found = 0
    for path in sorted((ROOT / "examples" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Dataflow":
                continue
            found += 1
            errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
            assert errors == [], path.name
            assert _undeclared(schema, doc, "") == [], path.name
            parse_spec(doc["spec"])
            _check_example_app(doc["spec"], path.name)
    assert found >= 1
