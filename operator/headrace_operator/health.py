"""Health of a running Dataflow: crash loops, readiness, progress; restarts with backoff.

Placed in the flow: while the pods run the desired spec, `reconcile` asks
`check_health` why the Dataflow is unhealthy (it keeps the bookkeeping in
``status.health``), and `restart_unhealthy` then restarts all pods (a
coordinated stop and start, `transitions.stop`) after a growing delay, or
gives up after ``restartPolicy.maxRestarts`` in a row: the pods are then
stopped (`transitions.halt`) until the user acts.

>>> [backoff_delay(n, 10, 300, 2) for n in range(3)]
[10.0, 20.0, 40.0]
"""

from __future__ import annotations

from headrace_operator import transitions
from headrace_operator.observation import PodInfo
from headrace_operator.outcome import Ctx
from headrace_operator.spec import DataflowSpec
from headrace_operator.status import HealthStatus, StopReason, Transition, iso, parse_iso

__all__ = ["backoff_delay", "check_health", "restart_unhealthy"]


def backoff_delay(restarts: int, initial: float, maximum: float, multiplier: float) -> float:
    """Delay before operator restart number ``restarts + 1`` (Strimzi-style growth).

    >>> [backoff_delay(n, 10, 300, 2) for n in range(7)]
    [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    """
    return float(min(maximum, initial * multiplier ** max(0, restarts)))


def _bookkeeping(c: Ctx, spec: DataflowSpec, top: int, all_ready: bool) -> HealthStatus:
    """Move the restart-counting window and the healthy-since time forward."""
    h = c.st.health or HealthStatus()
    now = c.now
    window_start = parse_iso(h.window_start)
    base = h.restarts_at_window_start or 0
    if window_start is None or now - window_start > spec.health_check.restart_window.seconds:
        window_start, base = now, top
    base = min(base, top)  # pods were recreated: their counts restart from 0
    h.window_start, h.restarts_at_window_start = iso(window_start), base
    if all_ready:
        since = parse_iso(h.healthy_since) or now
        h.healthy_since = iso(since)
        if now - since >= spec.restart_policy.reset_after.seconds:
            h.consecutive_restarts = 0
    else:
        h.healthy_since = None
    c.st.health = h
    return h


def check_health(c: Ctx, spec: DataflowSpec, pods: list[PodInfo], all_ready: bool) -> str:
    """Update the health bookkeeping; return why the Dataflow is unhealthy ('' if healthy)."""
    hc = spec.health_check
    now = c.now
    top = max((p.restarts for p in pods), default=0)
    base = _bookkeeping(c, spec, top, all_ready).restarts_at_window_start or 0
    if not hc.enabled:
        return ""
    started = parse_iso(c.st.execution.started_at if c.st.execution is not None else None) or now
    if top - base >= hc.restart_threshold:
        return f"crash loop: pods restarted {top - base} times within {hc.restart_window}"
    if not all_ready and now - started > hc.ready_timeout.seconds:
        return f"not all pods Ready {now - started:.0f}s after the start (readyTimeout {hc.ready_timeout})"
    store = c.obs.store
    progress = hc.progress_timeout.seconds
    if (
        spec.recovery is not None
        and all_ready
        and store is not None
        and store.ok
        and now - started > progress
        and store.committed_at
        and now - store.committed_at > progress
    ):
        return (
            f"no snapshot committed for {now - store.committed_at:.0f}s (progressTimeout "
            f"{hc.progress_timeout}): the workers are stuck"
        )
    return ""


def restart_unhealthy(c: Ctx, spec: DataflowSpec, n: int, unhealthy: str) -> bool:
    """Restart all ``n`` pods when the backoff allows, or give up and stop them
    (True: a stop began)."""
    h = c.st.health or HealthStatus()
    rp = spec.restart_policy
    count = h.consecutive_restarts or 0
    if rp.max_restarts and count >= rp.max_restarts:
        store = c.obs.store
        transitions.halt(
            c,
            spec,
            StopReason.RESTART_LIMIT,
            f"gave up after {count} restart(s): {unhealthy}. The pods are stopped and the "
            "state kept: fix the cause, then change spec.restartNonce",
            epoch=store.epoch if store is not None and store.ok and store.exists else None,
        )
        return True

    def delay_of(k: int) -> float:
        b = rp.backoff
        return backoff_delay(k, b.initial_delay.seconds, b.max_delay.seconds, b.multiplier)

    delay = delay_of(count)
    last = parse_iso(h.last_restart)
    if last is not None and c.now - last < delay:
        c.degraded = ("Unhealthy", f"{unhealthy}; next restart in {delay - (c.now - last):.0f}s")
        c.p.requeue = min(c.p.requeue, max(1.0, delay - (c.now - last)))
        return False
    h.consecutive_restarts = count + 1
    h.last_restart = iso(c.now)
    transitions.stop(
        c,
        Transition.UNHEALTHY_RESTART,
        n,
        n,
        f"{unhealthy}: restarting all {n} pod(s) (restart {count + 1}; next "
        f"delay {delay_of(count + 1):.0f}s)",
    )
    c.st.health = h
    return True
