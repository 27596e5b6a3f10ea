"""A strict check of a Kubernetes object against the kubernetes client's models.

The client's own deserializer silently drops unknown keys; `strict_model`
names each one, and each wrongly typed value, by its path.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes.client as k8s

_PRIMITIVES = {
    "str": str,
    "int": int,
    "bool": bool,
    "float": (int, float),
    "object": object,
    "datetime": str,
    "date": str,
}


def strict_model(data: Any, type_name: str, path: str = "") -> None:
    """Check ``data`` against a kubernetes-client model: every key known, every type right.

    The client's own deserializer silently drops unknown keys; this does not.
    """
    if type_name.startswith("List["):
        assert isinstance(data, list), f"{path}: expected a list"
        for i, item in enumerate(data):
            strict_model(item, type_name[5:-1], f"{path}[{i}]")
        return
    if type_name.startswith("Dict["):
        assert isinstance(data, dict), f"{path}: expected a map"
        inner = type_name[5:-1].split(", ", 1)[1]
        for k, v in data.items():
            strict_model(v, inner, f"{path}.{k}")
        return
    if type_name in _PRIMITIVES:
        assert isinstance(data, _PRIMITIVES[type_name]), f"{path}: {data!r} is not {type_name}"
        return
    cls = getattr(k8s, type_name)
    assert isinstance(data, dict), f"{path}: expected an object for {type_name}"
    by_json = {v: k for k, v in cls.attribute_map.items()}
    for key, value in data.items():
        assert key in by_json, f"{path}.{key} is not a field of {type_name}"
        strict_model(value, cls.openapi_types[by_json[key]], f"{path}.{key}")
    # The client's constructor enforces required fields.
    k8s.ApiClient().deserialize(json.dumps(data), type_name, "application/json")
