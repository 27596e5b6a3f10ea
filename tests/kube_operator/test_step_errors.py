"""Item errors of steps with an error policy, from the workers' counters to ``status.errors``."""

from __future__ import annotations

import headrace.operators as op
from headrace._engine._serve import EndpointServer, Readiness
from headrace.dataflow import Dataflow
from headrace.testing import TestingSink, TestingSource, run_main
from headrace_operator import _kube, handlers, step_errors
from headrace_operator.crd import PRINTER_COLUMNS
from headrace_operator.observation import Observation, PodInfo
from headrace_operator.spec import parse_spec
from tests.support.kube_world import BASE, World


def test_plan_adds_what_the_counters_grew_by_to_status() -> None:
    w = World()
    w.run_until_running()
    assert "errors" not in w.status and "errorCount" not in w.status
    w.step_errors = {("wc.parse", "skip"): 2.0, ("wc.total", "dead_letter"): 0.0}
    w.step(dt=10)
    at = w.status["errors"][0]["lastSeen"]
    assert w.status["errors"] == [
        {"stepId": "wc.parse", "policy": "skip", "count": 2, "lastSeen": at},
        {"stepId": "wc.total", "policy": "dead_letter", "count": 0},
    ]
    assert w.status["errorCount"] == 2
    # Nothing scraped in this reconcile: the counts stay.
    w.step_errors = None
    w.step(dt=1)
    assert w.status["errorCount"] == 2 and w.status["errors"][0]["lastSeen"] == at
    w.step_errors = {("wc.parse", "skip"): 1.0, ("wc.total", "dead_letter"): 4.0}
    w.step(dt=10)
    assert [(e["stepId"], e["count"]) for e in w.status["errors"]] == [("wc.parse", 3), ("wc.total", 4)]
    assert w.status["errors"][0]["lastSeen"] > at and w.status["errors"][1]["lastSeen"] > at
    assert w.status["errorCount"] == 7


def test_counts_survive_a_rescale() -> None:
    w = World()
    w.run_until_running()
    w.step_errors = {("wc.parse", "skip"): 5.0}
    w.step(dt=10)
    w.step_errors = None
    w.edit(replicas=3)
    for _ in range(6):
        w.step()
        w.kubelet()
    assert w.status["phase"] == "Running" and w.status["readyReplicas"] == 3
    assert w.status["errorCount"] == 5


def test_increase_across_restarts_and_pods_that_do_not_answer() -> None:
    key = ("wc.parse", "skip")
    seen: dict[str, step_errors.Counters] = {}
    scrapes = [
        {"wc-0": (0, {key: 2.0}), "wc-1": (0, {key: 1.0})},  # first look: everything counts
        {"wc-0": (0, {key: 5.0})},  # wc-1 did not answer
        {"wc-0": (0, {key: 5.0}), "wc-1": (0, {key: 4.0})},  # wc-1 is back: only its growth counts
        {"wc-0": (1, {key: 1.0}), "wc-1": (0, {key: 4.0})},  # wc-0 restarted: from zero
        {"wc-0": (1, {key: 3.0}), "wc-1": (0, {key: 2.0})},  # wc-1's counter dropped: restarted
    ]
    grown = []
    for now in scrapes:
        grown.append(step_errors.increase(seen, now)[key])
        seen = step_errors.remember(seen, now)
    assert grown == [3.0, 3.0, 3.0, 1.0, 4.0]


def test_the_handlers_scrape_real_worker_counters() -> None:
    # A real dataflow with an error policy counts in this process's registry,
    # which the runtime's endpoint serves as a worker pod's does.
    flow = Dataflow("errs")
    nums = op.input("in", flow, TestingSource(["1", "x", "2", "y", "z"]))
    out: list[int] = []
    op.output("out", op.map("parse", nums, int, on_error="skip"), TestingSink(out))
    run_main(flow)
    assert out == [1, 2]
    srv = EndpointServer("127.0.0.1", 0, lambda: "{}", Readiness())
    try:
        sample = _kube.scrape([PodInfo("wc-0", 0, ip="127.0.0.1")], srv.port)
        base = sample.pods["wc-0"].errors[("errs.parse", "skip")]
        assert base >= 3.0  # other tests of this process may have counted too
        spec = parse_spec({**BASE, "observability": {"metricsPort": srv.port}})
        obs = Observation(
            "wc", "ns", "uid-errs", 1, BASE, now=1000.0, status={"phase": "Running"},
            pods=[PodInfo("wc-0", 0, phase="Running", ip="127.0.0.1")],
        )  # fmt: skip
        handlers.STATE.error_counters.pop("uid-errs", None)
        handlers.STATE.errors_scraped.pop("uid-errs", None)
        handlers._step_errors("uid-errs", spec, obs)
        assert obs.step_errors is not None and obs.step_errors[("errs.parse", "skip")] == base
        # Within the period: no scrape, nothing to add.
        obs2 = Observation(
            "wc", "ns", "uid-errs", 1, BASE, now=1005.0, status={"phase": "Running"}, pods=obs.pods
        )
        handlers._step_errors("uid-errs", spec, obs2)
        assert obs2.step_errors is None
        run_main(flow)
        obs3 = Observation(
            "wc", "ns", "uid-errs", 1, BASE, now=1011.0, status={"phase": "Running"}, pods=obs.pods
        )
        handlers._step_errors("uid-errs", spec, obs3)
        # (The process's registry may hold other tests' steps too.)
        assert obs3.step_errors is not None and obs3.step_errors[("errs.parse", "skip")] == 3.0
    finally:
        srv.close()
        handlers.STATE.error_counters.pop("uid-errs", None)
        handlers.STATE.errors_scraped.pop("uid-errs", None)


def test_a_new_operator_takes_the_first_counters_as_its_baseline() -> None:
    srv = EndpointServer("127.0.0.1", 0, lambda: "{}", Readiness())
    try:
        spec = parse_spec({**BASE, "observability": {"metricsPort": srv.port}})
        status = {"phase": "Running", "errors": [{"stepId": "errs.parse", "policy": "skip", "count": 9}]}
        pods = [PodInfo("wc-0", 0, phase="Running", ip="127.0.0.1")]
        obs = Observation("wc", "ns", "uid-new", 1, BASE, now=1000.0, status=status, pods=pods)
        handlers._step_errors("uid-new", spec, obs)
        assert obs.step_errors is not None and set(obs.step_errors.values()) <= {0.0}
    finally:
        srv.close()
        handlers.STATE.error_counters.pop("uid-new", None)
        handlers.STATE.errors_scraped.pop("uid-new", None)


def test_errors_column_in_wide_output() -> None:
    col = next(c for c in PRINTER_COLUMNS if c["name"] == "Errors")
    assert (col["jsonPath"], col["type"], col["priority"]) == (".status.errorCount", "integer", 1)
