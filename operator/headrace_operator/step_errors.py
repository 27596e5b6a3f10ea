"""Item errors of steps with an error policy: the workers' counters in, the Dataflow's counts out.

Placed in the flow: a worker counts every item a step's user function raised
on and its error policy (``on_error="skip"`` or ``"dead_letter"``) handled,
in ``headrace_step_errors_total{step_id,policy}`` (one series per worker).
While a Dataflow runs, the handlers scrape its pods (`_kube.scrape`, at
most every `PERIOD` seconds, or the autoscaler's sample of the same
reconcile) and keep each pod's last counters in memory; `increase` says
what the counters grew by since, and `plan` adds that to ``status.errors``
(`record`): one entry per step and policy, summed over the Dataflow's life,
across pod restarts, rescales and upgrades, with the total in
``status.errorCount`` (the ``Errors`` column of ``kubectl get df -o wide``).

The counts are what the operator saw: errors counted after a pod's last
scrape and before it stopped, or between an operator's last look and its
restart (a new operator takes the counters it first sees as its baseline
when status already has counts), are not added. The workers' own metric
is the exact record (the chart's dashboard and alert read it).

>>> grown = increase({}, {"wc-0": (0, {("wc.parse", "skip"): 2.0})})
>>> st = DataflowStatus()
>>> record(st, grown, 0.0)
>>> [(e.step_id, e.policy, e.count) for e in st.errors], st.error_count
([('wc.parse', 'skip', 2)], 2)
"""

from __future__ import annotations

from collections.abc import Mapping

from headrace_operator.status import DataflowStatus, StepErrors, iso

__all__ = ["PERIOD", "Counters", "Key", "increase", "record", "remember"]

PERIOD = 10.0
"""Seconds between scrapes of a running Dataflow's pods for their error counters."""

Key = tuple[str, str]
"""``(step_id, policy)``."""

Counters = tuple[int, dict[Key, float]]
"""A pod's container restart count and its error counters (summed over its workers) when scraped."""


def increase(before: Mapping[str, Counters], now: Mapping[str, Counters]) -> dict[Key, float]:
    """What the error counters of the pods in ``now`` grew by since ``before``, per step and policy.

    A pod not seen before, or restarted since (its restart count changed),
    counts whole: its counters started from zero. A counter that dropped
    restarted from zero too. Every key of ``now`` is in the result, with 0
    if it did not grow, so steps with a policy show before their first error.

    >>> before = {"wc-0": (0, {("s", "skip"): 5.0}), "wc-1": (0, {("s", "skip"): 1.0})}
    >>> increase(before, {"wc-0": (0, {("s", "skip"): 7.0}), "wc-1": (1, {("s", "skip"): 1.0})})
    {('s', 'skip'): 3.0}
    >>> increase(before, {"wc-0": (0, {("s", "skip"): 2.0, ("d", "dead_letter"): 0.0})})
    {('s', 'skip'): 2.0, ('d', 'dead_letter'): 0.0}
    """
    out: dict[Key, float] = {}
    for pod, (restarts, counts) in now.items():
        seen = before.get(pod)
        for key, value in counts.items():
            if seen is None or seen[0] != restarts:
                grown = value
            else:
                grown = value - seen[1].get(key, 0.0)
                if grown < 0:
                    grown = value
            out[key] = out.get(key, 0.0) + grown
    return out


def remember(before: Mapping[str, Counters], now: Mapping[str, Counters]) -> dict[str, Counters]:
    """The counters to compare the next scrape with: a pod that did not answer keeps its last ones.

    >>> remember({"wc-0": (0, {}), "wc-1": (2, {})}, {"wc-0": (1, {("s", "skip"): 1.0})})
    {'wc-0': (1, {('s', 'skip'): 1.0}), 'wc-1': (2, {})}
    """
    return {**before, **now}


def record(st: DataflowStatus, grown: Mapping[Key, float] | None, now: float) -> None:
    """Add what the counters grew by to ``st.errors`` (sorted by step and policy) and ``st.error_count``.

    ``None`` (nothing scraped) leaves the status as it is.

    >>> st = DataflowStatus.read({"errors": [{"stepId": "s", "policy": "skip", "count": 4}]})
    >>> record(st, {("s", "skip"): 1.0, ("d", "dead_letter"): 0.0}, 0.0)
    >>> [(e.step_id, e.count, e.last_seen) for e in st.errors], st.error_count
    ([('d', 0, None), ('s', 5, '1970-01-01T00:00:00Z')], 5)
    """
    if grown is None:
        return
    entries = {(e.step_id, e.policy): e for e in st.errors or []}
    for (step_id, policy), value in grown.items():
        entry = entries.setdefault((step_id, policy), StepErrors(step_id=step_id, policy=policy))
        n = round(value)
        if n > 0:
            entry.count += n
            entry.last_seen = iso(now)
    if not entries:
        return
    st.errors = [entries[k] for k in sorted(entries)]
    st.error_count = sum(e.count for e in st.errors)
