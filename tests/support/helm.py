"""Render the Helm chart (helm/headrace) with a real ``helm``, and pick objects out of it.

``helm`` is `tests.support._tools`' (``$HELM``, the PATH's or ``~/go/bin``'s,
else built once at the pinned version); a test needing it declares
``@pytest.mark.tools("helm")``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import _tools as tools

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "headrace"
RELEASE = "hr"
NAMESPACE = "headrace-system"
FULLNAME = "hr-headrace"
PROMETHEUS_API = ("--api-versions", "monitoring.coreos.com/v1")
"""The ``helm template`` arguments that make the Prometheus operator's API available."""


def helm_bin() -> str:
    """The helm binary (`tests.support._tools.helm`); the test fails (not skips) without it."""
    return tools.need("helm")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm; on failure show its stderr."""
    proc = subprocess.run([helm_bin(), *args], capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stderr}\n{proc.stdout[-2000:]}")
    return proc


def values_args(values: dict[str, Any] | None, tmp: Path) -> list[str]:
    """``--values FILE`` for ``values`` (written as a file under ``tmp``); nothing for none."""
    if not values:
        return []
    path = tmp / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
    path.write_text(json.dumps(values))  # JSON is YAML
    return ["--values", str(path)]


def render(
    tmp: Path, values: dict[str, Any] | None = None, *args: str, chart: Path = CHART
) -> list[dict[str, Any]]:
    """`helm template` the chart and return its objects."""
    out = helm(
        "template", RELEASE, str(chart), "--namespace", NAMESPACE, *values_args(values, tmp), *args
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(objs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of ``kind``."""
    return [o for o in objs if o["kind"] == kind]


def one(objs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (named ``name``, if given); assert there is exactly one."""
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def render_notes(tmp: Path, values: dict[str, Any] | None = None, *args: str) -> str:
    """NOTES.txt as `helm install` would print it (helm template skips it, so a
    copy of the chart carries it as a one-key YAML template)."""
    chart = tmp / "notes-chart"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        notes = (chart / "templates" / "NOTES.txt").read_text()
        (chart / "templates" / "zz-notes.yaml").write_text(
            "notes: |\n" + "".join("  " + line for line in notes.splitlines(True))
        )
    out = helm(
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--show-only",
        "templates/zz-notes.yaml",
        *values_args(values, tmp),
        *args,
    ).stdout
    return str(yaml.safe_load(out)["notes"])
