"""Metrics: the endpoint, valid exposition under concurrent scrapes, and a real
Prometheus scraping a 2-process cluster."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from headrace._engine import execute, request_stop
from headrace._metrics import _BUCKETS, CATALOGUE, exported_names
from headrace.errors import HeadraceRuntimeError
from tests.support import _tools as tools
from tests.support.flows.metrics_flows import paced
from tests.support.servers import free_port, free_port_pair

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait_up(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _get(url, 1)
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{url} never came up")


@pytest.fixture
def running_flow(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setenv("HR_SECONDS", "120")  # stopped below, once the test is done
    port = free_port()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            execute(
                paced(),
                metrics_port=port,
                metrics_host="127.0.0.1",
                epoch_interval=timedelta(milliseconds=300),
            )
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    _wait_up(f"http://127.0.0.1:{port}/healthz")
    yield port
    assert request_stop(), "the run ended before the test did"
    t.join(30)
    assert not t.is_alive()
    assert not errors, errors


@pytest.mark.slow
def test_endpoints_serve_metrics_dataflow_health(running_flow: int) -> None:
    base = f"http://127.0.0.1:{running_flow}"
    time.sleep(1)
    code, text = _get(base + "/metrics")
    assert code == 200
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert "item_out_count" in fams
    samples = [
        s
        for s in fams["item_out_count"].samples
        if s.labels.get("step_id") == "paced.inp" and s.name.endswith("_total")
    ]
    assert samples and samples[0].labels["worker_index"] == "0" and samples[0].value > 0
    assert "user_events" in fams, "user-registered metrics show on the same endpoint"
    lags = [s for s in fams["headrace_source_lag"].samples if s.labels["step_id"] == "paced.inp"]
    assert {s.labels["partition"] for s in lags} == {"p0", "p1"}
    assert all(s.value > 0 for s in lags)
    code, body = _get(base + "/dataflow")
    assert code == 200
    graph = json.loads(body)
    assert graph["flow_id"] == "paced"
    assert _get(base + "/healthz")[0] == 200
    assert _get(base + "/readyz")[0] == 200
    assert _get(base + "/nope")[0] == 404


@pytest.mark.slow
def test_exposition_stays_valid_under_concurrent_scrapes(running_flow: int) -> None:
    url = f"http://127.0.0.1:{running_flow}/metrics"
    failures: list[BaseException] = []
    counts = [0]
    lock = threading.Lock()

    def scrape() -> None:
        for _ in range(25):
            try:
                code, text = _get(url)
                assert code == 200
                names = {f.name for f in text_string_to_metric_families(text)}
                assert "item_inp_count" in names
                with lock:
                    counts[0] += 1
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=scrape) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert counts[0] == 100


def test_metrics_port_in_use_is_a_clear_startup_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(HeadraceRuntimeError, match=f"metrics port {port} .* already in use"):
            execute(paced(), metrics_port=port, metrics_host="127.0.0.1")


def test_workers_of_one_process_have_their_own_series(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import REGISTRY, generate_latest

    import headrace.operators as op
    from headrace.dataflow import Dataflow
    from headrace.testing import TestingSink, TestingSource

    seen: list[set[str]] = []

    def look(x: int) -> int:
        # Inside the run: every worker's series exist (bound when it was built).
        text = generate_latest(REGISTRY).decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        seen.append(
            {
                s.labels["worker_index"]
                for s in fams["item_out_count"].samples
                if s.labels.get("step_id") == "series.look.flat_map_batch"
            }
        )
        return x

    flow = Dataflow("series")
    s = op.redistribute("spread", op.input("inp", flow, TestingSource(range(4))))
    op.output("out", op.map("look", s, look), TestingSink([]))
    execute(flow, workers_per_process=2)
    assert seen and all(workers == {"0", "1"} for workers in seen)
    # A finished run leaves no series behind.
    after = {f.name: f for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}
    chain = "series.look.flat_map_batch"
    assert not [s for s in after["item_out_count"].samples if s.labels.get("step_id") == chain]


def test_catalogue_is_documented() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    for name in CATALOGUE:
        assert f"`{name}`" in doc, f"{name} missing from docs/metrics.md"
    assert "item_inp_count_total" in exported_names()


# ------------------------------------------------------------- real Prometheus


class _Prometheus:
    def __init__(self, workdir: Path, targets: list[str]) -> None:
        exe = tools.need("prometheus")
        self.port = free_port()
        cfg = workdir / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: headrace\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_up(f"http://127.0.0.1:{self.port}/-/ready", 30)

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        code, body = _get(url)
        data = json.loads(body)
        assert code == 200 and data["status"] == "success", body
        return data["data"]["result"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.mark.timeout(180)
@pytest.mark.tools("prometheus")
def test_real_prometheus_scrapes_a_two_process_cluster(tmp_path: Path) -> None:
    base = free_port_pair()
    prom = _Prometheus(tmp_path, [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"])
    try:
        env = dict(
            os.environ, PYTHONPATH=str(ROOT), HR_SECONDS="25", HR_PARTS="2", HR_PER_TICK="50", HR_TICK="0.05"
        )  # 2 x 1000 items/s
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headrace.run",
                "tests.support.flows.metrics_flows:paced()",
                "-p",
                "2",
                "--metrics-port",
                str(base),
                "--metrics-host",
                "127.0.0.1",
                "--epoch-interval",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(16)
            up = prom.query("up")
            assert len(up) == 2 and all(r["value"][1] == "1" for r in up), up
            rate = prom.query('sum(rate(item_out_count_total{step_id="paced.inp"}[10s]))')
            value = float(rate[0]["value"][1])
            assert 1600 <= value <= 2400, f"input rate {value}, expected 2000 +- 20%"
            by_worker = prom.query('item_out_count_total{step_id="paced.inp"}')
            assert {r["metric"]["worker_index"] for r in by_worker} == {"0", "1"}
            for series in (
                "item_inp_count_total",
                "headrace_worker_busy_seconds_total",
                "headrace_exchange_items_total",
                "headrace_epoch_current",
                "stateful_batch_on_batch_duration_seconds_bucket",
                "headrace_exchange_bytes_total",
                "user_events_total",
            ):
                assert prom.query(series), f"no {series} in Prometheus"
        finally:
            _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err[-2000:]
    finally:
        prom.stop()


@pytest.mark.slow
def test_worker_busy_and_idle_seconds_add_up() -> None:
    """Busy time counts work (here: sleeping inside a map), idle time counts waiting for input."""
    from prometheus_client import REGISTRY

    import headrace.operators as op
    from headrace.dataflow import Dataflow
    from headrace.testing import TestingSink, TestingSource

    seen: dict[str, float] = {}

    def work(x: int) -> int:
        if x < 10:
            time.sleep(0.03)
        else:
            for name in ("busy", "idle"):
                series = f"headrace_worker_{name}_seconds_total"
                value = REGISTRY.get_sample_value(series, {"worker_index": "0"})
                seen[name] = value if value is not None else -1.0
        return x

    flow = Dataflow("busy_idle")
    items: list[Any] = [*range(10), TestingSource.PAUSE(timedelta(milliseconds=600)), 10]
    s = op.input("inp", flow, TestingSource(items))
    op.output("out", op.map("work", s, work), TestingSink([]))
    t0 = time.perf_counter()
    execute(flow, epoch_interval=timedelta(seconds=10))
    wall = time.perf_counter() - t0
    # 10 x 30 ms of work, then 600 ms without input (flushes are every 50 ms).
    assert seen["busy"] >= 0.25, seen
    assert seen["idle"] >= 0.45, seen
    assert seen["busy"] + seen["idle"] <= wall, (seen, wall)


@pytest.mark.slow
def test_a_scrape_during_a_long_batch_sees_the_time_spent_in_it() -> None:
    """A saturated worker stuck in one long batch must not look idle to the autoscaler."""
    from prometheus_client import REGISTRY

    import headrace.operators as op
    from headrace.dataflow import Dataflow
    from headrace.testing import TestingSink, TestingSource

    seen: list[float] = []

    def slow(x: int) -> int:
        time.sleep(0.8)
        # Still inside the batch: nothing was flushed since it started.
        value = REGISTRY.get_sample_value("headrace_worker_busy_seconds_total", {"worker_index": "0"})
        seen.append(-1.0 if value is None else value)
        return x

    flow = Dataflow("long_batch")
    op.output("out", op.map("slow", op.input("inp", flow, TestingSource([1])), slow), TestingSink([]))
    execute(flow, epoch_interval=timedelta(seconds=10))
    assert seen and seen[0] >= 0.7, seen


def _exposition(registry: Any, created: bool = False) -> list[str]:
    from prometheus_client import generate_latest

    # `_created` is the series' creation time: equal only up to when each was made.
    lines = generate_latest(registry).decode().splitlines()
    return lines if created else [ln for ln in lines if "_created" not in ln]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["0", "1"]),
            st.one_of(st.sampled_from((0.0, *_BUCKETS, 1e9)), st.floats(0, 100, allow_nan=False)),
        ),
        max_size=40,
    )
)
def test_worker_series_expose_what_prometheus_client_exposes(obs: list[tuple[str, float]]) -> None:
    """The lock-free per-worker series are a drop-in for prometheus-client's own:
    same text for the same observations (values on a bucket's bound included)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from headrace._metrics import WorkerFamily

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    labels = ("step_id", "worker_index")
    mine = (
        WorkerFamily("histogram", "h_seconds", "doc", labels, ours),
        WorkerFamily("counter", "c", "doc", labels, ours),
    )
    ref = (
        Histogram("h_seconds", "doc", labels, buckets=_BUCKETS, registry=theirs),
        Counter("c", "doc", labels, registry=theirs),
    )
    for worker, value in obs:
        for hist, counter in (mine, ref):
            hist.labels("s", worker).observe(value)
            counter.labels("s", worker).inc(value)
    assert _exposition(ours) == _exposition(theirs)
    # ...and `_created` is there too, once per series.
    created = [ln for ln in _exposition(ours, created=True) if "_created{" in ln]
    assert len(created) == 2 * len({w for w, _ in obs})


def test_worker_series_scraped_while_written_are_consistent() -> None:
    """One writer, no lock: every scrape sees a whole histogram (+Inf == count,
    cumulative buckets never decrease) and counters that never go back."""
    from prometheus_client import CollectorRegistry

    from headrace._metrics import WorkerFamily

    reg = CollectorRegistry()
    hist = WorkerFamily("histogram", "h_seconds", "doc", ("worker_index",), reg)
    count = WorkerFamily("counter", "c", "doc", ("worker_index",), reg)
    h, c = hist.labels("0"), count.labels("0")
    n = 200_000
    done = threading.Event()

    def write() -> None:
        for i in range(n):
            h.observe((i % 13) * 0.01)
            c.inc(1)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    scrapes, last = 0, -1.0
    while not done.is_set() or scrapes == 0:
        fams = {f.name: f for f in text_string_to_metric_families("\n".join(_exposition(reg)) + "\n")}
        buckets = [s.value for s in fams["h_seconds"].samples if s.name == "h_seconds_bucket"]
        total = next(s.value for s in fams["h_seconds"].samples if s.name == "h_seconds_count")
        assert buckets == sorted(buckets) and buckets[-1] == total
        value = fams["c"].samples[0].value
        assert value >= last
        last = value
        scrapes += 1
    writer.join()
    assert c.value == n and sum(h.counts) == n
    assert scrapes > 1


# --- two runs on one machine ---------------------------------------------------

_TINY = "tests.support.flows.import_targets:make(3, prefix='t')"
_MOVED = (
    r"^headrace: metrics port {port} on 127\.0\.0\.1 is in use \(another run\?\); "
    r"serving /metrics on 127\.0\.0\.1:(\d+) instead$"
)


def _hold(port: int) -> socket.socket | None:
    """Listen on ``port`` on all interfaces, or None if something else already does."""
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", port))
    except OSError:
        s.close()
        return None  # taken all the same: by another run on this machine
    s.listen()
    return s


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_local_run_moves_off_a_taken_default_port_in_one_line(processes: str) -> None:
    import re

    held = [_hold(3030 + i) for i in range(int(processes))]
    try:
        res = _run_cli(_TINY, "-p", processes)
    finally:
        for s in held:
            if s is not None:
                s.close()
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == int(processes), res.stderr
    assert sorted(re.sub(r":\d+ instead$", ":N instead", ln) for ln in lines) == [
        f"headrace: metrics port {3030 + i} on 127.0.0.1 is in use (another run?); "
        "serving /metrics on 127.0.0.1:N instead"
        for i in range(int(processes))
    ]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_moved_endpoint_serves_on_loopback(tmp_path: Path) -> None:
    """The port said on stderr serves /healthz, on 127.0.0.1 (the fallback, exercised
    with the hidden flag a ``-p`` parent gives its children, on a port we hold)."""
    import re
    import signal

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headrace.run",
                "tests.support.flows.metrics_flows:paced()",
                "--metrics-port",
                str(port),
                "--metrics-port-fallback",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HR_SECONDS": "60"},
        )
        assert p.stderr is not None
        try:
            m = re.match(_MOVED.format(port=port), p.stderr.readline().rstrip("\n"))
            assert m is not None
            moved = int(m.group(1))
            _wait_up(f"http://127.0.0.1:{moved}/healthz")
            assert _get(f"http://127.0.0.1:{moved}/healthz") == (200, "ok\n")
        finally:
            p.send_signal(signal.SIGTERM)  # (its exit status is another test's business)
            p.communicate(timeout=60)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["flag", "env", "flag-p2"])
def test_a_chosen_metrics_port_in_use_fails_loudly(how: str) -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        env = None
        if how == "flag":
            res = _run_cli(_TINY, "--metrics-port", str(port))
        elif how == "flag-p2":
            res = _run_cli(_TINY, "-p", "2", "--metrics-port", str(port))
        else:
            env = {**os.environ, "HEADRACE_METRICS_PORT": str(port)}
            res = _run_cli(_TINY, env=env)
    assert res.returncode == 1, res.stderr
    assert (
        f"error: metrics port {port} on 0.0.0.0 is already in use; pass another --metrics-port"
    ) in res.stderr
    assert "instead" not in res.stderr
