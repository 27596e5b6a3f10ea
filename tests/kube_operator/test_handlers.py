"""The kopf layer: which handlers are registered, and the console script's settings.

Running the handlers needs a Kubernetes API server; that is the end-to-end
suite's job. Here: importing the module registers exactly the handlers the
operator relies on, for the right resource.
"""

from __future__ import annotations

import subprocess
import sys

import kopf

from headrace_operator.main import watch_scope


def test_handlers_register_for_dataflows() -> None:
    import headrace_operator.handlers as h

    registry = kopf.get_default_registry()
    resource = kopf.Resource("headrace.dev", "v1alpha1", "dataflows")
    changing = {
        hd.id
        for hd in registry._changing.get_all_handlers()
        if hd.selector is not None and hd.selector.check(resource)
    }
    assert {"changed", "deleted"} <= {i.split("/")[0] for i in changing}
    spawning = {hd.id for hd in registry._spawning.get_all_handlers()}
    assert any(i.startswith("tick") for i in spawning)
    watching = {hd.id for hd in registry._watching.get_all_handlers()}
    assert any(i.startswith("watched") for i in watching)
    activities = {hd.id for hd in registry._activities.get_all_handlers()}
    assert any(i.startswith("startup") for i in activities)
    assert h.TIMER_INTERVAL > 0


def test_watch_scope() -> None:
    assert watch_scope(None) == (True, [])
    assert watch_scope(" , ") == (True, [])
    assert watch_scope("a,*") == (True, [])
    assert watch_scope("a, b ,c") == (False, ["a", "b", "c"])


def test_console_script_help_runs_without_a_cluster() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "headrace_operator.main", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "WATCH_NAMESPACES" in out


def test_worker_service_account_only_where_it_exists() -> None:
    from headrace_operator.handlers import worker_service_account

    env = {"HEADRACE_WORKER_SERVICE_ACCOUNT": "w", "HEADRACE_OPERATOR_POD_NAMESPACE": "ops"}
    assert worker_service_account("ops", env) == "w"
    assert worker_service_account("other", env) == ""
    assert worker_service_account("x", {**env, "HEADRACE_OPERATOR_NAMESPACES": "x"}) == "w"
    assert worker_service_account("y", {**env, "HEADRACE_WORKER_SERVICE_ACCOUNT_NAMESPACES": "y"}) == "w"
    assert worker_service_account("ops", {**env, "HEADRACE_WORKER_SERVICE_ACCOUNT_NAMESPACES": "y"}) == ""
    assert worker_service_account("ops", {}) == ""
