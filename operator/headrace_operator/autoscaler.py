"""The built-in autoscaler: worker metrics in, a replica count and its reasons out.

The algorithm (the one Flink's autoscaler proved), per Dataflow:

1. From each pod's ``/metrics``: utilization = busy seconds per second per
   worker (``headrace_worker_busy_seconds_total``), input rate = items the
   sources emit per second (``item_out_count_total`` of the input steps),
   backlog = ``headrace_source_lag`` and its growth per second. All rates
   are averaged over the metrics window (`aggregate`).
2. True processing rate = input rate / utilization: what the current
   workers could do at 100 % busy. Arrival rate = input rate + backlog growth.
3. Needed rate = arrival rate / target utilization + backlog / catch-up time.
4. New replicas = ceil(current x needed / true rate); then limited to
   ``current x (1 + maxScaleUpFactor)`` and ``current x (1 - maxScaleDownFactor)``,
   clamped to [minReplicas, maxReplicas] (and to partitions / workersPerProcess),
   and aligned: the smallest count at or above it whose workers divide the
   partitions evenly, if one is within reach.
5. Dead band: nothing changes while utilization is within target +- boundary
   and the backlog does not grow.

`evaluate` wraps `recommend` with what makes it safe to act: a full metrics
window, stabilization after restarts, delayed and merged scale-downs, and
the modes off / recommend / apply.

>>> stats = WindowStats(utilization=0.95, input_rate=900.0, lag=1000.0, lag_growth=50.0,
...                     coverage=900.0, workers=2)
>>> rec = recommend(2, stats, Params(), workers_per_process=1, partitions=256)
>>> rec.replicas
4
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from headrace_operator.schema import NULL, from_json, to_json
from headrace_operator.spec import AutoscalerSpec
from headrace_operator.status import AutoscalerStatus, Decision, PendingScaleDown, iso, parse_iso

__all__ = [
    "Params",
    "PodSample",
    "Recommendation",
    "Sample",
    "WindowStats",
    "aggregate",
    "decide",
    "evaluate",
    "parse_metrics",
    "recommend",
]

_EPS = 1e-9
_IDLE = 0.001  # below this busy fraction a worker counts as idle


@dataclass(frozen=True)
class Params:
    """Autoscaler settings with durations in seconds (from `AutoscalerSpec`)."""

    min_replicas: int = 1
    max_replicas: int = 10
    target: float = 0.7
    boundary: float = 0.3
    metrics_window: float = 900.0
    evaluation_interval: float = 30.0
    stabilization: float = 300.0
    scale_down_delay: float = 3600.0
    max_up: float = 4.0
    max_down: float = 0.6
    catch_up: float = 1800.0
    align: bool = True

    @classmethod
    def from_spec(cls, a: AutoscalerSpec) -> Params:
        """Convert the spec's durations.

        >>> Params.from_spec(AutoscalerSpec()).scale_down_delay
        3600.0
        """
        return cls(
            min_replicas=a.min_replicas,
            max_replicas=a.max_replicas,
            target=a.target_utilization,
            boundary=a.utilization_boundary,
            metrics_window=a.metrics_window.seconds,
            evaluation_interval=a.evaluation_interval.seconds,
            stabilization=a.stabilization_window.seconds,
            scale_down_delay=a.scale_down_delay.seconds,
            max_up=a.max_scale_up_factor,
            max_down=a.max_scale_down_factor,
            catch_up=a.catch_up_duration.seconds,
            align=a.align_partitions,
        )


# ------------------------------------------------------------------ metrics


@dataclass
class PodSample:
    """Counter and gauge values scraped from one pod at one time."""

    busy: dict[str, float] = field(default_factory=dict)  # worker_index -> seconds
    idle: dict[str, float] = field(default_factory=dict)
    inputs: dict[tuple[str, str], float] = field(default_factory=dict)  # (step, worker) -> items
    lag: dict[tuple[str, str], float] = field(default_factory=dict)  # (step, partition) -> items
    snapshot_sum: float = 0.0
    snapshot_count: float = 0.0
    errors: dict[tuple[str, str], float] = field(default_factory=dict)  # (step, policy) -> items


@dataclass
class Sample:
    """All pods scraped at time ``t`` (seconds)."""

    t: float
    pods: dict[str, PodSample]


def parse_metrics(text: str) -> PodSample:
    """Pick the autoscaler's series out of a worker's Prometheus text.

    Input steps are those with a source-partition timing series
    (``inp_part_next_batch_duration_seconds``).

    >>> text = '''headrace_worker_busy_seconds_total{worker_index="0"} 12.5
    ... inp_part_next_batch_duration_seconds_count{step_id="f.inp",worker_index="0"} 7
    ... item_out_count_total{step_id="f.inp",worker_index="0"} 300
    ... item_out_count_total{step_id="f.map",worker_index="0"} 999
    ... headrace_source_lag{step_id="f.inp",partition="p0",worker_index="0"} 40
    ... '''
    >>> s = parse_metrics(text)
    >>> s.busy, s.inputs, s.lag
    ({'0': 12.5}, {('f.inp', '0'): 300.0}, {('f.inp', 'p0'): 40.0})

    It also picks the item errors of steps with an error policy, summed over
    the pod's workers (`step_errors`):

    >>> parse_metrics('''headrace_step_errors_total{step_id="f.parse",policy="skip",worker_index="0"} 2
    ... headrace_step_errors_total{step_id="f.parse",policy="skip",worker_index="1"} 1
    ... ''').errors
    {('f.parse', 'skip'): 3.0}
    """
    from prometheus_client.parser import text_string_to_metric_families

    out = PodSample()
    input_steps: set[str] = set()
    outs: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name, lab, value = s.name, s.labels, float(s.value)
            if math.isnan(value):
                continue
            wi = lab.get("worker_index", "")
            if name == "headrace_worker_busy_seconds_total":
                out.busy[wi] = value
            elif name == "headrace_worker_idle_seconds_total":
                out.idle[wi] = value
            elif name == "inp_part_next_batch_duration_seconds_count":
                input_steps.add(lab.get("step_id", ""))
            elif name == "item_out_count_total":
                outs[(lab.get("step_id", ""), wi)] = value
            elif name == "headrace_source_lag":
                key = (lab.get("step_id", ""), lab.get("partition", ""))
                out.lag[key] = out.lag.get(key, 0.0) + value
            elif name == "snapshot_duration_seconds_sum":
                out.snapshot_sum += value
            elif name == "snapshot_duration_seconds_count":
                out.snapshot_count += value
            elif name == "headrace_step_errors_total":
                key = (lab.get("step_id", ""), lab.get("policy", ""))
                out.errors[key] = out.errors.get(key, 0.0) + value
    out.inputs = {k: v for k, v in outs.items() if k[0] in input_steps}
    return out


@dataclass(frozen=True)
class WindowStats:
    """Rates over the metrics window."""

    utilization: float  # mean busy fraction per worker, 0..1
    input_rate: float  # items/s read by the sources
    lag: float  # items not yet read, at the window's end
    lag_growth: float  # items/s
    coverage: float  # seconds between the first and last sample
    workers: int
    snapshot_duration: float = 0.0  # mean seconds per worker snapshot


def _increase(values: list[float | None]) -> float:
    """Counter increase over consecutive values; a drop is a restart from zero."""
    total = 0.0
    prev: float | None = None
    for v in values:
        if v is None:
            prev = None
            continue
        if prev is not None:
            total += v - prev if v >= prev else v
        prev = v
    return total


def sample_period(window: float, evaluation_interval: float) -> float:
    """Seconds between scrapes of the workers: often enough for six samples per window.

    >>> sample_period(300, 30), sample_period(30, 10), sample_period(3, 10)
    (30, 5.0, 1.0)
    """
    return max(1.0, min(evaluation_interval, window / 6))


def aggregate(samples: Iterable[Sample], window: float, now: float) -> WindowStats | None:
    """Window rates from scraped samples; ``None`` with fewer than two samples in it.

    >>> a = Sample(0.0, {"p0": PodSample(busy={"0": 10.0}, inputs={("i", "0"): 0.0})})
    >>> b = Sample(60.0, {"p0": PodSample(busy={"0": 40.0}, inputs={("i", "0"): 600.0})})
    >>> st = aggregate([a, b], window=300, now=60.0)
    >>> st.utilization, st.input_rate, st.coverage
    (0.5, 10.0, 60.0)
    """
    ordered = sorted(samples, key=lambda s: s.t)
    if not ordered:
        return None
    # A sample taken during this evaluation may carry a time just after ``now``.
    start = max(now, ordered[-1].t) - window + _EPS
    # The newest sample at or before the window's start is its baseline, so a
    # window sampled every few seconds covers all of it, not one period less.
    base = [s for s in ordered if s.t <= start][-1:]
    inside = base + [s for s in ordered if s.t > start]
    if len(inside) < 2:
        return None
    first, last = inside[0], inside[-1]
    dt = last.t - first.t
    if dt <= 0:
        return None
    busy_keys = {(p, w) for s in inside for p, ps in s.pods.items() for w in ps.busy}
    in_keys = {(p, k) for s in inside for p, ps in s.pods.items() for k in ps.inputs}

    def series(get: Any, keys: set[Any]) -> float:
        return sum(_increase([get(s, k) for s in inside]) for k in keys)

    def busy_of(s: Sample, k: tuple[str, str]) -> float | None:
        ps = s.pods.get(k[0])
        return None if ps is None else ps.busy.get(k[1])

    def input_of(s: Sample, k: tuple[str, Any]) -> float | None:
        ps = s.pods.get(k[0])
        return None if ps is None else ps.inputs.get(k[1])

    workers = len({k for k in busy_keys if k[0] in last.pods and k[1] in last.pods[k[0]].busy})
    busy = series(busy_of, busy_keys)
    util = busy / (dt * workers) if workers else 0.0
    lag_first = sum(sum(ps.lag.values()) for ps in first.pods.values())
    lag_last = sum(sum(ps.lag.values()) for ps in last.pods.values())
    snap_sum = sum(_increase([_snap(s, p, "sum") for s in inside]) for p in last.pods)
    snap_cnt = sum(_increase([_snap(s, p, "count") for s in inside]) for p in last.pods)
    return WindowStats(
        utilization=min(1.0, max(0.0, util)),
        input_rate=series(input_of, in_keys) / dt,
        lag=lag_last,
        lag_growth=(lag_last - lag_first) / dt,
        coverage=dt,
        workers=workers,
        snapshot_duration=snap_sum / snap_cnt if snap_cnt else 0.0,
    )


def _snap(s: Sample, pod: str, what: str) -> float | None:
    ps = s.pods.get(pod)
    if ps is None:
        return None
    return ps.snapshot_sum if what == "sum" else ps.snapshot_count


# ------------------------------------------------------------------ decision


@dataclass(frozen=True)
class Recommendation:
    """What the algorithm recommends, and the numbers behind it."""

    replicas: int
    reason: str
    arrival_rate: float = 0.0
    true_rate: float = 0.0
    needed_rate: float = 0.0
    in_dead_band: bool = False


def bounds(p: Params, workers_per_process: int, partitions: int) -> tuple[int, int]:
    """Allowed replica range: min/max replicas, and every worker owning a key group.

    >>> bounds(Params(min_replicas=2, max_replicas=100), 4, 64)
    (2, 16)
    """
    hi = max(1, min(p.max_replicas, partitions // workers_per_process))
    lo = min(max(1, p.min_replicas), hi)
    return lo, hi


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)


def _floor(x: float) -> int:
    return math.floor(x + 1e-9)


def _aligned(lo: int, hi: int, wpp: int, partitions: int) -> int | None:
    for r in range(lo, hi + 1):
        if partitions % (r * wpp) == 0:
            return r
    return None


def _limit(
    current: int, raw: int, why: str, p: Params, lohi: tuple[int, int], wpp: int, partitions: int
) -> tuple[int, str]:
    """``raw`` limited by the max scale factors, clamped to the bounds, aligned; and why.

    >>> _limit(4, 30, "need more", Params(), (1, 10), 1, 256)[1]
    'need more; limited to 20 by the max scale up factor; clamped to 10 by the bounds [1, 10]'
    """
    lo, hi = lohi
    up_limit = _floor(current * (1 + p.max_up))
    down_limit = _ceil(current * (1 - p.max_down))
    new = min(max(raw, down_limit), up_limit)
    if new != raw:
        why += f"; limited to {new} by the max scale {'up' if raw > new else 'down'} factor"
    clamped = min(max(new, lo), hi)
    if clamped != new:
        why += f"; clamped to {clamped} by the bounds [{lo}, {hi}]"
    new = clamped
    if p.align and new != current:
        upper = min(hi, max(up_limit, new)) if new > current else min(max(current, lo), hi)
        aligned = _aligned(new, upper, wpp, partitions)
        if aligned is not None and aligned != new:
            why += f"; aligned to {aligned} so {partitions} partitions divide evenly"
            new = aligned
    return new, why


def recommend(
    current: int, stats: WindowStats, p: Params, workers_per_process: int, partitions: int
) -> Recommendation:
    """The replica count the algorithm wants (no delays, no modes: see `evaluate`).

    >>> calm = WindowStats(utilization=0.6, input_rate=100.0, lag=0.0, lag_growth=0.0,
    ...                    coverage=900.0, workers=4)
    >>> recommend(4, calm, Params(), 1, 256).reason
    'utilization 60% is within 70% +- 30% and the backlog is not growing'
    """
    lo, hi = bounds(p, workers_per_process, partitions)
    u = stats.utilization
    lag_growing = stats.lag_growth > _EPS and stats.lag > 0
    below = u < p.target - p.boundary - _EPS
    above = u > p.target + p.boundary + _EPS
    if not below and not above and not lag_growing:
        target = min(max(current, lo), hi)
        why = (
            f"utilization {u:.0%} is within {p.target:.0%} +- {p.boundary:.0%} and the backlog is not growing"
        )
        if target != current:
            why += f"; moved into the bounds [{lo}, {hi}]"
        return Recommendation(target, why, in_dead_band=True)
    arrival = max(0.0, stats.input_rate + stats.lag_growth)
    needed = arrival / p.target + stats.lag / p.catch_up
    if u < _IDLE:
        raw, true_rate = lo, math.inf
        why = f"workers are idle (utilization {u:.1%}) -> {raw}"
    elif stats.input_rate <= _EPS:
        return Recommendation(
            min(max(current, lo), hi),
            f"workers are {u:.0%} busy but the sources read nothing: can't size from the input rate",
            arrival_rate=arrival,
        )
    else:
        true_rate = stats.input_rate / u
        raw = max(1, _ceil(current * needed / true_rate))
        why = (
            f"utilization {u:.0%} (target {p.target:.0%}), input {stats.input_rate:.1f}/s, "
            f"arrival {arrival:.1f}/s, backlog {stats.lag:.0f} ({stats.lag_growth:+.1f}/s): "
            f"need {needed:.1f}/s, capacity {true_rate:.1f}/s at 100% busy -> {raw}"
        )
    if lag_growing and raw < current:
        return Recommendation(
            min(max(current, lo), hi),
            f"backlog grows ({stats.lag_growth:+.1f}/s) while workers are "
            f"{u:.0%} busy: the bottleneck is not worker capacity (source, "
            "sink or key skew)",
            arrival_rate=arrival,
            true_rate=0.0 if math.isinf(true_rate) else true_rate,
            needed_rate=needed,
        )
    if not lag_growing and below and raw > current:
        raw = current
        why += f"; workers are only {u:.0%} busy: not scaling up"
    if not lag_growing and above and raw < current:
        raw = current
        why += f"; workers are {u:.0%} busy: not scaling down"
    new, why = _limit(current, raw, why, p, (lo, hi), workers_per_process, partitions)
    return Recommendation(
        new,
        why,
        arrival_rate=arrival,
        true_rate=0.0 if math.isinf(true_rate) else true_rate,
        needed_rate=needed,
    )


def _blocked_by(
    stats: WindowStats | None, params: Params, now: float, started_at: float | None, busy_reason: str
) -> str:
    """Why no decision can be made now ('' when one can)."""
    if busy_reason:
        return busy_reason
    if started_at is not None and now - started_at < params.stabilization:
        left = params.stabilization - (now - started_at)
        return f"stabilizing after the last (re)start: {left:.0f}s left"
    coverage = 0.0 if stats is None else stats.coverage
    if coverage < 0.9 * params.metrics_window:
        return f"collecting metrics: {coverage:.0f}s of the {params.metrics_window:.0f}s window"
    return ""


def _scale_down(
    decision: Decision, status: AutoscalerStatus, wanted: int, current: int, params: Params, now: float
) -> int | None:
    """Delay a scale-down by ``scaleDownDelay``, merging requests; the count to apply when due."""
    pending = status.pending_scale_down
    if (
        isinstance(pending, PendingScaleDown)
        and parse_iso(pending.since) is not None
        and pending.replicas < current
    ):
        target = max(pending.replicas, wanted)
        since = parse_iso(pending.since) or now
    else:
        target, since = wanted, now
    decision.recommended_replicas = target
    if now - since + _EPS >= params.scale_down_delay:
        status.pending_scale_down = NULL
        return target
    status.pending_scale_down = PendingScaleDown(replicas=target, since=iso(since))
    decision.blocked = (
        f"scale-down to {target} delayed until {iso(since + params.scale_down_delay)} "
        f"(scaleDownDelay {params.scale_down_delay:.0f}s; requests merge)"
    )
    return None


def _act(
    decision: Decision, status: AutoscalerStatus, wanted: int, current: int, params: Params, now: float
) -> int | None:
    """Scale up at once, down only after the delays (`_scale_down`); the replicas to apply."""
    if wanted > current:
        decision.action = "scale-up"
        status.pending_scale_down = NULL
        return wanted
    if wanted < current:
        decision.action = "scale-down"
        return _scale_down(decision, status, wanted, current, params, now)
    status.pending_scale_down = NULL
    return None


def decide(
    *,
    prev: AutoscalerStatus | None,
    mode: str,
    current: int,
    stats: WindowStats | None,
    params: Params,
    workers_per_process: int,
    partitions: int,
    now: float,
    started_at: float | None,
    busy_reason: str = "",
) -> tuple[Decision | None, AutoscalerStatus, int | None]:
    """One evaluation: ``(decision, new autoscaler status, replicas to apply or None)``.

    ``busy_reason`` non-empty (a transition in progress, pods not ready)
    blocks any decision. The decision is what status
    ``autoscaler.lastEvaluation`` shows.

    >>> d, st, apply = decide(prev=None, mode="apply", current=2, stats=None,
    ...                       params=Params(), workers_per_process=1, partitions=256,
    ...                       now=1000.0, started_at=0.0)
    >>> d.blocked, apply
    ('collecting metrics: 0s of the 900s window', None)
    """
    if mode == "off":
        return None, AutoscalerStatus(mode="off"), None
    status = dataclasses.replace(prev) if prev is not None else AutoscalerStatus()
    status.mode = mode
    decision = Decision(
        time=iso(now), current_replicas=current, recommended_replicas=current, action="none", applied=False
    )
    if stats is not None:
        decision.utilization = round(stats.utilization, 4)
        decision.input_rate = round(stats.input_rate, 3)
        decision.lag = round(stats.lag, 1)
        decision.lag_growth = round(stats.lag_growth, 3)
        status.metrics_coverage = round(stats.coverage, 1)
    blocked = _blocked_by(stats, params, now, started_at, busy_reason)
    if blocked:
        decision.blocked = blocked
        decision.reason = "no evaluation"
        status.last_evaluation = decision
        return decision, status, None
    assert stats is not None
    rec = recommend(current, stats, params, workers_per_process, partitions)
    decision.recommended_replicas = rec.replicas
    decision.reason = rec.reason
    decision.arrival_rate = round(rec.arrival_rate, 3)
    decision.true_processing_rate = round(rec.true_rate, 3)
    decision.needed_rate = round(rec.needed_rate, 3)
    apply = _act(decision, status, rec.replicas, current, params, now)
    if apply is not None and mode != "apply":
        decision.blocked = "mode is recommend: not applied"
        apply = None
    decision.applied = apply is not None
    status.last_evaluation = decision
    if decision.action != "none":
        status.decisions = [*(status.decisions or []), decision][-3:]
    return decision, status, apply


def evaluate(
    *,
    prev: dict[str, Any] | None,
    mode: str,
    current: int,
    stats: WindowStats | None,
    params: Params,
    workers_per_process: int,
    partitions: int,
    now: float,
    started_at: float | None,
    busy_reason: str = "",
) -> tuple[dict[str, Any] | None, dict[str, Any], int | None]:
    """`decide` on the CRD's JSON: ``prev`` and the results as status ``autoscaler`` holds them.

    >>> d, st, apply = evaluate(prev=None, mode="apply", current=2, stats=None,
    ...                         params=Params(), workers_per_process=1, partitions=256,
    ...                         now=1000.0, started_at=0.0)
    >>> d["blocked"], st["lastEvaluation"] == d, apply
    ('collecting metrics: 0s of the 900s window', True, None)
    """
    decision, status, apply = decide(
        prev=None if prev is None else from_json(AutoscalerStatus, prev),
        mode=mode,
        current=current,
        stats=stats,
        params=params,
        workers_per_process=workers_per_process,
        partitions=partitions,
        now=now,
        started_at=started_at,
        busy_reason=busy_reason,
    )
    return (None if decision is None else to_json(decision)), to_json(status), apply
