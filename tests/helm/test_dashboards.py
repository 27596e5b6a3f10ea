"""The Grafana dashboards and the alert rules of the chart: valid dashboards,
PromQL that Prometheus parses, metric names that Headrace really exports, and
worker queries that return data from a real Prometheus scraping real workers.

Metric names come from the runtime's catalogue (``headrace._metrics``)
and the operator's (``headrace_operator.metrics.OPERATOR_CATALOGUE``). The one
other series allowed is ``up``, which Prometheus itself writes per target.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from headrace._metrics import CATALOGUE
from headrace._metrics import exported_names as worker_exported_names
from tests.support import _tools as tools
from tests.support.helm import CHART, PROMETHEUS_API, one, render
from tests.support.servers import free_port, free_port_pair

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
SCRAPE_SERIES = {"up"}
pytestmark = pytest.mark.tools("helm", "promtool", "prometheus")
OPERATOR_DASHBOARDS = {"operator", "autoscaler"}


def _operator_catalogue() -> tuple[dict[str, Any], set[str]]:
    try:
        from headrace_operator import metrics
    except ImportError:  # the operator package is optional for the worker checks
        return {}, set()
    return dict(metrics.OPERATOR_CATALOGUE), set(metrics.exported_names())


OPERATOR_CATALOGUE, OPERATOR_NAMES = _operator_catalogue()
WORKER_NAMES = set(worker_exported_names())


# ------------------------------------------------------------------ PromQL


PROMQL_FUNCTIONS = {
    # aggregations
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    # functions
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_count",
    "histogram_sum",
    "histogram_fraction",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects; raises on an unknown function.

    >>> sorted(metric_names('sum by (a) (rate(x_total{a=~"$v"}[5m])) / on (a) y > bool 1'))
    ['x_total', 'y']
    """
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        start = m.start()
        if start and (text[start - 1].isdigit() or text[start - 1] in "$."):
            continue  # a number's exponent/unit or a variable, not a name
        word = m.group()
        rest = text[m.end() :].lstrip()
        if word in PROMQL_KEYWORDS:
            continue
        if rest.startswith("("):
            if word not in PROMQL_FUNCTIONS:
                msg = f"unknown PromQL function {word!r} in {expr!r}"
                raise ValueError(msg)
        else:
            names.add(word)
    return names


def test_metric_name_extraction_finds_names_and_rejects_unknown_functions() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (dataflow, le) (rate(a_bucket{x="y{z}"}[$__rate'
        "_interval]))) / ignoring (pod) group_left (q) b offset 5m and c unless 1e3"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    assert metric_names('label_replace(up, "a", "$1", "b", "(.*)")') == {"up"}
    assert metric_names("a == 0 unless on (x) (b == 1) or (c)") == {"a", "b", "c"}
    with pytest.raises(ValueError, match="sume"):
        metric_names("sume(x)")


# ------------------------------------------------------------------ collecting queries


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def dashboard_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every query variable."""
    out = []
    for p in _panels(dash["panels"]):
        for t in p.get("targets", []):
            out.append((f"{dash['uid']}: {p['title']} {t['refId']}", t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q.strip())
            assert m, f"{dash['uid']}: variable {v['name']} is not label_values(selector, label)"
            out.append((f"{dash['uid']}: variable {v['name']}", m.group(1)))
    return out


def rule_alerts(tmp: Path) -> list[dict[str, Any]]:
    rule = one(render(tmp, None, *PROMETHEUS_API), "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def all_queries(tmp: Path) -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        out += dashboard_queries(_load(path))
    out += [(f"alert {r['alert']}", r["expr"]) for r in rule_alerts(tmp)]
    return out


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """Grafana's variables replaced the way Grafana would, for Prometheus to run it."""
    values = values or {}
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
    expr = expr.replace("$__interval", "30s")
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), ".*"), expr)


# ------------------------------------------------------------------ dashboards


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_is_a_valid_grafana_dashboard(path: Path) -> None:
    d = _load(path)
    assert d["uid"] == f"headrace-{path.stem}" and len(d["uid"]) <= 40
    assert d["title"].startswith("Headrace / ")
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert d["id"] is None, "exported dashboards carry no database id"
    assert "headrace" in d["tags"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "dataflow"} <= set(variables)
    assert variables["dataflow"]["multi"] and variables["dataflow"]["includeAll"]
    ids = [p["id"] for p in _panels(d["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for p in _panels(d["panels"]):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"{p['title']} overlaps another panel"
        occupied |= cells
        assert p["title"].strip()
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat", "table", "gauge", "bargauge", "heatmap"}
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("description"), f"{p['title']}: say what the panel shows"
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            assert t["expr"].strip()
            used = set(re.findall(r"\$\{?(\w+)", t["expr"]))
            builtin = {"__rate_interval", "__range", "__interval"}
            assert used <= set(variables) | builtin, f"{p['title']}: undefined {used}"
            if "$dataflow" not in t["expr"] and "$namespace" not in t["expr"]:
                # Only operator-wide series may ignore the dashboard's selection.
                names = metric_names(t["expr"])
                assert names <= OPERATOR_NAMES | SCRAPE_SERIES and names, (
                    f"{p['title']}: {t['expr']} ignores $namespace/$dataflow"
                )


def test_dashboards_cover_the_four_areas() -> None:
    assert {p.stem for p in DASHBOARDS} == {"dataflow", "snapshots", "operator", "autoscaler"}
    uids = [_load(p)["uid"] for p in DASHBOARDS]
    titles = [_load(p)["title"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)


def test_dataflow_dashboard_shows_what_the_issue_asks_for() -> None:
    exprs = " ".join(e for _, e in dashboard_queries(_load(CHART / "dashboards" / "dataflow.json")))
    for needle in (
        "rate(item_out_count_total",
        "rate(headrace_worker_busy_seconds_total",
        "headrace_worker_backpressure_seconds_total",
        "headrace_exchange_items_total",
        "headrace_exchange_bytes_total",
        "headrace_epoch_current",
        "headrace_epoch_committed",
        "headrace_epoch_duration_seconds_bucket",
        "headrace_source_lag",
    ):
        assert needle in exprs, needle


# ------------------------------------------------------------------ metric names


def test_every_query_uses_metrics_headrace_exports(tmp_path: Path) -> None:
    known = WORKER_NAMES | OPERATOR_NAMES | SCRAPE_SERIES
    unknown = {}
    for where, expr in all_queries(tmp_path):
        missing = metric_names(expr) - known
        if missing:
            unknown[where] = sorted(missing)
    assert unknown == {}, "queries use series no Headrace catalogue exports" + (
        "" if OPERATOR_NAMES else " (headrace_operator.metrics is not importable)"
    )


def test_every_worker_metric_is_on_a_dashboard() -> None:
    used: set[str] = set()
    for path in DASHBOARDS:
        for _, expr in dashboard_queries(_load(path)):
            used |= metric_names(expr)
    for name, (kind, _labels, _doc) in CATALOGUE.items():
        base = name[: -len("_total")] if name.endswith("_total") else name
        series = {
            "counter": {base + "_total"},
            "histogram": {name + "_bucket", name + "_sum", name + "_count"},
            "gauge": {name},
        }[kind]
        assert series & used, f"{name} is on no dashboard"


def test_every_operator_metric_is_on_a_dashboard_or_alert(tmp_path: Path) -> None:
    if not OPERATOR_CATALOGUE:
        pytest.fail("headrace_operator.metrics.OPERATOR_CATALOGUE is not importable")
    used: set[str] = set()
    for _, expr in all_queries(tmp_path):
        used |= metric_names(expr)
    for name, (kind, _labels, _doc) in OPERATOR_CATALOGUE.items():
        base = name[: -len("_total")] if name.endswith("_total") else name
        series = {
            "counter": {base + "_total"},
            "histogram": {name + "_bucket", name + "_sum", name + "_count"},
            "gauge": {name},
        }[kind]
        assert series & used, f"{name} is on no dashboard"


def test_labels_used_in_queries_exist_on_the_metrics(tmp_path: Path) -> None:
    """A `by (step_id)` over a metric without step_id silently sums everything."""
    target = {"namespace", "pod", "dataflow", "job", "instance", "le", "container", "endpoint", "service"}
    labels: dict[str, set[str]] = {}
    for cat in (CATALOGUE, OPERATOR_CATALOGUE):
        for name, (kind, lbls, _doc) in cat.items():
            base = name[: -len("_total")] if name.endswith("_total") else name
            for series in {
                "counter": [base + "_total"],
                "histogram": [name + "_bucket", name + "_sum", name + "_count"],
                "gauge": [name],
            }[kind]:
                labels[series] = set(lbls) | target
    labels["up"] = target
    problems = []
    for where, expr in all_queries(tmp_path):
        names = metric_names(expr)
        if not names or not names <= set(labels):
            continue
        allowed = set.union(*(labels[n] for n in names))
        text = _STRING.sub('""', expr)
        grouped = {
            lbl.strip()
            for m in _LABEL_LIST.finditer(text)
            for lbl in m.group(0).split("(", 1)[1].rstrip(")").split(",")
            if lbl.strip()
        }
        matched = {
            m.group(1)
            for sel in re.findall(r"\{([^}]*)\}", expr)
            for m in re.finditer(r"(\w+)\s*(?:=~|!~|!=|=)", sel)
        }
        if (grouped | matched) - allowed:
            problems.append(f"{where}: {sorted((grouped | matched) - allowed)}")
    assert problems == []


# ------------------------------------------------------------------ promtool


def _promtool() -> str:
    return tools.need("promtool")


def test_every_query_parses_in_prometheus(tmp_path: Path) -> None:
    queries = all_queries(tmp_path)
    rules = [
        {"record": f"headrace:check:{i}", "expr": substitute(expr)} for i, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        bad = [
            f"{where}: {expr}"
            for i, (where, expr) in enumerate(queries)
            if f'headrace:check:{i}"' in proc.stdout + proc.stderr or f"{i}:" in proc.stderr
        ]
        pytest.fail(f"promtool rejects queries:\n{proc.stdout}\n{proc.stderr}\n" + "\n".join(bad))
    assert f"{len(rules)} rules found" in proc.stdout


def test_alert_rules_and_their_templates_are_valid(tmp_path: Path) -> None:
    """promtool checks the PrometheusRule's groups as a rule file, annotation
    templates ({{ $labels.x }}, humanizeDuration) included."""
    rule = one(render(tmp_path, None, *PROMETHEUS_API), "PrometheusRule")
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 rules found" in proc.stdout


# ------------------------------------------------------------------ a real Prometheus


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait(url: str, timeout: float) -> None:
    # Prometheus answers /-/ready with 503 "Service Unavailable" until its
    # storage is open: only a 200 means it is up.
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            code, body = _get(url)
            if code == 200:
                return
            last = f"{code} {body.strip()[:80]}"
        except OSError as e:
            last = str(e)
        time.sleep(0.2)
    pytest.fail(f"{url} never came up (last answer: {last})")


@pytest.mark.timeout(240)
def test_worker_queries_return_data_from_a_real_prometheus(tmp_path: Path) -> None:
    """Two worker processes with a recovery store, scraped by Prometheus with the
    labels the chart's PodMonitor gives (namespace, pod, dataflow): every
    dashboard query over worker metrics must return series."""
    exe = tools.need("prometheus")
    base = free_port_pair()
    targets = [
        {
            "targets": [f"127.0.0.1:{base + i}"],
            "labels": {"namespace": "team-a", "dataflow": "paced", "pod": f"paced-{i}"},
        }
        for i in range(2)
    ]
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "headrace", "static_configs": targets}],
            }
        )
    )
    prom_port = free_port()
    prom = subprocess.Popen(
        [
            exe,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), HR_SECONDS="90", HR_PARTS="2", HR_PER_TICK="20", HR_TICK="0.05"
    )
    from headrace.recovery import init_db_dir

    init_db_dir(tmp_path / "recovery", 2)
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headrace.run",
            "tests.support.flows.metrics_flows:paced()",
            "-p",
            "2",
            "-r",
            str(tmp_path / "recovery"),
            "--epoch-interval",
            "1",
            "--metrics-port",
            str(base),
            "--metrics-host",
            "127.0.0.1",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Alerts are left out: they return series only while they fire.
    queries = [q for path in DASHBOARDS for q in dashboard_queries(_load(path))]
    worker_only = [
        (where, expr) for where, expr in queries if metric_names(expr) and metric_names(expr) <= WORKER_NAMES
    ]
    assert len(worker_only) > 30
    try:
        _wait(f"http://127.0.0.1:{prom_port}/-/ready", 30)
        values = {"namespace": "team-a", "dataflow": "paced"}
        empty: list[str] = []
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and run.poll() is None:
            empty = []
            for where, expr in worker_only:
                url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode(
                    {"query": substitute(expr, values)}
                )
                code, body = _get(url)
                data = json.loads(body)
                assert code == 200 and data["status"] == "success", f"{where}: {body}"
                if not data["data"]["result"]:
                    empty.append(f"{where}: {expr}")
            if not empty:
                break
            time.sleep(2)
        assert empty == [], "queries without data:\n" + "\n".join(empty)
    finally:
        run.terminate()
        try:
            run.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
            run.communicate()
        prom.terminate()
        prom.wait(10)
