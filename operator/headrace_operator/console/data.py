"""What the console shows, as plain JSON: pure functions of the API's objects and Prometheus' answers.

Placed in the flow: `console.server` reads the Dataflows (with the
operator's own ServiceAccount), the events the operator posted, a worker's
``/dataflow`` graph and Prometheus' answers, and hands them to the functions
here, which decide nothing and touch nothing: `summary` (a row of the list
page), `detail` (one Dataflow's page), `graph_view` (the graph; without a worker,
`kept_steps_view`: the stateful steps a kept snapshot names),
`chart_queries` (a named chart's PromQL, read from the Grafana dashboards
shipped in this package, their variables substituted) and `align` (Prometheus'
range answers as the chart's columns).

The charts are the dashboards' panels, named in `CHARTS`: the console runs
those queries and no other (the browser names a chart, never a query). The
dashboards in ``console/dashboards/`` are the chart's
``helm/headrace/dashboards/*.json``, checked equal by a test.

>>> [c["name"] for c in chart_list()][:3]
['throughput', 'input', 'busy']
>>> chart_queries("epoch", "prod", "wc", step=15)[1]
('committed {{dataflow}}', 'max by (dataflow) (headrace_epoch_committed{namespace=~"prod", dataflow=~"wc"})')
"""

from __future__ import annotations

import functools
import json
import math
import re
from importlib import resources
from typing import Any

__all__ = [
    "CHARTS",
    "RANGES",
    "align",
    "chart",
    "chart_list",
    "chart_queries",
    "dashboard",
    "detail",
    "graph_view",
    "kept_steps_view",
    "lag_of",
    "legend",
    "rate_interval",
    "step_for",
    "substitute",
    "summary",
    "valid_name",
]

# name -> (dashboard file, panel title): the console's charts, in page order.
CHARTS: dict[str, tuple[str, str]] = {
    "throughput": ("dataflow.json", "Items out per step"),
    "input": ("dataflow.json", "Source input rate"),
    "busy": ("dataflow.json", "Busy time per step"),
    "lag": ("dataflow.json", "Source lag per partition"),
    "epoch": ("dataflow.json", "Epoch: current and committed"),
    "epoch-duration": ("dataflow.json", "Epoch duration"),
    "snapshot-duration": ("snapshots.json", "Snapshot duration"),
}
LAG_STAT = ("dataflow.json", "Source lag")
"""The stat panel the list page's lag comes from when the autoscaler has not measured it."""

RANGES: dict[str, int] = {"5m": 300, "15m": 900, "1h": 3600, "6h": 21600}
"""The time ranges a chart may ask for (seconds)."""

POINTS = 120
"""About this many points per chart line."""

SCRAPE_INTERVAL = 15
"""The workers' scrape interval the chart recommends (monitoring.podMonitor.interval)."""

_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def valid_name(namespace: str, name: str) -> bool:
    """Whether ``namespace`` and ``name`` are a Kubernetes namespace and object name.

    >>> valid_name("prod", "wc"), valid_name("prod", 'wc"}) or vector(1'), valid_name("", "wc")
    (True, False, False)
    """
    return (
        len(namespace) <= 63
        and len(name) <= 253
        and _NAMESPACE.fullmatch(namespace) is not None
        and _NAME.fullmatch(name) is not None
    )


@functools.cache
def dashboard(file: str) -> dict[str, Any]:
    """A Grafana dashboard shipped in this package (``console/dashboards/<file>``).

    >>> dashboard("dataflow.json")["uid"]
    'headrace-dataflow'
    """
    text = resources.files("headrace_operator.console").joinpath("dashboards", file).read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out += _panels(p.get("panels", []))
    return out


def chart(name: str) -> dict[str, Any]:
    """The dashboard panel behind chart ``name`` (KeyError if there is none).

    >>> chart("busy")["title"], chart("busy")["fieldConfig"]["defaults"]["unit"]
    ('Busy time per step', 'percentunit')
    """
    file, title = CHARTS[name] if name in CHARTS else (LAG_STAT if name == "source-lag" else ("", ""))
    if not file:
        raise KeyError(name)
    for p in _panels(dashboard(file)["panels"]):
        if p.get("title") == title and p.get("targets"):
            return p
    raise KeyError(f"{file} has no panel {title!r}")


def chart_list() -> list[dict[str, str]]:
    """The charts of a Dataflow's page: name, title, unit and what they show.

    >>> chart_list()[0]["title"], chart_list()[0]["unit"]
    ('Items out per step', 'ops')
    """
    out = []
    for name, (file, _title) in CHARTS.items():
        p = chart(name)
        out.append(
            {
                "name": name,
                "title": str(p["title"]),
                "unit": str(p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")),
                "description": str(p.get("description", "")),
                "dashboard": file,
            }
        )
    return out


def step_for(range_s: int) -> int:
    """Seconds between two points of a chart over ``range_s`` seconds (at least 5).

    >>> step_for(900), step_for(300), step_for(21600)
    (7, 5, 180)
    """
    return max(5, range_s // POINTS)


def rate_interval(step: int) -> int:
    """Grafana's ``$__rate_interval``: four scrapes, or a step and a scrape if that is more.

    >>> rate_interval(7), rate_interval(180)
    (60, 195)
    """
    return max(4 * SCRAPE_INTERVAL, step + SCRAPE_INTERVAL)


def _regex_literal(value: str) -> str:
    """``value`` as a PromQL regex matching only itself (names hold only ``[a-z0-9.-]``)."""
    return value.replace(".", "\\\\.")


def substitute(expr: str, namespace: str, dataflow: str, step: int, range_s: int = 900) -> str:
    """A dashboard query with Grafana's variables replaced for one Dataflow.

    >>> substitute('rate(x{namespace=~"$namespace", dataflow=~"${dataflow}"}[$__rate_interval])', "a", "b", 7)
    'rate(x{namespace=~"a", dataflow=~"b"}[60s])'
    >>> print(substitute('x{dataflow=~"$dataflow"}', "a", "b.c", 7))
    x{dataflow=~"b\\\\.c"}
    """
    if not valid_name(namespace, dataflow):
        msg = f"not a namespace and name: {namespace!r} {dataflow!r}"
        raise ValueError(msg)
    values = {
        "namespace": _regex_literal(namespace),
        "dataflow": _regex_literal(dataflow),
        "__rate_interval": f"{rate_interval(step)}s",
        "__interval": f"{step}s",
        "__range": f"{range_s}s",
    }

    def one(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            msg = f"unknown variable ${m.group(1)} in {expr!r}"
            raise ValueError(msg)
        return values[m.group(1)]

    return re.sub(r"\$\{?(\w+)\}?", one, expr)


def chart_queries(
    name: str, namespace: str, dataflow: str, step: int, range_s: int = 900
) -> list[tuple[str, str]]:
    """``(legend format, PromQL)`` of each query of chart ``name`` for one Dataflow.

    >>> [(fmt, expr)] = chart_queries("throughput", "prod", "wc", 7)
    >>> fmt
    '{{dataflow}} {{step_id}}'
    >>> print(expr)
    sum by (dataflow, step_id) (rate(item_out_count_total{namespace=~"prod", dataflow=~"wc"}[60s]))
    """
    p = chart(name)
    return [
        (str(t.get("legendFormat", "")), substitute(str(t["expr"]), namespace, dataflow, step, range_s))
        for t in p["targets"]
    ]


def legend(fmt: str, labels: dict[str, str]) -> str:
    """A series' name from Grafana's legend format (``{{label}}`` replaced).

    >>> legend("{{dataflow}} w{{worker_index}}", {"dataflow": "wc", "worker_index": "1"})
    'wc w1'
    >>> legend("", {"__name__": "x", "step_id": "s"})
    '{step_id="s"}'
    """
    if not fmt:
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return "{" + inner + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def _number(text: Any) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def align(results: list[tuple[str, list[dict[str, Any]]]], start: int, end: int, step: int) -> dict[str, Any]:
    """Prometheus range answers (``(legend format, data.result)`` per query) as one table:
    the times, and per series its values at those times (``None`` where it had none).

    >>> r = [("{{step_id}}", [{"metric": {"step_id": "a"}, "values": [[10, "1.5"], [20, "NaN"]]}])]
    >>> align(r, 0, 20, 10)
    {'times': [0, 10, 20], 'series': [{'label': 'a', 'values': [None, 1.5, None], 'points': 1}]}
    """
    times = list(range(start, end + 1, step))
    index = {t: i for i, t in enumerate(times)}
    series = []
    for fmt, result in results:
        for s in result:
            values: list[float | None] = [None] * len(times)
            for t, v in s.get("values", []):
                i = index.get(round(float(t)))
                if i is not None:
                    values[i] = _number(v)
            label = legend(fmt, {str(k): str(v) for k, v in (s.get("metric") or {}).items()})
            series.append({"label": label, "values": values, "points": sum(v is not None for v in values)})
    series.sort(key=lambda s: str(s["label"]))
    return {"times": times, "series": series}


# ------------------------------------------------------------------ Dataflows


def lag_of(status: dict[str, Any]) -> float | None:
    """The sources' backlog as the autoscaler last measured it (``None``: not measured).

    >>> lag_of({"autoscaler": {"lastEvaluation": {"lag": 12.0}}}), lag_of({})
    (12.0, None)
    """
    ev = (status.get("autoscaler") or {}).get("lastEvaluation") or {}
    return _number(ev.get("lag")) if ev.get("lag") is not None else None


def summary(obj: dict[str, Any], lag: float | None = None) -> dict[str, Any]:
    """A row of the list page: a Dataflow's name, phase, replicas, conditions, lag and last snapshot.

    ``lag`` is Prometheus' answer, used when the autoscaler has not measured it.

    >>> row = summary({"metadata": {"namespace": "prod", "name": "wc"}, "spec": {"replicas": 2},
    ...                "status": {"phase": "Running", "readyReplicas": 2,
    ...                           "snapshot": {"epoch": 7, "time": "2026-12-07T10:00:00Z"}}})
    >>> row["phase"], row["replicas"], row["lastSnapshot"], row["lag"]
    ('Running', 2, {'epoch': 7, 'time': '2026-12-07T10:00:00Z'}, None)
    """
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    snap = status.get("snapshot") or {}
    measured = lag_of(status)
    return {
        "namespace": str(meta.get("namespace", "")),
        "name": str(meta.get("name", "")),
        "phase": str(status.get("phase") or "Pending"),
        "replicas": spec.get("replicas"),
        "readyReplicas": int(status.get("readyReplicas") or 0),
        "conditions": [
            {
                "type": str(c.get("type", "")),
                "status": str(c.get("status", "")),
                "reason": str(c.get("reason", "")),
            }
            for c in status.get("conditions") or []
        ],
        "lag": measured if measured is not None else lag,
        "lastSnapshot": (
            {"epoch": snap.get("epoch"), "time": snap.get("time")} if snap.get("epoch") is not None else None
        ),
        "keptSnapshots": len(status.get("snapshots") or []),
        "created": str(meta.get("creationTimestamp", "")),
    }


def _top_step(port_id: str) -> str:
    """The step a port belongs to: ``flow.step.port`` -> ``flow.step``."""
    return port_id.rsplit(".", 1)[0]


def graph_view(rendered: dict[str, Any] | None) -> dict[str, Any] | None:
    """A worker's ``/dataflow`` (`headrace.visualize.to_json`) as the page draws it:
    the top-level steps, each with the steps feeding it and its substeps' count.

    >>> g = {"flow_id": "f", "substeps": [
    ...   {"op_type": "input", "step_name": "inp", "step_id": "f.inp", "inp_ports": [],
    ...    "out_ports": [{"port_id": "f.inp.down"}], "substeps": []},
    ...   {"op_type": "map", "step_name": "m", "step_id": "f.m", "out_ports": [],
    ...    "inp_ports": [{"port_id": "f.m.up", "from_port_ids": ["f.inp.down"]}],
    ...    "substeps": [{}]}]}
    >>> graph_view(g)["steps"][1]
    {'id': 'f.m', 'name': 'm', 'type': 'map', 'from': ['f.inp'], 'substeps': 1}
    >>> graph_view(g)["source"]
    'worker'
    """
    if not isinstance(rendered, dict):
        return None
    steps = []
    for s in rendered.get("substeps") or []:
        upstream: list[str] = []
        for port in s.get("inp_ports") or []:
            for pid in port.get("from_port_ids") or []:
                step = _top_step(str(pid))
                if step not in upstream:
                    upstream.append(step)
        steps.append(
            {
                "id": str(s.get("step_id", "")),
                "name": str(s.get("step_name", "")),
                "type": str(s.get("op_type", "")),
                "from": upstream,
                "substeps": len(s.get("substeps") or []),
            }
        )
    return {"flowId": str(rendered.get("flow_id", "")), "steps": steps, "source": "worker"}


def kept_steps_view(status: dict[str, Any]) -> dict[str, Any] | None:
    """Without a worker to ask: the stateful steps the newest kept snapshot holds state of
    (``status.snapshots``), unconnected; ``None`` if it names none.

    >>> g = kept_steps_view({"snapshots": [{"name": "n", "flowId": "wc", "steps": ["wc.count"]}]})
    >>> g["source"], g["steps"]
    ('snapshot n', [{'id': 'wc.count', 'name': 'count', 'type': 'stateful', 'from': [], 'substeps': 0}])
    """
    for snap in reversed(status.get("snapshots") or []):
        if snap.get("steps"):
            steps = [
                {
                    "id": str(s),
                    "name": str(s).rsplit(".", 1)[-1],
                    "type": "stateful",
                    "from": [],
                    "substeps": 0,
                }
                for s in snap["steps"]
            ]
            return {
                "flowId": str(snap.get("flowId") or ""),
                "steps": steps,
                "source": f"snapshot {snap['name']}",
            }
    return None


def detail(
    obj: dict[str, Any],
    events: list[dict[str, Any]],
    graph: dict[str, Any] | None,
    graph_error: str = "",
    lag: float | None = None,
) -> dict[str, Any]:
    """One Dataflow's page: its row, spec essentials, status sections, events, graph and charts.

    >>> d = detail({"metadata": {"namespace": "p", "name": "wc", "generation": 3},
    ...             "spec": {"image": "app:1", "flow": {"import": "flows:wc"}}, "status": {}}, [], None)
    >>> d["image"], d["flow"], d["transition"], d["snapshots"], len(d["charts"])
    ('app:1', 'flows:wc', None, [], 7)
    """
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    autoscaler = status.get("autoscaler") or {}
    if graph is None:
        graph = kept_steps_view(status)
    return {
        **summary(obj, lag),
        "image": str(spec.get("image", "")),
        "flow": str((spec.get("flow") or {}).get("import", "")),
        "generation": meta.get("generation"),
        "observedGeneration": status.get("observedGeneration"),
        "deployedGeneration": status.get("deployedGeneration"),
        "conditionsFull": list(status.get("conditions") or []),
        "execution": status.get("execution"),
        "transition": status.get("transition"),
        "partitions": status.get("partitions"),
        "snapshot": status.get("snapshot"),
        "snapshots": list(status.get("snapshots") or []),
        "autoscaler": {
            "mode": autoscaler.get("mode", "off"),
            "lastEvaluation": autoscaler.get("lastEvaluation"),
            "decisions": list(autoscaler.get("decisions") or []),
            "pendingScaleDown": autoscaler.get("pendingScaleDown"),
        },
        "lastError": status.get("lastError"),
        "rollback": status.get("rollback"),
        "stopped": status.get("stopped"),
        "errors": list(status.get("errors") or []),
        "events": events,
        "graph": graph,
        "graphError": graph_error,
        "charts": chart_list(),
    }
