"""The autoscaler's maths: table-driven cases, properties, the window and the delays."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from headrace_operator.autoscaler import (
    Params,
    PodSample,
    Sample,
    WindowStats,
    aggregate,
    bounds,
    evaluate,
    parse_metrics,
    recommend,
)
from headrace_operator.status import iso


def ws(u: float, rate: float, lag: float = 0.0, growth: float = 0.0) -> WindowStats:
    return WindowStats(utilization=u, input_rate=rate, lag=lag, lag_growth=growth, coverage=900.0, workers=1)


# (name, current, stats, params, wpp, partitions, expected replicas, words in the reason)
CASES = [
    ("dead band", 4, ws(0.6, 100), Params(), 1, 256, 4, "within 70% +- 30%"),
    ("dead band upper edge", 4, ws(1.0, 100), Params(), 1, 256, 4, "within"),
    ("dead band lower edge", 4, ws(0.4, 100), Params(), 1, 256, 4, "within"),
    ("backlog growing scales up and aligns", 2, ws(0.95, 900, 1000, 50), Params(), 1, 256, 4, "aligned to 4"),
    (
        "low utilization scales down, limited by the factor",
        10,
        ws(0.2, 100),
        Params(),
        1,
        256,
        4,
        "max scale down factor",
    ),
    ("high utilization scales up", 2, ws(0.9, 90), Params(target=0.5, boundary=0.1), 1, 256, 4, "-> 4"),
    ("max bound", 8, ws(0.99, 100, 1e6, 1000), Params(), 1, 256, 10, "bounds [1, 10]"),
    ("partitions bound", 1, ws(0.99, 100, 1e6, 1000), Params(), 4, 12, 3, "bounds [1, 3]"),
    ("idle scales down by at most the factor", 5, ws(0.0, 0), Params(), 1, 256, 2, "idle"),
    ("idle at min stays", 1, ws(0.0, 0), Params(), 1, 256, 1, "idle"),
    (
        "growing backlog with idle workers: not a capacity problem",
        4,
        ws(0.1, 100, 100, 10),
        Params(),
        1,
        256,
        4,
        "bottleneck is not worker capacity",
    ),
    (
        "big stable backlog with idle workers: no scale-up",
        4,
        ws(0.2, 100, 1e6, 0),
        Params(),
        1,
        256,
        4,
        "not scaling up",
    ),
    (
        "saturated while draining: no scale-down",
        4,
        ws(0.9, 100, 10, -500),
        Params(target=0.5, boundary=0.1),
        1,
        256,
        4,
        "not scaling down",
    ),
    ("scale-down aligned up to a divisor", 6, ws(0.3, 100), Params(max_down=0.9), 1, 16, 4, "aligned to 4"),
    ("no divisor in reach: unaligned", 2, ws(0.99, 100, 1e5, 100), Params(), 1, 13, 7, "-> 7"),
    ("alignment off", 2, ws(0.95, 900, 1000, 50), Params(align=False), 1, 256, 3, "-> 3"),
    ("scale-up factor", 1, ws(0.99, 100, 1e6, 1000), Params(max_up=1.0), 1, 256, 2, "max scale up factor"),
    (
        "min bound lifts a low current",
        1,
        ws(0.6, 10),
        Params(min_replicas=2),
        1,
        256,
        2,
        "moved into the bounds",
    ),
    ("workers per process count in alignment", 2, ws(0.95, 900, 1000, 50), Params(), 2, 64, 4, ""),
    (
        "busy but nothing read",
        3,
        ws(0.5, 0.0),
        Params(target=0.9, boundary=0.1),
        1,
        256,
        3,
        "sources read nothing",
    ),
]


@pytest.mark.parametrize(
    ("name", "current", "stats", "params", "wpp", "parts", "want", "why"), CASES, ids=[c[0] for c in CASES]
)
def test_recommend_table(
    name: str, current: int, stats: WindowStats, params: Params, wpp: int, parts: int, want: int, why: str
) -> None:
    rec = recommend(current, stats, params, wpp, parts)
    assert rec.replicas == want, rec.reason
    assert why in rec.reason


def test_numbers_behind_a_recommendation() -> None:
    rec = recommend(2, ws(0.5, 100, 0, 0), Params(target=0.25, boundary=0.1), 1, 256)
    assert rec.true_rate == 200.0
    assert rec.arrival_rate == 100.0
    assert rec.needed_rate == 400.0
    assert rec.replicas == 4


# ------------------------------------------------------------------ properties

params_st = st.builds(
    Params,
    min_replicas=st.integers(1, 8),
    max_replicas=st.integers(1, 64),
    target=st.floats(0.1, 0.95),
    boundary=st.floats(0.0, 0.5),
    max_up=st.floats(0.0, 10.0),
    max_down=st.floats(0.0, 0.95),
    catch_up=st.floats(10.0, 10_000.0),
    align=st.booleans(),
)
parts_st = st.sampled_from([1, 7, 12, 16, 60, 64, 100, 256, 1000])


@st.composite
def situation(draw: st.DrawFn) -> tuple[int, Params, int, int]:
    p = draw(params_st)
    assume(p.min_replicas <= p.max_replicas)
    wpp = draw(st.integers(1, 4))
    parts = draw(parts_st)
    assume(wpp <= parts)  # validation rejects specs where a worker would own no key group
    lo, hi = bounds(p, wpp, parts)
    current = draw(st.integers(lo, hi))
    return current, p, wpp, parts


stats_st = st.builds(
    ws, u=st.floats(0.0, 1.0), rate=st.floats(0.0, 1e6), lag=st.floats(0.0, 1e7), growth=st.floats(-1e4, 1e4)
)


@settings(max_examples=300, deadline=None)
@given(situation(), stats_st)
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_bounds_are_respected(sit: tuple[int, Params, int, int], stats: WindowStats) -> None:
    current, p, wpp, parts = sit
    lo, hi = bounds(p, wpp, parts)
    r = recommend(current, stats, p, wpp, parts).replicas
    assert lo <= r <= hi
    assert r * wpp <= parts


@settings(max_examples=300, deadline=None)
@given(situation(), st.floats(0.0, 1.0), st.floats(0.0, 1e6), st.floats(0.0, 1e7), st.floats(-1e4, 0.0))
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_never_changes_inside_the_dead_band(
    sit: tuple[int, Params, int, int], f: float, rate: float, lag: float, growth: float
) -> None:
    current, p, wpp, parts = sit
    # A utilisation in [0, 1] inside the band, drawn there (drawing it from
    # all of [0, 1] and discarding the rest tripped Hypothesis's
    # filter_too_much health check when the band is narrow).
    lo, hi = max(0.0, p.target - p.boundary), min(1.0, p.target + p.boundary)
    u = min(max(lo + f * (hi - lo), lo), hi)
    assert p.target - p.boundary <= u <= p.target + p.boundary
    rec = recommend(current, ws(u, rate, lag, growth), p, wpp, parts)
    assert rec.replicas == current and rec.in_dead_band


@settings(max_examples=300, deadline=None)
@given(
    situation(),
    st.floats(1.0, 1e5),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1e6),
    st.floats(-1e3, 1e3),
)
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_monotonic_in_load(
    sit: tuple[int, Params, int, int], true_rate: float, f1: float, f2: float, lag: float, growth: float
) -> None:
    """More input at the same per-worker capacity never asks for fewer replicas."""
    current, p, wpp, parts = sit
    x1, x2 = sorted((f1 * true_rate, f2 * true_rate))

    def at(x: float) -> int:
        return recommend(current, ws(x / true_rate, x, lag, growth), p, wpp, parts).replicas

    assert at(x1) <= at(x2)


@settings(max_examples=300, deadline=None)
@given(situation(), stats_st)
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_scale_down_respects_min_and_factor(sit: tuple[int, Params, int, int], stats: WindowStats) -> None:
    current, p, wpp, parts = sit
    r = recommend(current, stats, p, wpp, parts).replicas
    if r < current:
        lo, _hi = bounds(p, wpp, parts)
        assert r >= lo
        assert r >= current * (1 - p.max_down) - 1e-6


@settings(max_examples=300, deadline=None)
@given(situation(), stats_st)
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_scale_up_respects_factor_when_bounds_allow(
    sit: tuple[int, Params, int, int], stats: WindowStats
) -> None:
    current, p, wpp, parts = sit
    r = recommend(current, stats, p, wpp, parts).replicas
    lo, _ = bounds(p, wpp, parts)
    if r > current and r > lo:
        assert r <= math.floor(current * (1 + p.max_up) + 1e-9)


@settings(max_examples=300, deadline=None)
@given(situation(), stats_st)
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_alignment_divides_partitions_when_possible(
    sit: tuple[int, Params, int, int], stats: WindowStats
) -> None:
    current, p, wpp, parts = sit
    assume(p.align)
    r = recommend(current, stats, p, wpp, parts).replicas
    if r == current or parts % (r * wpp) == 0:
        return
    _lo, hi = bounds(p, wpp, parts)
    upper = min(hi, max(math.floor(current * (1 + p.max_up) + 1e-9), r)) if r > current else current
    assert not any(parts % (c * wpp) == 0 for c in range(r, upper + 1)), (
        f"{r} is not aligned but a divisor exists in [{r}, {upper}]"
    )


# ------------------------------------------------------------------ evaluate

FAST = Params(metrics_window=60, stabilization=30, scale_down_delay=600, evaluation_interval=10)
HOT = WindowStats(utilization=1.0, input_rate=100, lag=1000, lag_growth=10, coverage=60, workers=2)
COLD = WindowStats(utilization=0.1, input_rate=10, lag=0, lag_growth=0, coverage=60, workers=8)


def ev(
    prev: dict | None,
    stats: WindowStats | None,
    now: float,
    current: int = 8,
    mode: str = "apply",
    started: float = 0.0,
    busy: str = "",
) -> tuple:
    return evaluate(
        prev=prev,
        mode=mode,
        current=current,
        stats=stats,
        params=FAST,
        workers_per_process=1,
        partitions=256,
        now=now,
        started_at=started,
        busy_reason=busy,
    )


def test_off_mode_evaluates_nothing() -> None:
    d, status, apply = ev(None, HOT, 1000, mode="off")
    assert (d, status, apply) == (None, {"mode": "off"}, None)


@pytest.mark.parametrize(
    ("stats", "now", "started", "busy", "words"),
    [
        (HOT, 1000, 990, "", "stabilizing after the last (re)start: 20s left"),
        (None, 1000, 0, "", "collecting metrics: 0s of the 60s window"),
        (WindowStats(1.0, 1, 0, 0, 20, 1), 1000, 0, "", "collecting metrics: 20s"),
        (HOT, 1000, 0, "a rescale is in progress", "a rescale is in progress"),
    ],
)
def test_blocked_evaluations_say_why(
    stats: WindowStats | None, now: float, started: float, busy: str, words: str
) -> None:
    d, status, apply = ev(None, stats, now, started=started, busy=busy)
    assert apply is None and d["blocked"].startswith(words)
    assert status["lastEvaluation"] == d


def test_scale_up_applies_at_once() -> None:
    d, status, apply = ev(None, HOT, 1000, current=2)
    assert d["action"] == "scale-up" and d["applied"] and apply == d["recommendedReplicas"] > 2
    assert status["decisions"] == [d]


def test_recommend_mode_reports_without_applying() -> None:
    d, _status, apply = ev(None, HOT, 1000, current=2, mode="recommend")
    assert apply is None and not d["applied"] and d["action"] == "scale-up"
    assert d["blocked"] == "mode is recommend: not applied"


def test_scale_down_is_delayed_merged_and_then_applied() -> None:
    d, status, apply = ev(None, COLD, 1000)
    assert d["action"] == "scale-down" and apply is None
    assert status["pendingScaleDown"] == {"replicas": d["recommendedReplicas"], "since": iso(1000)}
    assert "delayed until" in d["blocked"]
    first = d["recommendedReplicas"]
    # A more aggressive request merges into the pending one (the larger count wins).
    colder = WindowStats(0.01, 1, 0, 0, 60, 8)
    d, status, apply = ev(status, colder, 1300)
    assert apply is None and status["pendingScaleDown"]["since"] == iso(1000)
    assert d["recommendedReplicas"] == first
    d, status, apply = ev(status, colder, 1600)
    assert apply == first and d["applied"]
    assert status["pendingScaleDown"] is None


def test_a_calm_evaluation_cancels_a_pending_scale_down() -> None:
    _d, status, _ = ev(None, COLD, 1000)
    calm = WindowStats(0.7, 50, 0, 0, 60, 8)
    d, status, apply = ev(status, calm, 1100)
    assert d["action"] == "none" and status["pendingScaleDown"] is None and apply is None
    d, status, apply = ev(status, COLD, 1700)
    assert apply is None  # the delay starts again


def test_decision_history_keeps_three() -> None:
    status = None
    for i in range(5):
        _d, status, _ = ev(status, HOT, 1000 + i, current=2)
    assert status is not None and len(status["decisions"]) == 3


# ------------------------------------------------------------------ window


def sample(t: float, busy: float, items: float, lag: float = 0.0, pod: str = "p0", wi: str = "0") -> Sample:
    return Sample(t, {pod: PodSample(busy={wi: busy}, inputs={("inp", wi): items}, lag={("inp", "0"): lag})})


def test_aggregate_rates_over_the_window() -> None:
    samples = [sample(0, 0, 0, 100), sample(30, 15, 300, 130), sample(60, 30, 600, 160)]
    s = aggregate(samples, 60, 60)
    assert s is not None
    assert (s.utilization, s.input_rate, s.lag, s.lag_growth, s.coverage, s.workers) == (
        0.5,
        10.0,
        160.0,
        1.0,
        60.0,
        1,
    )


def test_aggregate_ignores_samples_outside_the_window() -> None:
    samples = [sample(0, 0, 0), sample(100, 100, 0), sample(160, 130, 600)]
    s = aggregate(samples, 60, 160)
    assert s is not None and s.coverage == 60 and s.utilization == 0.5 and s.input_rate == 10


def test_aggregate_takes_the_last_sample_before_the_window_as_its_baseline() -> None:
    # Scraped every 40 s with a 60 s window: the window [100, 160] starts at the sample of t=90.
    samples = [
        sample(10, 0, 0),
        sample(50, 0, 0),
        sample(90, 10, 0),
        sample(130, 40, 400),
        sample(160, 45, 700),
    ]
    s = aggregate(samples, 60, 160)
    assert s is not None and s.coverage == 70 and s.utilization == 0.5 and s.input_rate == 10


def test_aggregate_counts_a_sample_taken_just_after_now() -> None:
    # The operator reads the clock, then scrapes: the newest sample is a little later than `now`.
    samples = [sample(0, 0, 0), sample(30, 15, 300), sample(60.3, 30.15, 603)]
    s = aggregate(samples, 60, 60.0)
    assert s is not None and s.coverage == 60.3 and s.input_rate == 10


def test_aggregate_survives_counter_resets() -> None:
    samples = [sample(0, 100, 1000), sample(30, 115, 1300), sample(60, 15, 300)]
    s = aggregate(samples, 60, 60)
    assert s is not None and s.utilization == 0.5 and s.input_rate == 10.0


def test_aggregate_sums_pods_and_workers() -> None:
    a = Sample(0, {"p0": PodSample(busy={"0": 0, "1": 0}), "p1": PodSample(busy={"2": 0})})
    b = Sample(10, {"p0": PodSample(busy={"0": 10, "1": 0}), "p1": PodSample(busy={"2": 5})})
    s = aggregate([a, b], 60, 10)
    assert s is not None and s.workers == 3 and s.utilization == 0.5


def test_aggregate_needs_two_samples() -> None:
    assert aggregate([sample(0, 0, 0)], 60, 0) is None
    assert aggregate([], 60, 0) is None


def test_parse_metrics_of_a_real_worker() -> None:
    """Scrape the runtime's own registry after a real run: the series the autoscaler reads."""
    from prometheus_client import REGISTRY, generate_latest

    import headrace.operators as op
    from headrace.dataflow import Dataflow
    from headrace.testing import TestingSink, TestingSource, run_main

    flow = Dataflow("autoscaler_probe")
    out: list[int] = []
    scraped: list[str] = []

    def scrape_at_end(x: int) -> int:
        # Scrape from inside the run (a finished run removes its series).
        if x == 49:
            scraped.append(generate_latest(REGISTRY).decode())
        return x

    nums = op.input("numbers", flow, TestingSource(list(range(50)), batch_size=10))
    nums = op.map("double", nums, lambda x: x * 2)
    op.output("out", op.map("probe", nums, lambda x: scrape_at_end(x // 2) * 2), TestingSink(out))
    run_main(flow)
    assert len(out) == 50
    s = parse_metrics(scraped[0])
    inputs = {step: v for (step, _wi), v in s.inputs.items()}
    assert inputs.get("autoscaler_probe.numbers") == 50.0
    assert not any("double" in step for step in inputs)
    assert s.busy  # every worker reports busy seconds
