"""The operator's web console: its JSON endpoints for a given cluster state, the charts'
queries (the shipped dashboards' own), the page's files, and the proxy to a real Prometheus.

The cluster state comes from the simulated world (`tests.support.kube_world`):
the status is what `reconcile.plan` wrote. The browser side is tested in the
e2e suite (Chromium against the real operator).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from headrace_operator.console import data, vendor
from headrace_operator.console.server import STATIC, ConsoleServer, StaticBackend
from tests.support import _tools as tools
from tests.support.kube_world import World
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
CHART_DASHBOARDS = ROOT / "helm" / "headrace" / "dashboards"
SHIPPED = ROOT / "operator" / "headrace_operator" / "console" / "dashboards"

GRAPH = {
    "typ": "RenderedDataflow",
    "flow_id": "wc",
    "substeps": [
        {
            "typ": "RenderedOperator",
            "op_type": "input",
            "step_name": "inp",
            "step_id": "wc.inp",
            "inp_ports": [],
            "out_ports": [{"port_name": "down", "port_id": "wc.inp.down", "from_port_ids": []}],
            "substeps": [],
        },
        {
            "typ": "RenderedOperator",
            "op_type": "count_final",
            "step_name": "count",
            "step_id": "wc.count",
            "inp_ports": [{"port_name": "up", "port_id": "wc.count.up", "from_port_ids": ["wc.inp.down"]}],
            "out_ports": [{"port_name": "down", "port_id": "wc.count.down", "from_port_ids": []}],
            "substeps": [{}, {}],
        },
        {
            "typ": "RenderedOperator",
            "op_type": "output",
            "step_name": "out",
            "step_id": "wc.out",
            "inp_ports": [{"port_name": "up", "port_id": "wc.out.up", "from_port_ids": ["wc.count.down"]}],
            "out_ports": [],
            "substeps": [],
        },
    ],
}
EVENT = {"time": "1970-01-12T13:46:41Z", "type": "Normal", "reason": "Started", "message": "<b>2 pods</b>"}


def _world_object() -> dict[str, Any]:
    """A Running 2-replica Dataflow with a committed epoch and a kept snapshot, as the API returns it."""
    w = World()
    w.run_until_running()
    w.commit(5)
    w.edit(snapshotNonce=1)
    w.step()
    w.commit(6)  # the epoch that answers the nonce: kept as nonce-1
    w.step()
    w.step()
    return {
        "apiVersion": "headrace.dev/v1alpha1",
        "kind": "Dataflow",
        "metadata": {
            "namespace": "prod",
            "name": "wc",
            "generation": w.generation,
            "creationTimestamp": "1970-01-12T13:40:00Z",
        },
        "spec": w.spec,
        "status": w.status,
    }


@pytest.fixture
def console() -> Iterator[tuple[str, dict[str, Any]]]:
    obj = _world_object()
    other = {
        "metadata": {"namespace": "dev", "name": "sensors"},
        "spec": {"replicas": 1, "image": "app:2", "flow": {"import": "flows:sensors"}},
        "status": {"phase": "Deploying", "autoscaler": {"lastEvaluation": {"lag": 42.0}}},
    }
    kept = {
        "metadata": {"namespace": "dev", "name": "kept"},
        "spec": {},
        "status": {
            "snapshots": [
                {"name": "nonce-1", "epoch": 3, "flowId": "wc", "steps": ["wc.count"]},
                {"name": "nonce-2", "epoch": 4, "flowId": "wc", "steps": ["wc.count", "wc.window"]},
                {"name": "scheduled-x", "epoch": 5},
            ]
        },
    }
    backend = StaticBackend(
        [obj, other, kept], events={("prod", "wc"): [EVENT]}, graphs={("prod", "wc"): GRAPH}
    )
    srv = ConsoleServer("127.0.0.1", 0, backend)
    try:
        yield f"http://127.0.0.1:{srv.port}", obj
    finally:
        srv.close()


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _json(url: str) -> tuple[int, Any]:
    code, _h, body = _get(url)
    return code, json.loads(body)


# ------------------------------------------------------------------ one source for dashboards and console


def test_the_shipped_dashboards_are_the_charts() -> None:
    """console/dashboards/ holds the chart's dashboards byte for byte.

    After changing a dashboard:
    cp helm/headrace/dashboards/*.json operator/headrace_operator/console/dashboards/
    """
    chart = {p.name: p.read_bytes() for p in CHART_DASHBOARDS.glob("*.json")}
    shipped = {p.name: p.read_bytes() for p in SHIPPED.glob("*.json")}
    assert sorted(shipped) == sorted(chart)
    differ = [name for name in chart if chart[name] != shipped[name]]
    assert differ == [], (
        f"{differ} differ: cp helm/headrace/dashboards/*.json operator/headrace_operator/console/dashboards/"
    )


def test_every_chart_is_a_dashboard_panel_and_its_queries_are_complete() -> None:
    assert list(data.CHARTS) == [
        "throughput",
        "input",
        "busy",
        "lag",
        "epoch",
        "epoch-duration",
        "snapshot-duration",
    ]
    for name, (file, title) in data.CHARTS.items():
        board = json.loads((CHART_DASHBOARDS / file).read_text())
        exprs = [
            t["expr"]
            for p in board["panels"]
            for q in [p, *p.get("panels", [])]
            if q.get("title") == title
            for t in q.get("targets", [])
        ]
        queries = data.chart_queries(name, "prod", "wc", step=7)
        assert [e for _f, e in queries] == [data.substitute(e, "prod", "wc", 7) for e in exprs], name
        for _fmt, expr in queries:
            assert "$" not in expr and 'namespace=~"prod"' in expr and 'dataflow=~"wc"' in expr, expr


def test_substitution_refuses_what_is_not_a_name() -> None:
    for ns, name in (("prod", 'wc"} or vector(1) or {x="'), ("Prod", "wc"), ("prod", "wc|.*"), ("", "wc")):
        with pytest.raises(ValueError, match="not a namespace and name"):
            data.substitute('x{dataflow=~"$dataflow"}', ns, name, 7)
    assert data.substitute('x{dataflow=~"$dataflow"}', "prod", "wc.v2", 7) == 'x{dataflow=~"wc\\\\.v2"}'


def test_align_puts_answers_on_the_steps() -> None:
    results = [
        ("a {{p}}", [{"metric": {"p": "1"}, "values": [[100, "2"], [110, "3"]]}]),
        ("b", [{"metric": {}, "values": [[120, "+Inf"], [90, "1"]]}]),
    ]
    assert data.align(results, 100, 120, 10) == {
        "times": [100, 110, 120],
        "series": [
            {"label": "a 1", "values": [2.0, 3.0, None], "points": 2},
            {"label": "b", "values": [None, None, None], "points": 0},
        ],
    }


def test_uplot_is_vendored_at_the_pinned_version() -> None:
    assert vendor.check() == []
    head = (vendor.DIR / "uPlot.iife.min.js").read_text()[:80]
    assert f"(v{vendor.VERSION})" in head
    assert "MIT License" in (vendor.DIR / "LICENSE").read_text()


def test_package_data_ships_the_console() -> None:
    conf = (ROOT / "pyproject.toml").read_text()
    patterns = re.search(r'"headrace_operator.console" = \[(.*?)\]', conf, re.S)
    assert patterns is not None
    globs = re.findall(r'"([^"]+)"', patterns.group(1))
    base = ROOT / "operator" / "headrace_operator" / "console"
    shipped = {p.relative_to(base).as_posix() for g in globs for p in base.glob(g)}
    on_disk = {
        p.relative_to(base).as_posix()
        for d in ("static", "dashboards")
        for p in (base / d).rglob("*")
        if p.is_file()
    }
    assert on_disk <= shipped, sorted(on_disk - shipped)


# ------------------------------------------------------------------ the endpoints


WC_SUMMARY: dict[str, Any] = {
    "namespace": "prod",
    "name": "wc",
    "phase": "Running",
    "replicas": 2,
    "readyReplicas": 2,
    "conditions": [
        {"type": "Ready", "status": "True", "reason": "Running"},
        {"type": "Progressing", "status": "False", "reason": "Stable"},
        {"type": "Degraded", "status": "False", "reason": "AsExpected"},
        {"type": "SnapshotHealthy", "status": "True", "reason": "SnapshotCommitted"},
        {"type": "Autoscaling", "status": "False", "reason": "Disabled"},
        {"type": "Finished", "status": "False", "reason": "NotFinished"},
    ],
    "lag": None,
    "lastSnapshot": {"epoch": 6, "time": "1970-01-12T13:46:43Z"},
    "keptSnapshots": 1,
    "created": "1970-01-12T13:40:00Z",
}
"""prod/wc (`_world_object`) as the list endpoint summarises it; the detail endpoint adds to it."""


def test_list_endpoint_exact(console: tuple[str, dict[str, Any]]) -> None:
    url, _obj = console
    code, body = _json(f"{url}/api/dataflows")
    assert code == 200
    assert body == {
        "dataflows": [
            {
                "namespace": "dev",
                "name": "kept",
                "phase": "Pending",
                "replicas": None,
                "readyReplicas": 0,
                "conditions": [],
                "lag": None,
                "lastSnapshot": None,
                "keptSnapshots": 3,
                "created": "",
            },
            {
                "namespace": "dev",
                "name": "sensors",
                "phase": "Deploying",
                "replicas": 1,
                "readyReplicas": 0,
                "conditions": [],
                "lag": 42.0,
                "lastSnapshot": None,
                "keptSnapshots": 0,
                "created": "",
            },
            WC_SUMMARY,
        ],
        "namespaces": [],
        "prometheus": False,
    }


def test_detail_endpoint_exact(console: tuple[str, dict[str, Any]]) -> None:
    url, obj = console
    code, body = _json(f"{url}/api/dataflows/prod/wc")
    assert code == 200
    st = obj["status"]
    # Sections the status holds pass through as the API stores them.
    assert body["conditionsFull"] == st["conditions"] and body["execution"] == st["execution"]
    assert body["partitions"] == st["partitions"]
    assert body["snapshot"] == {
        "epoch": 6,
        "time": "1970-01-12T13:46:43Z",
        "bytes": 100,
        "workerCount": 2,
        "requestedNonce": 1,
        "requestedAt": "1970-01-12T13:46:43Z",
        "completedNonce": 1,
    }
    assert body["snapshots"] == [{"name": "nonce-1", "epoch": 6, "time": "1970-01-12T13:46:44Z", "size": 100}]
    rest = {
        k: v
        for k, v in body.items()
        if k not in {"conditionsFull", "execution", "partitions", "snapshot", "snapshots", "charts"}
    }
    assert rest == {
        **WC_SUMMARY,
        "image": "app:1",
        "flow": "app.flows:wc",
        "generation": 2,
        "observedGeneration": 2,
        "deployedGeneration": 1,
        "transition": None,
        "autoscaler": {"mode": "off", "lastEvaluation": None, "decisions": [], "pendingScaleDown": None},
        "lastError": None,
        "rollback": None,
        "stopped": None,
        "errors": [],
        "events": [EVENT],
        "graph": {
            "flowId": "wc",
            "steps": [
                {"id": "wc.inp", "name": "inp", "type": "input", "from": [], "substeps": 0},
                {"id": "wc.count", "name": "count", "type": "count_final", "from": ["wc.inp"], "substeps": 2},
                {"id": "wc.out", "name": "out", "type": "output", "from": ["wc.count"], "substeps": 0},
            ],
            "source": "worker",
        },
        "graphError": "",
    }
    assert [c["name"] for c in body["charts"]] == list(data.CHARTS)
    assert body["charts"][0] == {
        "name": "throughput",
        "title": "Items out per step",
        "unit": "ops",
        "description": data.chart("throughput")["description"],
        "dashboard": "dataflow.json",
    }
    code, other = _json(f"{url}/api/dataflows/dev/sensors")
    assert code == 200
    assert (other["graph"], other["graphError"], other["lag"]) == (None, "no worker answered", 42.0)
    # No worker to ask: the stateful steps of the newest kept snapshot that names them.
    code, kept = _json(f"{url}/api/dataflows/dev/kept")
    assert code == 200 and kept["graphError"] == "no worker answered"
    assert kept["graph"] == {
        "flowId": "wc",
        "steps": [
            {"id": "wc.count", "name": "count", "type": "stateful", "from": [], "substeps": 0},
            {"id": "wc.window", "name": "window", "type": "stateful", "from": [], "substeps": 0},
        ],
        "source": "snapshot nonce-2",
    }


def test_endpoints_refuse_what_they_do_not_serve(console: tuple[str, dict[str, Any]]) -> None:
    url, _obj = console
    assert _json(f"{url}/api/dataflows/prod/nope") == (
        404,
        {"error": "no Dataflow prod/nope (or not watched by this operator)"},
    )
    assert _json(f"{url}/api/dataflows/prod/wc%7C.%2A") == (
        400,
        {"error": "not a namespace and Dataflow name"},
    )
    code, body = _json(f"{url}/api/dataflows/prod/wc/series?panel=" + urllib.parse.quote("up"))
    assert code == 400 and body["error"].startswith("panel must be one of ['busy', 'epoch'"), body
    code, body = _json(f"{url}/api/dataflows/prod/wc/series?panel=busy&range=2d")
    assert (code, body) == (400, {"error": "range must be one of ['5m', '15m', '1h', '6h']"})
    assert _json(f"{url}/api/dataflows/prod/wc/series?panel=busy") == (
        503,
        {"error": "no Prometheus configured (console.prometheusUrl)"},
    )
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert _get(f"{url}/api/dataflows/prod/wc", method)[0] == 405, method
    assert _get(f"{url}/static/../server.py")[0] == 404
    assert _get(f"{url}/static/%2e%2e/server.py")[0] in (403, 404)


def test_the_page_and_its_files_are_served(console: tuple[str, dict[str, Any]]) -> None:
    url, _obj = console
    for path in ("/", "/dataflows/prod/wc"):
        code, headers, body = _get(url + path)
        assert code == 200 and body == (STATIC / "index.html").read_bytes()
        assert headers["Content-Security-Policy"].startswith("default-src 'self'; script-src 'self';")
        assert headers["X-Content-Type-Options"] == "nosniff"
    page = (STATIC / "index.html").read_text()
    for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
        code, _h, body = _get(url + src)
        assert code == 200 and body == (STATIC / src.removeprefix("/static/")).read_bytes(), src
    # Nothing is fetched from elsewhere, and no script is inline.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script>" not in page and "onclick" not in page
    js = (STATIC / "console.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js


# ------------------------------------------------------------------ a real Prometheus


class _Exposition(BaseHTTPRequestHandler):
    """Worker metrics with the labels the chart's PodMonitor gives them (constant values)."""

    TEXT = (
        "# TYPE headrace_epoch_current gauge\n"
        'headrace_epoch_current{namespace="prod",dataflow="wc",pod="wc-0"} 9\n'
        "# TYPE headrace_epoch_committed gauge\n"
        'headrace_epoch_committed{namespace="prod",dataflow="wc",pod="wc-0"} 7\n'
        'headrace_epoch_committed{namespace="prod",dataflow="other",pod="other-0"} 100\n'
    )

    def do_GET(self) -> None:
        body = self.TEXT.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.tools("prometheus")
@pytest.mark.timeout(120)
def test_series_endpoint_proxies_the_named_queries_to_a_real_prometheus(tmp_path: Path) -> None:
    exe = tools.need("prometheus")
    target = ThreadingHTTPServer(("127.0.0.1", 0), _Exposition)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "w",
                        # The exposition's own namespace/dataflow labels win, as with the PodMonitor's.
                        "honor_labels": True,
                        "static_configs": [{"targets": [f"127.0.0.1:{target.server_address[1]}"]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    prom = subprocess.Popen(
        [
            exe,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    srv = ConsoleServer("127.0.0.1", 0, StaticBackend([_world_object()]), f"http://127.0.0.1:{port}")
    try:
        series_url = f"http://127.0.0.1:{srv.port}/api/dataflows/prod/wc/series?panel=epoch&range=5m"
        deadline = time.monotonic() + 60
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                code, body = _json(series_url)
            except OSError:
                code = 0
            # Two points: the query ran on at least two steps after the first scrape.
            if code == 200 and all(s["points"] >= 2 for s in body["series"]) and len(body["series"]) == 2:
                break
            time.sleep(1)
        assert code == 200, body
        assert body["queries"] == [e for _f, e in data.chart_queries("epoch", "prod", "wc", 5, 300)]
        assert (body["name"], body["unit"], body["range"], body["step"]) == ("epoch", "short", "5m", 5)
        assert body["times"] == list(range(body["times"][0], body["times"][0] + 301, 5))
        assert [s["label"] for s in body["series"]] == ["committed wc", "current wc"]
        for s, value in zip(body["series"], (7.0, 9.0), strict=True):
            assert {v for v in s["values"] if v is not None} == {value}, s
            assert s["points"] >= 2
        # The list's lag comes from the dashboards' "Source lag" stat: no such series here.
        assert _json(f"http://127.0.0.1:{srv.port}/api/dataflows")[1]["dataflows"][0]["lag"] is None
    finally:
        srv.close()
        prom.terminate()
        prom.wait(10)
        target.shutdown()
