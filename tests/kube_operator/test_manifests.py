"""Child manifests: valid Kubernetes objects that the runtime understands."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from headrace._engine import group_owner
from headrace_operator import manifests as mf
from headrace_operator.spec import parse_spec
from tests.support.kube_models import strict_model

OWNER = mf.Owner(name="wc", namespace="prod", uid="0000-1111", generation=4)
SPEC = {
    "image": "app:1",
    "flow": {"import": "app.flows:wc", "args": ["--recovery-retry", "60"]},
    "replicas": 3,
    "workersPerProcess": 2,
    "recovery": {
        "secretRef": {"name": "redis-creds", "key": "redis-url"},
        "snapshotInterval": "2500ms",
        "backupInterval": "1m",
    },
    "observability": {
        "metricsPort": 9090,
        "otlpEndpoint": "grpc://otel:4317",
        "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
    },
    "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},
    "nodeSelector": {"pool": "stream"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccountName": "workers",
}


@pytest.fixture
def spec() -> Any:
    return parse_spec(SPEC)


def test_statefulset_service_and_podmonitor_are_valid_objects(spec: Any) -> None:
    strict_model(mf.build_statefulset(spec, OWNER), "V1StatefulSet")
    strict_model(mf.build_service(spec, OWNER), "V1Service")
    pm = mf.build_pod_monitor(spec, OWNER)
    # No client model for PodMonitor: check its ObjectMeta and shape by hand.
    strict_model(pm["metadata"], "V1ObjectMeta")
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert {k: endpoint[k] for k in ("port", "path", "interval")} == {
        "port": "metrics",
        "path": "/metrics",
        "interval": "30s",
    }
    # The labels the dashboards and alerts select by.
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert targets == {
        "dataflow": ["__meta_kubernetes_pod_label_headrace_dev_dataflow"],
        "namespace": ["__meta_kubernetes_namespace"],
        "pod": ["__meta_kubernetes_pod_name"],
    }
    assert pm["metadata"]["labels"]["release"] == "prom"


def test_statefulset_shape(spec: Any) -> None:
    sts = mf.build_statefulset(spec, OWNER)
    s = sts["spec"]
    assert s["podManagementPolicy"] == "Parallel"
    assert s["updateStrategy"] == {"type": "OnDelete"}
    assert s["serviceName"] == "wc" and s["replicas"] == 3
    assert s["selector"]["matchLabels"] == {"headrace.dev/dataflow": "wc"}
    tpl_labels = s["template"]["metadata"]["labels"]
    assert all(tpl_labels[k] == v for k, v in s["selector"]["matchLabels"].items())
    ref = sts["metadata"]["ownerReferences"][0]
    assert ref == {
        "apiVersion": "headrace.dev/v1alpha1",
        "kind": "Dataflow",
        "name": "wc",
        "uid": "0000-1111",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    ann = sts["metadata"]["annotations"]
    assert ann[mf.ANN_REPLICAS] == "3" and ann[mf.ANN_GENERATION] == "4"
    assert parse_spec(json.loads(ann[mf.ANN_SPEC])) == spec
    assert mf.build_statefulset(spec, OWNER, replicas=0)["spec"]["replicas"] == 0


def test_restricted_pod_security(spec: Any) -> None:
    pod = mf.build_statefulset(spec, OWNER)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    # The worker is not PID 1: a SIGTERM during its start is not dropped.
    assert pod["shareProcessNamespace"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]


def test_container_runs_the_flow_with_probes(spec: Any) -> None:
    c = mf.build_statefulset(spec, OWNER)["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "headrace.run"]
    assert c["args"] == ["app.flows:wc", "--recovery-retry", "60"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"cluster": 2101, "metrics": 9090}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["resources"] == SPEC["resources"]


def test_environment_is_what_the_runtime_reads(spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from headrace import run

    c = mf.build_statefulset(spec, OWNER)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["HEADRACE_RECOVERY"]["valueFrom"] == {
        "secretKeyRef": {"name": "redis-creds", "key": "redis-url"}
    }
    plain = {k: e["value"] for k, e in env.items() if "value" in e}
    assert plain["HEADRACE_EPOCH_INTERVAL"] == "2.5"
    assert plain["HEADRACE_BACKUP_INTERVAL"] == "60"
    assert plain["HEADRACE_RECOVERY_PREFIX"] == "prod/wc"
    assert plain["OTEL_EXPORTER_OTLP_ENDPOINT"] == "grpc://otel:4317"
    for k, v in plain.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HEADRACE_RECOVERY", "redis://redis:6379/0")
    args = run._parser().parse_args(c["args"])
    assert args.import_str == "app.flows:wc" and args.recovery_retry == 60
    assert args.workers_per_process == 2 and args.key_groups == 256
    assert args.metrics_port == 9090 and args.bind_host == "0.0.0.0"
    # A pod's port is chosen (env): all interfaces, and a conflict is an error.
    addresses = run._resolve_addresses(args)
    assert run._metrics_endpoint(
        args.metrics_port, args.metrics_host, args.metrics_port_fallback, addresses
    ) == (9090, "0.0.0.0", False)
    assert args.process_id_from_hostname is True
    assert args.log_format == "json"
    assert args.epoch_interval.total_seconds() == 2.5
    assert run._resolve_addresses(args) == [f"wc-{i}.wc.prod.svc.cluster.local:2101" for i in range(3)]
    assert run._ordinal_from_hostname("wc-2") == 2


def test_user_env_overrides_the_operators(spec: Any) -> None:
    s = parse_spec(
        {
            **SPEC,
            "flow": {
                "import": "m:f",
                "env": [{"name": "HEADRACE_STARTUP_TIMEOUT", "value": "5"}, {"name": "X", "value": "1"}],
            },
        }
    )
    env = mf.build_statefulset(s, OWNER)["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names.count("HEADRACE_STARTUP_TIMEOUT") == 1
    assert {"name": "HEADRACE_STARTUP_TIMEOUT", "value": "5"} in env


def test_bytewax_compat_sets_the_runtime_env_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from headrace import _bytewax_alias, run

    def env_of(flow: dict[str, Any]) -> dict[str, Any]:
        s = parse_spec({"image": "i", "flow": flow})
        c = mf.build_statefulset(s, OWNER)["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value") for e in c["env"]}

    assert "HEADRACE_BYTEWAX_COMPAT" not in env_of({"import": "m:f"})
    assert "HEADRACE_BYTEWAX_COMPAT" not in env_of({"import": "m:f", "bytewaxCompat": False})
    env = env_of({"import": "m:f", "bytewaxCompat": True})
    assert env["HEADRACE_BYTEWAX_COMPAT"] == "1"
    # ... which is what the runtime reads.
    monkeypatch.setenv("HEADRACE_BYTEWAX_COMPAT", env["HEADRACE_BYTEWAX_COMPAT"])
    assert _bytewax_alias.enabled()
    assert run._parser().parse_args(["m:f"]).bytewax is True


def test_url_recovery_and_no_recovery() -> None:
    s = parse_spec(
        {
            "image": "i",
            "flow": {"import": "m:f"},
            "recovery": {"url": "redis://r:6379/2", "keyPrefix": "custom"},
        }
    )
    env = {
        e["name"]: e.get("value")
        for e in mf.build_statefulset(s, OWNER)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["HEADRACE_RECOVERY"] == "redis://r:6379/2"
    assert env["HEADRACE_RECOVERY_PREFIX"] == "custom"
    assert env["HEADRACE_EPOCH_INTERVAL"] == "10"
    s = parse_spec({"image": "i", "flow": {"import": "m:f"}})
    env = {
        e["name"] for e in mf.build_statefulset(s, OWNER)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert "HEADRACE_RECOVERY" not in env


def test_headless_service_publishes_not_ready_addresses(spec: Any) -> None:
    svc = mf.build_service(spec, OWNER)["spec"]
    assert svc["clusterIP"] == "None" and svc["publishNotReadyAddresses"] is True
    assert svc["selector"] == {"headrace.dev/dataflow": "wc"}


def test_pod_template_overlay(spec: Any) -> None:
    s = parse_spec(
        {
            **SPEC,
            "podTemplate": {
                "metadata": {
                    "labels": {"team": "x", "headrace.dev/dataflow": "hijack"},
                    "annotations": {"a": "b"},
                },
                "spec": {
                    "priorityClassName": "high",
                    "containers": [
                        {
                            "name": "worker",
                            "env": [{"name": "EXTRA", "value": "1"}],
                            "securityContext": {"runAsUser": 20000},
                        },
                        {"name": "sidecar", "image": "busybox"},
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        }
    )
    sts = mf.build_statefulset(s, OWNER)
    strict_model(sts, "V1StatefulSet")
    tpl = sts["spec"]["template"]
    assert tpl["metadata"]["labels"]["team"] == "x"
    assert tpl["metadata"]["labels"]["headrace.dev/dataflow"] == "wc"
    pod = tpl["spec"]
    assert pod["priorityClassName"] == "high"
    worker, side = pod["containers"]
    assert (worker["name"], side["name"]) == ("worker", "sidecar")
    assert worker["securityContext"]["runAsUser"] == 20000
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["env"][-1] == {"name": "EXTRA", "value": "1"}
    assert [v["name"] for v in pod["volumes"]] == ["tmp", "data"]


def test_template_hash_tracks_pod_changes_but_not_replicas() -> None:
    def h(**changes: Any) -> str:
        s = parse_spec({**SPEC, **changes})
        return mf.build_statefulset(s, OWNER)["metadata"]["annotations"][mf.ANN_TEMPLATE_HASH]

    base = h()
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    assert h(replicas=5) == base
    assert h(restartNonce=3) == base
    assert h(image="app:2") != base
    assert h(workersPerProcess=1) != base
    assert h(resources={"limits": {"cpu": "2"}}) != base
    assert h(flow={**SPEC["flow"], "bytewaxCompat": False}) == base  # no change unless asked
    assert h(flow={**SPEC["flow"], "bytewaxCompat": True}) != base


@pytest.mark.parametrize(("replicas", "wpp", "groups"), [(1, 1, 8), (3, 2, 256), (5, 1, 7), (4, 4, 16)])
def test_pod_assignment_matches_the_runtime(replicas: int, wpp: int, groups: int) -> None:
    rows = mf.pod_assignment(replicas, wpp, groups)
    workers = replicas * wpp
    for row in rows:
        first, _, last = row["keyGroups"].partition("-")
        lo, hi = int(first), int(last or first)
        owners = {group_owner(g, groups, workers) // wpp for g in range(lo, hi + 1)}
        assert owners == {row["pod"]}
    covered = sum(
        int(r["keyGroups"].partition("-")[2] or r["keyGroups"].partition("-")[0])
        - int(r["keyGroups"].partition("-")[0])
        + 1
        for r in rows
    )
    assert covered == groups


def test_key_prefix_default_and_override(spec: Any) -> None:
    assert mf.key_prefix(spec, OWNER) == "prod/wc"
