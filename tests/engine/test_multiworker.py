"""Multi-worker runs give the same results as one worker.

Each scenario builds a dataflow whose outputs land in named lists; it is run
once with `run_main` (the reference) and then with `cluster_main` on 1, 2
and 3 worker threads and several epoch intervals. Outputs are compared as
multisets where the semantics leave the order open, and per key in order
where they do not (`stateful_map`, `collect`).
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import headrace.operators as op
from headrace.dataflow import Dataflow
from headrace.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from headrace.outputs import FixedPartitionedSink, StatefulSinkPartition
from headrace.testing import TestingSink, TestingSource, cluster_main, run_main
from tests.support.errors import causes

pytestmark = pytest.mark.timeout(60)

WORKERS = [1, 2, 3]
INTERVALS = [
    pytest.param(timedelta(0), id="epoch0"),
    pytest.param(timedelta(milliseconds=1), id="epoch1ms"),
    pytest.param(None, id="epoch_default"),
]

Outputs = dict[str, list[Any]]
Scenario = Callable[[Dataflow], Outputs]

WORDS = "the quick brown fox jumps over the lazy dog and the dog sleeps".split()
LINES = [" ".join(WORDS[i % 7 : i % 7 + 1 + i % 5]) for i in range(60)]
KEYED = [(f"k{i % 7}", i) for i in range(120)]


def _sink(outs: Outputs, name: str) -> TestingSink[Any]:
    outs[name] = []
    return TestingSink(outs[name])


def wordcount(flow: Dataflow) -> Outputs:
    outs: Outputs = {}
    lines = op.input("lines", flow, TestingSource(LINES, batch_size=4))
    words = op.flat_map("split", lines, str.split)
    op.output("out_counts", op.count_final("count", words, lambda w: w), _sink(outs, "counts"))
    return outs


def running_sums(flow: Dataflow) -> Outputs:
    outs: Outputs = {}
    s = op.input("inp", flow, TestingSource(KEYED, batch_size=5))

    def add(state: int | None, v: int) -> tuple[int, int]:
        total = (state or 0) + v
        return total, total

    op.output("out_sums", op.stateful_map("sum", s, add), _sink(outs, "sums"))
    return outs


def joins(flow: Dataflow) -> Outputs:
    outs: Outputs = {}
    left = op.input("left", flow, TestingSource([(f"u{i % 9}", i) for i in range(40)], batch_size=3))
    right = op.input("right", flow, TestingSource([(f"u{i % 11}", f"r{i}") for i in range(30)], batch_size=2))
    prod = op.join("join_prod", left, right, insert_mode="product", emit_mode="final")
    op.output("out_prod", prod, _sink(outs, "prod"))
    # One value per side per key: `complete` emits each pair exactly once.
    a = op.input("a", flow, TestingSource([(f"x{i}", i) for i in range(25)], batch_size=4))
    b = op.input("b", flow, TestingSource([(f"x{i}", -i) for i in range(25)], batch_size=3))
    op.output("out_complete", op.join("join_complete", a, b), _sink(outs, "complete"))
    return outs


def collects(flow: Dataflow) -> Outputs:
    outs: Outputs = {}
    s = op.input("inp", flow, TestingSource(KEYED, batch_size=6))
    op.output("out_lists", op.collect("collect", s, timedelta(hours=1), 4), _sink(outs, "lists"))
    return outs


def folds(flow: Dataflow) -> Outputs:
    outs: Outputs = {}
    s = op.input("inp", flow, TestingSource(KEYED, batch_size=7))
    op.output(
        "out_sets",
        op.fold_final("fold", s, set, lambda acc, v: acc | {v}),
        _sink(outs, "sets"),
    )
    op.output("out_sum", op.reduce_final("reduce", s, lambda a, b: a + b), _sink(outs, "sum"))
    op.output("out_max", op.max_final("max", s, by=lambda v: -v), _sink(outs, "max"))
    return outs


def redistributed(flow: Dataflow) -> Outputs:
    outs: Outputs = {}
    s = op.input("inp", flow, TestingSource(range(100), batch_size=9))
    s = op.redistribute("spread", s)
    s = op.map("square", s, lambda x: x * x)
    op.output("out_squares", s, _sink(outs, "squares"))
    # Redistributed items feed a stateful step: keys still meet on one worker.
    counts = op.count_final("mod", s, lambda x: str(x % 4))
    op.output("out_mod", counts, _sink(outs, "mod"))
    return outs


def branch_merge(flow: Dataflow) -> Outputs:
    outs: Outputs = {}
    s = op.input("inp", flow, TestingSource(range(90), batch_size=8))
    b = op.branch("even", s, lambda x: x % 2 == 0)
    evens = op.map("tag_even", b.trues, lambda x: ("even", x))
    odds = op.redistribute("spread_odds", op.map("tag_odd", b.falses, lambda x: ("odd", x)))
    merged = op.merge("merge", evens, odds)
    op.output("out_merged", merged, _sink(outs, "merged"))
    op.output("out_per_tag", op.count_final("count", merged, lambda t: t[0]), _sink(outs, "per_tag"))
    return outs


class _PartLog(StatefulSinkPartition[Any, int]):
    def __init__(self, name: str, log: list[Any]) -> None:
        self.name = name
        self.log = log
        self.written = 0

    def write_batch(self, values: list[Any]) -> None:
        self.written += len(values)
        self.log.extend((self.name, v) for v in values)

    def snapshot(self) -> int:
        return self.written


class _ThreePartSink(FixedPartitionedSink[Any, int]):
    def __init__(self, log: list[Any], builds: list[str]) -> None:
        self.log = log
        self.builds = builds
        self._lock = threading.Lock()

    def list_parts(self) -> list[str]:
        return ["p-c", "p-a", "p-b"]

    def part_fn(self, item_key: str) -> int:
        return int(item_key[1:])

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _PartLog:
        with self._lock:
            self.builds.append(for_part)
        return _PartLog(for_part, self.log)


def partitioned_sink(flow: Dataflow) -> Outputs:
    outs: Outputs = {"parts": [], "builds": []}
    s = op.input("inp", flow, TestingSource(KEYED, batch_size=5))
    op.output("out_sink", s, _ThreePartSink(outs["parts"], outs["builds"]))
    return outs


def chained_exchanges(flow: Dataflow) -> Outputs:
    """Several exchange edges in a row: EOF and barriers must pass through each."""
    outs: Outputs = {}
    s = op.input("inp", flow, TestingSource(range(150), batch_size=6))
    s = op.key_on("by_mod", s, lambda x: str(x % 5))

    def count(n: int | None, _x: int) -> tuple[int, int]:
        return (n or 0) + 1, (n or 0) + 1

    running = op.stateful_map("count", s, count)
    rekeyed = op.key_on("by_parity", op.key_rm("unkey", running), lambda n: str(n % 2))
    sums = op.reduce_final("sum", rekeyed, lambda a, b: a + b)
    spread = op.redistribute("spread", op.key_rm("unkey2", sums))
    op.output("out_total", op.count_final("total", spread, lambda _x: "all"), _sink(outs, "total"))
    op.output("out_sums", sums, _sink(outs, "sums"))
    return outs


SCENARIOS: dict[str, Scenario] = {
    "chained_exchanges": chained_exchanges,
    "wordcount": wordcount,
    "running_sums": running_sums,
    "joins": joins,
    "collects": collects,
    "folds": folds,
    "redistributed": redistributed,
    "branch_merge": branch_merge,
    "partitioned_sink": partitioned_sink,
}


def _per_key(items: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    by_key: dict[str, list[Any]] = defaultdict(list)
    for k, v in items:
        by_key[k].append(v)
    return dict(by_key)


def _normal(name: str, outs: Outputs) -> dict[str, Any]:
    """What must be equal between runs, per output list."""
    norm: dict[str, Any] = {}
    for out_name, items in outs.items():
        if (name, out_name) in {("running_sums", "sums"), ("collects", "lists")}:
            norm[out_name] = _per_key(items)
        else:
            norm[out_name] = Counter(repr(x) for x in items)
    return norm


_REFERENCE: dict[str, dict[str, Any]] = {}


def _reference(name: str) -> dict[str, Any]:
    if name not in _REFERENCE:
        flow = Dataflow(name)
        outs = SCENARIOS[name](flow)
        run_main(flow)
        _REFERENCE[name] = _normal(name, outs)
    return _REFERENCE[name]


@pytest.mark.parametrize("interval", INTERVALS)
@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_cluster_matches_single_worker(name: str, workers: int, interval: timedelta | None) -> None:
    expected = _reference(name)
    flow = Dataflow(name)
    outs = SCENARIOS[name](flow)
    cluster_main(flow, [], 0, epoch_interval=interval, worker_count_per_proc=workers)
    assert _normal(name, outs) == expected


def test_reference_outputs_are_right() -> None:
    """The single-worker reference itself against plain Python."""
    counts = _reference("wordcount")["counts"]
    assert counts == Counter(repr(kv) for kv in Counter(" ".join(LINES).split()).items())
    sums = _reference("running_sums")["sums"]
    for k, seq in sums.items():
        vals = [v for kk, v in KEYED if kk == k]
        assert seq == [sum(vals[: i + 1]) for i in range(len(vals))]
    lists = _reference("collects")["lists"]
    for k, chunks in lists.items():
        vals = [v for kk, v in KEYED if kk == k]
        assert chunks == [vals[i : i + 4] for i in range(0, len(vals), 4)]
    parts = _reference("partitioned_sink")
    assert parts["builds"] == Counter(repr(p) for p in ["p-a", "p-b", "p-c"])
    sorted_parts = sorted(["p-c", "p-a", "p-b"])
    assert parts["parts"] == Counter(repr((sorted_parts[int(k[1:]) % 3], v)) for k, v in KEYED)


@pytest.mark.parametrize("workers", [2, 3])
def test_sink_parts_are_built_once_across_workers(workers: int) -> None:
    flow = Dataflow("parts")
    outs = partitioned_sink(flow)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert sorted(outs["builds"]) == ["p-a", "p-b", "p-c"]


# --- sources that end at different times on different workers -------------


class _UnevenPartition(StatelessSourcePartition[tuple[str, tuple[int, int]]]):
    """Emits ``count`` items in batches of 2, sleeping briefly after every 3 batches."""

    def __init__(self, worker_index: int, count: int, pause: timedelta) -> None:
        self.worker_index = worker_index
        self.count = count
        self.pause = pause
        self.sent = 0
        self.batches = 0
        self.awake: datetime | None = None

    def next_batch(self) -> list[tuple[str, tuple[int, int]]]:
        if self.sent >= self.count:
            raise StopIteration()
        end = min(self.sent + 2, self.count)
        batch = [(f"k{i % 5}", (self.worker_index, i)) for i in range(self.sent, end)]
        self.sent = end
        self.batches += 1
        if self.batches % 3 == 0:
            self.awake = datetime.now(UTC) + self.pause
        else:
            self.awake = None
        return batch

    def next_awake(self) -> datetime | None:
        return self.awake


class _UnevenSource(DynamicSource[tuple[str, tuple[int, int]]]):
    """Worker ``i`` emits ``counts[i]`` items (0 means it ends at once)."""

    def __init__(self, counts: list[int], pause: timedelta) -> None:
        self.counts = counts
        self.pause = pause

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _UnevenPartition:
        return _UnevenPartition(worker_index, self.counts[worker_index], self.pause)


def _uneven_expected(counts: list[int]) -> list[tuple[str, tuple[int, int]]]:
    return [(f"k{i % 5}", (w, i)) for w, n in enumerate(counts) for i in range(n)]


@pytest.mark.parametrize("interval", INTERVALS)
@pytest.mark.parametrize(
    "counts",
    [
        pytest.param([0, 7, 30], id="first-empty"),
        pytest.param([40, 3, 0], id="last-empty"),
        pytest.param([1, 1, 25], id="one-long"),
    ],
)
def test_uneven_dynamic_source_eof_and_alignment(counts: list[int], interval: timedelta | None) -> None:
    items = _uneven_expected(counts)
    flow = Dataflow("uneven")
    s = op.input("inp", flow, _UnevenSource(counts, timedelta(milliseconds=2)))
    n_counts: list[Any] = []
    op.output("out_count", op.count_final("count", s, lambda kv: kv[0]), TestingSink(n_counts))
    per_key: list[Any] = []

    def seen(state: list[int] | None, v: tuple[int, int]) -> tuple[list[int], tuple[int, int]]:
        return (state or []) + [v[1]], v

    op.output("out_seen", op.stateful_map("seen", s, seen), TestingSink(per_key))
    collected: list[Any] = []
    lists = op.collect("collect", s, timedelta(hours=1), 1_000)
    op.output("out_collect", lists, TestingSink(collected))
    cluster_main(flow, [], 0, epoch_interval=interval, worker_count_per_proc=len(counts))

    # count_final emits once per key, at the real end of every worker's input.
    expected_counts = Counter(k for k, _ in items)
    assert sorted(n_counts) == sorted(expected_counts.items())
    assert Counter(repr(x) for x in per_key) == Counter(repr(x) for x in items)
    # Each worker's items of a key arrive in that worker's order.
    for w in range(len(counts)):
        for k, vals in _per_key(per_key).items():
            mine = [i for ww, i in vals if ww == w]
            assert mine == sorted(mine), (w, k)
    # collect never reached max_size: one list per key, at EOF.
    assert sorted(k for k, _ in collected) == sorted(expected_counts)
    assert {k: sorted(map(tuple, vs)) for k, vs in collected} == {
        k: sorted(v for kk, v in items if kk == k) for k in expected_counts
    }


class _PartitionOfLength(StatefulSourcePartition[tuple[str, int], int]):
    def __init__(self, name: str, length: int, resume: int | None) -> None:
        self.name = name
        self.length = length
        self.pos = resume or 0
        self.awake: datetime | None = None

    def next_batch(self) -> list[tuple[str, int]]:
        if self.pos >= self.length:
            raise StopIteration()
        self.pos += 1
        # A pause every 4 items makes partitions finish out of step.
        self.awake = datetime.now(UTC) + timedelta(milliseconds=1) if self.pos % 4 == 0 else None
        return [(self.name, self.pos)]

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> int:
        return self.pos


class _ManyParts(FixedPartitionedSource[tuple[str, int], int]):
    LENGTHS = {"a": 0, "b": 3, "c": 17, "d": 1, "e": 9}

    def list_parts(self) -> list[str]:
        return list(self.LENGTHS)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Any:
        return _PartitionOfLength(for_part, self.LENGTHS[for_part], resume_state)


@pytest.mark.parametrize("interval", INTERVALS)
@pytest.mark.parametrize("workers", WORKERS)
def test_fixed_partitions_of_different_lengths(workers: int, interval: timedelta | None) -> None:
    flow = Dataflow("parts")
    s = op.input("inp", flow, _ManyParts())
    sums: list[Any] = []
    op.output("out_sum", op.reduce_final("sum", s, lambda a, b: a + b), TestingSink(sums))
    running: list[Any] = []

    def last(state: int | None, v: int) -> tuple[int, int]:
        assert state is None or v == state + 1, "items of a partition arrive in order"
        return v, v

    op.output("out_last", op.stateful_map("last", s, last), TestingSink(running))
    cluster_main(flow, [], 0, epoch_interval=interval, worker_count_per_proc=workers)
    assert sorted(sums) == sorted((name, n * (n + 1) // 2) for name, n in _ManyParts.LENGTHS.items() if n)
    assert len(running) == sum(_ManyParts.LENGTHS.values())


def test_redistribute_spreads_over_every_worker() -> None:
    flow = Dataflow("spread")
    seen: list[tuple[int, int]] = []
    s = op.input("inp", flow, TestingSource(range(30), batch_size=6))
    s = op.redistribute("spread", s)
    s = op.inspect_debug("where", s, lambda _sid, x, _epoch, worker: seen.append((x, worker)))
    op.output("out", s, TestingSink([]))
    cluster_main(flow, [], 0, worker_count_per_proc=3)
    assert sorted(x for x, _ in seen) == list(range(30))
    assert {w for _, w in seen} == {0, 1, 2}


def test_keyed_state_lives_on_one_worker() -> None:
    flow = Dataflow("owner")
    where: list[tuple[str, int]] = []
    s = op.input("inp", flow, TestingSource(KEYED, batch_size=4))
    s = op.stateful_map("count", s, lambda n, _v: ((n or 0) + 1, (n or 0) + 1))
    s = op.inspect_debug("where", s, lambda _sid, kv, _e, worker: where.append((kv[0], worker)))
    op.output("out", s, TestingSink([]))
    cluster_main(flow, [], 0, worker_count_per_proc=3)
    owners: dict[str, set[int]] = defaultdict(set)
    for k, w in where:
        owners[k].add(w)
    assert all(len(ws) == 1 for ws in owners.values()), owners
    assert len({w for ws in owners.values() for w in ws}) > 1, "7 keys should use >1 worker"


@pytest.mark.parametrize("interval", INTERVALS)
@pytest.mark.parametrize("workers", [2, 3])
def test_collect_timers_fire_on_every_worker(workers: int, interval: timedelta | None) -> None:
    """A clock far in the past makes every deadline due at once, so lists are flushed by
    timers on whichever worker owns the key (how many values each holds depends on how
    batches arrive); nothing is lost, duplicated or reordered."""
    past = datetime(2000, 1, 1, tzinfo=UTC)
    flow = Dataflow("timers")
    s = op.input("inp", flow, TestingSource(KEYED, batch_size=5))
    out: list[Any] = []
    lists = op.collect("collect", s, timedelta(seconds=1), 1_000, _now_getter=lambda: past)
    op.output("out", lists, TestingSink(out))
    cluster_main(flow, [], 0, epoch_interval=interval, worker_count_per_proc=workers)
    per_key = _per_key(out)
    for k, chunks in per_key.items():
        assert [v for chunk in chunks for v in chunk] == [v for kk, v in KEYED if kk == k]
    assert set(per_key) == {k for k, _ in KEYED}
    assert all(chunk for _, chunk in out)


def test_reduce_final_pre_reduces_before_the_exchange() -> None:
    """A key's values are reduced on the sending worker first; the owner reduces the partials."""
    flow = Dataflow("combine")
    calls: list[tuple[list[int], list[int]]] = []
    lock = threading.Lock()

    def concat(a: list[int], b: list[int]) -> list[int]:
        with lock:
            calls.append((a, b))
        return a + b

    items = [(f"k{i % 3}", [i]) for i in range(400)]
    out: list[tuple[str, list[int]]] = []
    s = op.input("inp", flow, TestingSource(items, batch_size=40))
    s = op.redistribute("spread", s)
    op.output("out", op.reduce_final("concat", s, concat), TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert sorted(k for k, _ in out) == ["k0", "k1", "k2"]
    for k, vs in out:
        assert sorted(vs) == [i for i in range(400) if f"k{i % 3}" == k]
    # Without a combiner the owner only ever folds in one raw value at a time.
    assert any(len(b) > 1 for _, b in calls), "no partial result crossed the exchange"


def test_a_failing_reducer_in_the_combiner_names_the_step() -> None:
    flow = Dataflow("combine_fails")
    s = op.input("inp", flow, TestingSource([(f"k{i % 5}", i) for i in range(100)], batch_size=20))
    s = op.redistribute("spread", s)
    op.output("out", op.reduce_final("bad_sum", s, lambda a, b: a / (b - b)), TestingSink([]))
    with pytest.raises(Exception) as info:
        cluster_main(flow, [], 0, worker_count_per_proc=2)
    text = " ".join(str(e) for e in causes(info.value))
    assert "bad_sum" in text and "ZeroDivisionError" in text, text
