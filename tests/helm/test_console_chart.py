"""The chart's web console: on by default on its own port and Service, an optional
Ingress, the Prometheus URL handed to the operator, and no RBAC of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.helm import (
    CHART,
    FULLNAME,
    NAMESPACE,
    by_kind,
    helm,
    one,
    render,
    render_notes,
    values_args,
)

pytestmark = pytest.mark.tools("helm")


def _container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def _env(objs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in _container(objs)["env"]}


def test_console_is_on_by_default_behind_its_own_service(tmp_path: Path) -> None:
    objs = render(tmp_path)
    env = _env(objs)
    assert env["HEADRACE_OPERATOR_CONSOLE_PORT"] == "8081"
    assert "HEADRACE_OPERATOR_CONSOLE_PROMETHEUS_URL" not in env
    assert {"name": "console", "containerPort": 8081, "protocol": "TCP"} in _container(objs)["ports"]
    svc = one(objs, "Service", f"{FULLNAME}-console")
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [
        {"name": "console", "port": 8081, "targetPort": "console", "protocol": "TCP"}
    ]
    # Not the operator's component: the operator's ServiceMonitor does not pick it up.
    assert svc["metadata"]["labels"]["app.kubernetes.io/component"] == "console"
    assert by_kind(objs, "Ingress") == []


def test_console_values_reach_the_operator_and_the_service(tmp_path: Path) -> None:
    objs = render(
        tmp_path,
        {
            "console": {
                "port": 9000,
                "prometheusUrl": "http://prometheus-operated.monitoring.svc:9090",
                "service": {"type": "NodePort", "port": 80, "annotations": {"a": "b"}},
            }
        },
    )
    env = _env(objs)
    assert env["HEADRACE_OPERATOR_CONSOLE_PORT"] == "9000"
    assert env["HEADRACE_OPERATOR_CONSOLE_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring.svc:9090"
    assert {"name": "console", "containerPort": 9000, "protocol": "TCP"} in _container(objs)["ports"]
    svc = one(objs, "Service", f"{FULLNAME}-console")
    assert svc["spec"]["type"] == "NodePort" and svc["metadata"]["annotations"] == {"a": "b"}
    assert svc["spec"]["ports"] == [
        {"name": "console", "port": 80, "targetPort": "console", "protocol": "TCP"}
    ]


def test_console_off_leaves_no_port_no_service(tmp_path: Path) -> None:
    objs = render(tmp_path, {"console": {"enabled": False, "ingress": {"enabled": True}}})
    assert _env(objs)["HEADRACE_OPERATOR_CONSOLE_PORT"] == "0"
    assert [p["name"] for p in _container(objs)["ports"]] == ["metrics"]
    assert [s["metadata"]["name"] for s in by_kind(objs, "Service")] == [f"{FULLNAME}-operator"]
    assert by_kind(objs, "Ingress") == []


def test_console_ingress(tmp_path: Path) -> None:
    ingress = {
        "enabled": True,
        "className": "nginx",
        "host": "headrace.example.com",
        "path": "/",
        "annotations": {"nginx.ingress.kubernetes.io/auth-url": "https://auth.example.com/check"},
        "tls": [{"secretName": "headrace-tls", "hosts": ["headrace.example.com"]}],
    }
    ing = one(render(tmp_path, {"console": {"ingress": ingress}}), "Ingress")
    assert ing["metadata"]["name"] == f"{FULLNAME}-console"
    assert ing["metadata"]["annotations"] == ingress["annotations"]
    assert ing["spec"] == {
        "ingressClassName": "nginx",
        "tls": [{"secretName": "headrace-tls", "hosts": ["headrace.example.com"]}],
        "rules": [
            {
                "host": "headrace.example.com",
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {
                                "service": {"name": f"{FULLNAME}-console", "port": {"name": "console"}}
                            },
                        }
                    ]
                },
            }
        ],
    }
    bare = one(render(tmp_path, {"console": {"ingress": {"enabled": True}}}), "Ingress")
    assert bare["spec"] == {
        "rules": [
            {
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {
                                "service": {"name": f"{FULLNAME}-console", "port": {"name": "console"}}
                            },
                        }
                    ]
                }
            }
        ]
    }


def test_console_needs_no_rbac_of_its_own(tmp_path: Path) -> None:
    """The console reads with the operator's ServiceAccount: its rights are the same with it on or off."""

    def rbac(values: dict[str, Any]) -> list[Any]:
        objs = render(tmp_path, values)
        return [
            (o["kind"], o["metadata"]["name"], o.get("rules"), o.get("subjects"))
            for o in objs
            if o["kind"] in {"ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding", "ServiceAccount"}
        ]

    assert rbac({"console": {"enabled": True}}) == rbac({"console": {"enabled": False}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"console": {"prometheusUrl": "prometheus:9090"}},
            "at '/console/prometheusUrl': 'prometheus:9090' does not match pattern '^(https?://.+)?$'",
        ),
        ({"console": {"port": 0}}, "at '/console/port': minimum: got 0, want 1"),
        (
            {"console": {"ingress": {"tls": [{"hosts": ["a"]}]}}},
            "at '/console/ingress/tls/0': missing property 'secretName'",
        ),
        (
            {"console": {"ingress": {"path": "console"}}},
            "at '/console/ingress/path': 'console' does not match pattern '^/'",
        ),
        ({"console": {"auth": True}}, "at '/console': additional properties 'auth' not allowed"),
    ],
)
def test_console_schema_rejects_bad_values(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    proc = helm("template", "hr", str(CHART), *values_args(values, tmp_path), check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_notes_tell_how_to_reach_the_console(tmp_path: Path) -> None:
    notes = render_notes(tmp_path)
    assert f"kubectl -n {NAMESPACE} port-forward svc/{FULLNAME}-console 8081" in notes
    assert "http://localhost:8081/" in notes and "Set console.prometheusUrl" in notes
    notes = render_notes(tmp_path, {"console": {"prometheusUrl": "http://p:9090"}})
    assert "port-forward" in notes and "Set console.prometheusUrl" not in notes
    assert "port-forward" not in render_notes(tmp_path, {"console": {"enabled": False}})
