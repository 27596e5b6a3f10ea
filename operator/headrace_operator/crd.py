"""The `Dataflow` CustomResourceDefinition, generated from the spec and status models.

Placed in the flow: `schema.openapi` turns the models of `spec` and `status`
into OpenAPI; this module adds the CEL rules, printer columns and
subresources, and checks the result is structural.

``python -m headrace_operator.crd > helm/headrace/crds/dataflows.headrace.dev.yaml``
writes the chart's CRD; a test asserts the committed file equals `crd_yaml()`.

>>> crd = build_crd()
>>> crd["metadata"]["name"], crd["spec"]["names"]["shortNames"]
('dataflows.headrace.dev', ['df'])
>>> check_structural(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
[]
"""

from __future__ import annotations

import sys
from typing import Any

from headrace_operator import spec as spec_mod
from headrace_operator import status as status_mod
from headrace_operator.schema import openapi

__all__ = [
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "build_crd",
    "check_structural",
    "crd_yaml",
    "main",
    "openapi_schema",
    "undeclared",
]

GROUP = "headrace.dev"
VERSION = "v1alpha1"
KIND = "Dataflow"
PLURAL = "dataflows"


def _at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split(".")[1:]:
        node = node["properties"][part]
    return node


def openapi_schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of a Dataflow: spec and status, with CEL rules.

    >>> s = openapi_schema()
    >>> s["properties"]["spec"]["properties"]["partitions"]["x-kubernetes-validations"][0]["rule"]
    'self == oldSelf'
    """
    spec = openapi(spec_mod.DataflowSpec)
    for path, rule, message in spec_mod.CEL_RULES:
        node = _at(spec, path)
        node.setdefault("x-kubernetes-validations", []).append({"rule": rule, "message": message})
    status = openapi(status_mod.DataflowStatus, defaults=False)
    return {
        "type": "object",
        "description": "A Headrace dataflow run as a group of worker pods.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas", "description": "Desired pods."},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas", "description": "Ready pods."},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
    {
        "name": "Condition",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Reason of the Ready condition (what is wrong, or Running).",
    },
    {
        "name": "Last-Snapshot",
        "type": "date",
        "jsonPath": ".status.snapshot.time",
        "description": "Time of the last committed snapshot.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Generation",
        "type": "integer",
        "jsonPath": ".metadata.generation",
        "description": "Spec generation.",
    },
    {
        "name": "Observed",
        "type": "integer",
        "jsonPath": ".status.observedGeneration",
        "description": "Generation the operator last reconciled: behind Generation until it sees the edit.",
    },
    {
        "name": "Errors",
        "type": "integer",
        "priority": 1,
        "jsonPath": ".status.errorCount",
        "description": "Items the steps' error policies (skip, dead_letter) handled, as scraped.",
    },
    {
        "name": "Message",
        "type": "string",
        "priority": 1,
        "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
        "description": "Message of the Ready condition.",
    },
]


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict.

    >>> build_crd()["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"]
    '.spec.replicas'
    """
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "headrace", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": "dataflow",
                "shortNames": ["df"],
                "categories": ["streaming"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML committed under ``helm/headrace/crds/``.

    >>> crd_yaml().splitlines()[0]
    '# Generated by `python -m headrace_operator.crd`; do not edit.'
    """
    import yaml

    header = (
        "# Generated by `python -m headrace_operator.crd`; do not edit.\n"
        "# Source of truth: operator/headrace_operator/spec.py and status.py.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def check_structural(schema: dict[str, Any], path: str = "") -> list[str]:
    """Problems that make a schema non-structural (Kubernetes rejects such CRDs); ``[]`` if none.

    Every node needs a ``type``; objects need ``properties``,
    ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields``;
    arrays need ``items``; list-map keys must be required in their items.

    >>> check_structural({"type": "object"})
    ['<root>: object without properties, additionalProperties or preserve-unknown-fields']
    """
    where = path or "<root>"
    out: list[str] = []
    if path == ".metadata":
        # The API server owns metadata's schema; a bare object is what it expects here.
        return out
    t = schema.get("type")
    if t is None:
        return [f"{where}: no type"]
    if t == "object":
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        if props is None and addl is None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.append(f"{where}: object without properties, additionalProperties or preserve-unknown-fields")
        if props is not None and addl is not None:
            out.append(f"{where}: both properties and additionalProperties")
        for name, sub in (props or {}).items():
            out += check_structural(sub, f"{path}.{name}")
        if isinstance(addl, dict):
            out += check_structural(addl, f"{path}.*")
        for req in schema.get("required", []):
            if req not in (props or {}):
                out.append(f"{where}: required field {req!r} is not declared")
    elif t == "array":
        items = schema.get("items")
        if items is None:
            out.append(f"{where}: array without items")
        else:
            out += check_structural(items, f"{path}[]")
            if schema.get("x-kubernetes-list-type") == "map":
                for key in schema.get("x-kubernetes-list-map-keys", []):
                    if key not in items.get("required", []):
                        out.append(f"{where}: list-map key {key!r} must be required")
    elif t not in ("string", "integer", "number", "boolean"):
        out.append(f"{where}: unknown type {t!r}")
    if "default" in schema and t == "object" and schema["default"] != {}:
        out.append(f"{where}: object defaults other than {{}} are not checked here")
    return out


def undeclared(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    """Paths in ``obj`` the schema doesn't declare: what the API server would prune.

    >>> s = openapi_schema()["properties"]["status"]
    >>> undeclared(s, {"phase": "Running", "kopf": {"progress": {}}}, ".status")
    ['.status.kopf']
    """
    out: list[str] = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return out
    if isinstance(obj, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        if props is None and addl is None:
            return out  # a bare object: metadata, whose schema the API server owns
        for key, value in obj.items():
            if props is not None and key in props:
                out += undeclared(props[key], value, f"{path}.{key}")
            elif isinstance(addl, dict):
                out += undeclared(addl, value, f"{path}.{key}")
            else:
                out.append(f"{path}.{key}")
    elif isinstance(obj, list) and schema.get("type") == "array":
        for i, item in enumerate(obj):
            out += undeclared(schema.get("items", {}), item, f"{path}[{i}]")
    return out


def main() -> int:
    """Print the CRD YAML to stdout (``python -m headrace_operator.crd``).

    >>> import contextlib, io
    >>> buf = io.StringIO()
    >>> with contextlib.redirect_stdout(buf):
    ...     rc = main()
    >>> rc, "kind: CustomResourceDefinition" in buf.getvalue()
    (0, True)
    """
    sys.stdout.write(crd_yaml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
