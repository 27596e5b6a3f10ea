"""Which spec to run: the Dataflow's new spec if valid, else the deployed one.

The first step of `reconcile.plan`. A spec is checked three ways: parsed
against the model (`spec.parse_spec`), against what ``kubectl apply`` sent
(fields the API server pruned because they are not in the schema, read from
kubectl's last-applied annotation), and against what runs (the partition
count cannot change: state is placed by key group). An invalid new spec
leaves the deployed one running, with a ValidationError event and the
Degraded condition; with nothing deployed the Dataflow is Failed.

>>> name_problems("wordcount")
[]
"""

from __future__ import annotations

import json
import re
from typing import Any

from headrace_operator import manifests as mf
from headrace_operator.outcome import Ctx
from headrace_operator.spec import DataflowSpec, SpecError, parse_spec, prune, unknown_fields
from headrace_operator.status import Phase

__all__ = ["LAST_APPLIED", "deployed_spec", "name_problems", "problems_text", "pruned_fields", "valid_target"]

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def deployed_spec(sts: dict[str, Any] | None) -> DataflowSpec | None:
    """The spec the running StatefulSet was built from (its annotation), if readable.

    >>> deployed_spec(None) is None
    True
    """
    if not sts:
        return None
    raw = ((sts.get("metadata") or {}).get("annotations") or {}).get(mf.ANN_SPEC)
    if not raw:
        return None
    try:
        return parse_spec(json.loads(raw))
    except (ValueError, SpecError):
        return None


def _subset(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(_subset(v, big.get(k)) for k, v in small.items())
    if isinstance(small, list):
        return (
            isinstance(big, list)
            and len(small) == len(big)
            and all(_subset(a, b) for a, b in zip(small, big, strict=True))
        )
    return bool(small == big)


def pruned_fields(spec: dict[str, Any], annotations: dict[str, str]) -> list[str]:
    """Fields a ``kubectl apply`` sent that the API server dropped (not in the schema).

    Read from kubectl's last-applied annotation, and only while that
    annotation still describes this object (a later ``kubectl edit`` or
    ``patch`` makes it stale).

    >>> ann = {LAST_APPLIED: json.dumps({"spec": {"image": "a", "replcas": 3}})}
    >>> pruned_fields({"image": "a", "replicas": 1}, ann)
    ['spec.replcas']
    """
    raw = annotations.get(LAST_APPLIED)
    if not raw:
        return []
    try:
        applied = json.loads(raw).get("spec")
    except (ValueError, AttributeError):
        return []
    unknown = unknown_fields(DataflowSpec, applied)
    if not unknown or not _subset(prune(DataflowSpec, applied), spec):
        return []
    return unknown


def name_problems(name: str) -> list[tuple[str, str]]:
    """Dataflow names the children can't carry.

    >>> name_problems("9lives")[0][1]
    "'9lives' must start with a letter and contain only lowercase letters, digits and '-' ..."
    """
    out = []
    if not _NAME_RE.match(name):
        out.append(
            (
                "metadata.name",
                f"{name!r} must start with a letter and contain only "
                "lowercase letters, digits and '-' (it names a Service)",
            )
        )
    if len(name) > 52:
        out.append(
            (
                "metadata.name",
                f"{len(name)} characters is too long: at most 52 (the "
                "StatefulSet's pods carry it in a 63-character label)",
            )
        )
    return out


def problems_text(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"{path}: {msg}" for path, msg in problems)


def valid_target(c: Ctx, deployed: DataflowSpec | None) -> DataflowSpec | None:
    """The spec to run: the new one if valid, else the deployed one (else None: Failed)."""
    obs = c.obs
    problems: list[tuple[str, str]] = list(name_problems(obs.name))
    spec: DataflowSpec | None = None
    try:
        spec = parse_spec(obs.spec)
    except SpecError as exc:
        problems += exc.problems
    problems += [
        (p, "unknown field, dropped by the API server: remove it or fix its spelling")
        for p in pruned_fields(obs.spec, obs.annotations)
    ]
    if spec is not None and deployed is not None and spec.partitions != deployed.partitions:
        problems.append(
            (
                "spec.partitions",
                f"can't change from {deployed.partitions} to {spec.partitions}: state is placed by key group",
            )
        )
    if not problems:
        return spec
    text = problems_text(problems)
    keep = " The last valid spec keeps running." if deployed is not None else ""
    c.event("Warning", "ValidationError", f"invalid spec: {text}.{keep}")
    c.degraded = ("InvalidSpec", f"invalid spec (generation {obs.generation}): {text}")
    if deployed is None:
        c.phase = Phase.FAILED
        c.failure = ("InvalidSpec", f"invalid spec: {text}. Fix it with kubectl edit/apply")
        # kubectl apply fixing a pruned field changes only an annotation: look again soon.
        c.p.requeue = 10.0
    return deployed
