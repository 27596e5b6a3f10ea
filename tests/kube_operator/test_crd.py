"""The CRD: generated from the spec model, committed in the chart, structurally valid."""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import openapi_schema_validator
import pytest
import yaml

from headrace_operator import crd
from headrace_operator.spec import CEL_RULES, DataflowSpec, parse_spec, to_json

ROOT = Path(__file__).resolve().parents[2]
CHART_CRD = ROOT / "helm" / "headrace" / "crds" / "dataflows.headrace.dev.yaml"
SCHEMA = crd.openapi_schema()


def test_committed_crd_equals_the_generated_one() -> None:
    assert CHART_CRD.read_text() == crd.crd_yaml(), (
        "helm/headrace/crds/dataflows.headrace.dev.yaml is stale: run "
        "`python -m headrace_operator.crd > helm/headrace/crds/dataflows.headrace.dev.yaml`"
    )


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_module_entry_point_prints_the_crd() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "headrace_operator.crd"], check=True, capture_output=True, text=True
    ).stdout
    assert out == crd.crd_yaml()


def test_schema_is_structural() -> None:
    assert crd.check_structural(SCHEMA) == []


def test_structural_check_catches_problems() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"type": "array"},
            "b": {"properties": {}},
            "c": {"type": "object", "required": ["x"], "properties": {}},
            "d": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["k"],
                "items": {"type": "object", "properties": {"k": {"type": "string"}}},
            },
        },
    }
    assert crd.check_structural(bad) == [
        ".a: array without items",
        ".b: no type",
        ".c: required field 'x' is not declared",
        ".d: list-map key 'k' must be required",
    ]


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += _walk(schema["items"], f"{path}[]")
    return out


def test_every_spec_and_status_field_is_described() -> None:
    for root in ("spec", "status"):
        for path, node in _walk(SCHEMA["properties"][root], f".{root}"):
            if path.endswith("[]"):
                continue
            assert node.get("description"), f"{path} has no description"


def test_every_dataclass_field_is_declared() -> None:
    def fields(cls: Any, node: dict[str, Any], path: str) -> None:
        for f in dataclasses.fields(cls):
            name = f.metadata["json"]
            assert name in node["properties"], f"{path}.{name} missing"

    fields(DataflowSpec, SCHEMA["properties"]["spec"], ".spec")


def test_cel_rules_sit_where_they_apply() -> None:
    spec = SCHEMA["properties"]["spec"]
    rules = {r["rule"] for r in spec["x-kubernetes-validations"]}
    assert "self.replicas * self.workersPerProcess <= self.partitions" in rules
    part = spec["properties"]["partitions"]["x-kubernetes-validations"]
    assert part == [{"rule": "self == oldSelf", "message": CEL_RULES[2][2]}]
    auto = spec["properties"]["autoscaler"]["x-kubernetes-validations"]
    assert auto[0]["rule"].endswith("self.minReplicas <= self.maxReplicas")
    rec = spec["properties"]["recovery"]["x-kubernetes-validations"]
    assert rec[0]["rule"] == "has(self.url) != has(self.secretRef)"
    for _path, rule, message in CEL_RULES:
        assert message and rule


def test_resource_names_subresources_and_columns() -> None:
    c = crd.build_crd()
    assert c["metadata"]["name"] == "dataflows.headrace.dev"
    names = c["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "Dataflow",
        "dataflows",
        ["df"],
        ["streaming"],
    )
    assert c["spec"]["scope"] == "Namespaced"
    v = c["spec"]["versions"][0]
    assert v["name"] == "v1alpha1" and v["served"] and v["storage"]
    assert v["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    cols = [col["name"] for col in v["additionalPrinterColumns"]]
    assert cols[:6] == ["Replicas", "Ready", "Phase", "Condition", "Last-Snapshot", "Age"]
    for col in v["additionalPrinterColumns"]:
        head = col["jsonPath"].split("[")[0].strip(".").split(".")
        if head[0] in ("spec", "status"):
            node = SCHEMA
            for part in head:
                node = node["properties"][part]


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_crd_deserializes_into_the_kubernetes_model() -> None:
    from tests.support.kube_models import strict_model

    strict_model(crd.build_crd(), "V1CustomResourceDefinition")


def _strip_x(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_x(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if isinstance(schema, list):
        return [_strip_x(v) for v in schema]
    return schema


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Structural defaulting as the API server does it (defaults, then recurse)."""
    if not isinstance(obj, dict) or schema.get("type") != "object":
        if isinstance(obj, list) and isinstance(schema.get("items"), dict):
            return [apply_defaults(schema["items"], v) for v in obj]
        return obj
    out = dict(obj)
    for name, sub in (schema.get("properties") or {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = apply_defaults(sub, out[name])
    return out


@pytest.mark.parametrize(
    "spec",
    [
        {"image": "a", "flow": {"import": "m:f"}},
        {
            "image": "a",
            "flow": {"import": "m:f"},
            "recovery": {"secretRef": {"name": "r"}},
            "autoscaler": {"mode": "recommend"},
            "observability": {"podMonitor": {}},
        },
    ],
)
def test_crd_defaults_equal_the_python_defaults(spec: dict[str, Any]) -> None:
    defaulted = apply_defaults(SCHEMA["properties"]["spec"], spec)
    assert parse_spec(defaulted) == parse_spec(spec)
    # ... and what the operator writes back validates against the schema.
    openapi_schema_validator.validate(to_json(parse_spec(spec)), _strip_x(SCHEMA["properties"]["spec"]))


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_example_dataflows_validate_against_the_schema() -> None:
    examples = sorted((ROOT / "helm" / "headrace" / "examples").glob("*.yaml"))
    texts = [f.read_text() for f in examples]
    # The README's Kubernetes section applies one inline.
    texts += re.findall(r"<<'YAML'\n(.*?)\nYAML\n", (ROOT / "README.md").read_text(), flags=re.S)
    docs = [d for t in texts for d in yaml.safe_load_all(t) if d and d.get("kind") == "Dataflow"]
    assert len(docs) > len(examples), "the README's Dataflow was not found"
    for doc in docs:
        assert crd.undeclared(SCHEMA, doc) == [], doc["metadata"]["name"]
        openapi_schema_validator.validate(doc, _strip_x(SCHEMA))
        parse_spec(apply_defaults(SCHEMA["properties"]["spec"], doc["spec"]))


def test_undeclared_finds_what_the_api_server_would_prune() -> None:
    obj = {
        "apiVersion": "x",
        "kind": "Dataflow",
        "metadata": {"name": "a"},
        "spec": {"image": "a", "flow": {"import": "m", "extra": 1}, "podTemplate": {"free": {"form": True}}},
        "status": {"phase": "Running", "autoscaler": {"mode": "off", "bogus": 1}},
    }
    assert crd.undeclared(SCHEMA, obj) == [".spec.flow.extra", ".status.autoscaler.bogus"]
