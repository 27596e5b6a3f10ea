"""Scaling over processes: Headrace ``-p 2`` vs ``-p 1`` (and ``-w 2``), Bytewax alongside.

    python benchmarks/cluster_bench.py [--quick] [--repeat 3] [--only wordcount,tumbling_fold]
                                       [--engines headrace,bytewax] [--json out.json]

Each run is the engine's own CLI in fresh processes: ``python -m
headrace.run cli_flows:flow -p 1 | -p 2 | -w 2 --metrics-port 0`` and
``python -m bytewax.run cli_flows:flow -w 1 | -w 2`` plus Bytewax as two
processes (``-i 0/1 -a ...``, the same shape as Headrace's ``-p 2``). The
pipelines are the single-worker benchmark's ``wordcount`` and
``tumbling_fold`` fed by a 4-partition source, so every process reads,
and ``sliding_fold`` (the same items in 4 s windows every 1 s).

``2 x -p 1 (split)`` is the machine's ceiling for two processes: two
independent single-process runs started together, each reading exactly
the partitions one ``-p 2`` process reads (the same items in the same
batches), nothing exchanged (each wordcount half counts the ~1000 words it
saw, so together they write about twice as many). Its span is the longer
of the two processes' own spans, as they do not start in step as a
cluster does. No engine that must exchange can beat it, so ``-p 2``'s
share of it separates what the engine costs from what this machine gives
two busy processes.

The speed-ups are reported three ways: best over best and median over
median, as the target is stated, and the median of per-repeat ratios
(each repeat runs every config back to back, so a repeat's ratio is taken
over the same few seconds of a machine whose speed drifts).

Throughput is input items over the dataflow's own *span*: from the
earliest first read of any process to the latest write of any process,
recorded inside the processes (``pipelines/_span.py``), so interpreter
start, imports and connecting the peers are not charged. Wall time (first
process start to last exit) is shown too. Every process also records the
CPU time it used over that span; ``CPU est`` is items over the busiest
process's CPU seconds, what the span would be if each process had a
core to itself (the machine is shared, so the measured span can be longer).

Exchange overhead, Headrace only, from the engine's own counters
(``headrace_exchange_items_total``, ``headrace_exchange_bytes_total``,
read from the registry ``/metrics`` serves just before each process
exits): bytes per exchanged item, and the extra CPU the 2-process run
spent over the 1-process run per exchanged item (all parallel overhead
counted as exchange cost, so an upper bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# `benchmarks/` must not be on sys.path: its profile.py would shadow the stdlib's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE / "pipelines"))

import _cli  # noqa: E402

TARGET = 1.6
# Issue 24's targets per pipeline (-p 2 over -p 1); others have TARGET.
TARGETS = {"wordcount": 1.8, "tumbling_fold": 1.6}
# Best-of runs a miss needs before it says more than "the machine was busy":
# on the 2-vCPU VM, one process of two runs 25-55% slower for whole runs at
# a time (benchmarks/README.md), and 10 repeats reliably include calm ones.
VERDICT_REPEATS = 10
PIPELINES = {"wordcount": 1_000_000, "tumbling_fold": 2_000_000, "sliding_fold": 1_000_000}
QUICK = {"wordcount": 100_000, "tumbling_fold": 200_000, "sliding_fold": 100_000}
PARTS = 4


def _expected_out(pipeline: str, items: int, shards: int = 1) -> int:
    """Output items, summed over ``shards`` independent processes (see `_cli.run_cli`'s split).

    Wordcount: the distinct words each process reads. Windows: 100 keys x
    the windows of ``items`` ms; each key comes from one partition, so
    shards divide the keys, not the windows.

    >>> _expected_out("wordcount", 4000), _expected_out("wordcount", 4000, 2)
    (1000, 1998)
    >>> _expected_out("tumbling_fold", 4000), _expected_out("tumbling_fold", 4000, 2)
    (400, 400)
    >>> _expected_out("sliding_fold", 4000)
    700
    """
    if pipeline == "wordcount":
        from wordcount import _LINES

        period = len(_LINES) * PARTS  # line i is _LINES[i % len]; its partition i % PARTS
        total = 0
        for k in range(shards):
            words: set[str] = set()
            for i in range(min(items, period)):
                if i % PARTS % shards == k:
                    words.update(_LINES[i % len(_LINES)].split())
            total += len(words)
        return total
    seconds = items // 1000
    # A 4 s window every 1 s: 3 more windows than seconds, opening before the first.
    windows = seconds + 3 if pipeline == "sliding_fold" else seconds
    return 100 * windows


@dataclass(frozen=True)
class Config:
    """One way of running a pipeline: engine, CLI arguments, processes started by hand.

    >>> [c.label for c in CONFIGS if c.baseline]
    ['headrace -p 1', 'bytewax -w 1']
    """

    label: str
    engine: str
    args: tuple[str, ...]
    processes: int = 1
    baseline: bool = False
    split: bool = False


CONFIGS = (
    Config("headrace -p 1", "headrace", ("-p", "1", "--metrics-port", "0"), baseline=True),
    Config("headrace -p 2", "headrace", ("-p", "2", "--metrics-port", "0")),
    Config("headrace -w 2", "headrace", ("-w", "2", "--metrics-port", "0")),
    Config("2 x -p 1 (split)", "headrace", ("-p", "1", "--metrics-port", "0"), processes=2, split=True),
    Config("bytewax -w 1", "bytewax", ("-w", "1"), baseline=True),
    Config("bytewax -w 2", "bytewax", ("-w", "2")),
    Config("bytewax 2 procs", "bytewax", ("-w", "1"), processes=2),
)


@dataclass
class Cell:
    """The repeats of one config on one pipeline.

    >>> cell = Cell(CONFIGS[0], 100, [_fake(1.0, 0.8), _fake(2.0, 1.6)])
    >>> cell.rates(), cell.cpu_est(), cell.median(lambda r: r.span)
    ((100.0, 75.0), 125.0, 1.5)
    """

    config: Config
    items: int
    runs: list[_cli.CliRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def good(self) -> list[_cli.CliRun]:
        """The runs that succeeded.

        >>> len(Cell(CONFIGS[0], 1, [_fake(1.0, 1.0), _cli.CliRun(1.0, [], "boom")]).good())
        1
        """
        return [r for r in self.runs if r.ok]

    def rates(self) -> tuple[float | None, float | None]:
        """Best and median items/s over the dataflow's span.

        >>> Cell(CONFIGS[0], 10, [_fake(2.0, 1.0)]).rates()
        (5.0, 5.0)
        """
        return _cli.best_median([self.items / self.span(r) for r in self.good()])

    def span(self, run: _cli.CliRun) -> float:
        """A run's span: its own processes' longest for a split config (see the module doc).

        >>> Cell(CONFIGS[0], 1).span(_fake(2.0, 1.0))
        2.0
        """
        return run.own_span if self.config.split else run.span

    def cpu_est(self) -> float | None:
        """Best items per CPU second of the busiest process (one core each).

        >>> Cell(CONFIGS[0], 10, [_fake(2.0, 1.0)]).cpu_est()
        10.0
        """
        return _cli.best_median([self.items / max(r.cpu()) for r in self.good()])[0]

    def median(self, fn: Any) -> float | None:
        """Median of ``fn(run)`` over the good runs.

        >>> Cell(CONFIGS[0], 10).median(lambda r: r.wall) is None
        True
        """
        values = [fn(r) for r in self.good()]
        return statistics.median(values) if values else None


def _fake(span: float, cpu: float, **metrics: float) -> _cli.CliRun:
    record = {
        "first_read": 0.0,
        "last_write": span,
        "cpu_first_read": 0.0,
        "cpu_exit": cpu,
        "items_read": 0,
        "items_written": 0,
        "metrics": metrics,
    }
    return _cli.CliRun(span, [record])


def check(run: _cli.CliRun, config: Config, pipeline: str, items: int) -> str | None:
    """What is wrong with a run, or ``None``.

    >>> ok = _cli.CliRun(1.0, [{"items_read": 4000, "items_written": 1000}])
    >>> check(ok, CONFIGS[0], "wordcount", 4000) is None
    True
    >>> check(ok, CONFIGS[1], "wordcount", 4000)
    'expected 2 processes reading, got 1'
    >>> check(ok, CONFIGS[0], "wordcount", 50)
    'read 4,000 items, expected 50'
    """
    if not run.ok:
        return run.error or "no process recorded anything"
    want_procs = 2 if ("-p", "2") == config.args[:2] or config.processes == 2 else 1
    if run.processes != want_procs or any(r["items_read"] == 0 for r in run.records):
        return f"expected {want_procs} processes reading, got {run.processes}"
    if run.items_read != items:
        return f"read {run.items_read:,} items, expected {items:,}"
    want = _expected_out(pipeline, items, config.processes if config.split else 1)
    if run.items_written != want:
        return f"wrote {run.items_written:,} items, expected {want:,}"
    return None


def is_reference_quirk(config: Config, problem: str) -> bool:
    """Whether a problem is Bytewax's output count, which is reported but not a failure.

    Bytewax as two processes sometimes emits a few windows more or fewer
    than the same input gives on one worker; it is the comparison, not the
    system under test, so its run still counts (and the note says so).

    >>> is_reference_quirk(CONFIGS[6], "wrote 1 items, expected 2"), is_reference_quirk(CONFIGS[1], "wrote 1")
    (True, False)
    """
    return config.engine == "bytewax" and problem.startswith("wrote ")


def measure(
    pipelines: dict[str, int], configs: list[Config], pythons: dict[str, Path | str], repeat: int
) -> dict[str, list[Cell]]:
    """Run every config on every pipeline ``repeat`` times, the config order alternating.

    >>> cells = measure({"wordcount": 200}, [CONFIGS[0]], {"headrace": sys.executable}, 1)
    >>> cells["wordcount"][0].good()[0].items_written
    1000
    """
    out: dict[str, list[Cell]] = {}
    total = len(pipelines) * len(configs) * repeat
    done = 0
    for pipeline, items in pipelines.items():
        cells = [Cell(c, items) for c in configs]
        out[pipeline] = cells
        for rep in range(repeat):
            order = cells if rep % 2 == 0 else cells[::-1]
            for cell in order:
                c = cell.config
                done += 1
                run = _cli.run_cli(
                    pythons[c.engine], c.engine, c.args, pipeline, items, PARTS, c.processes, split=c.split
                )
                problem = check(run, c, pipeline, items)
                if problem is not None and is_reference_quirk(c, problem):
                    cell.notes.append(problem)
                elif problem is not None:
                    run.error = problem
                    cell.problems.append(problem)
                cell.runs.append(run)
                status = problem or (
                    f"{_cli.rate(items / cell.span(run))} items/s, span {cell.span(run):.2f} s, "
                    f"wall {run.wall:.2f} s, cpu {'/'.join(f'{x:.2f}' for x in run.cpu())} s"
                )
                print(
                    f"[{done}/{total}] {pipeline} {c.label}: {status}  (load {_cli.load_average()})",
                    file=sys.stderr,
                    flush=True,
                )
    return out


def scaling_table(cells: list[Cell]) -> str:
    """Throughput per config, and speed-up over the same engine's single worker.

    >>> print(scaling_table([Cell(CONFIGS[0], 10, [_fake(1.0, 1.0)])]))  # doctest: +NORMALIZE_WHITESPACE
    config         items/s best (med)  speed-up best (med)  CPU s max  CPU s sum    CPU est (x)  wall s
    headrace -p 1         0.0k (0.0k)        1.00x (1.00x)       1.00       1.00  0.0k (1.00x)    1.00
    """
    base = {c.config.engine: c for c in cells if c.config.baseline}
    rows = []
    for cell in cells:
        best, med = cell.rates()
        b = base.get(cell.config.engine)
        bb, bm = b.rates() if b is not None else (None, None)
        sb = best / bb if best and bb else None
        sm = med / bm if med and bm else None
        b_est = b.cpu_est() if b is not None else None
        est = cell.cpu_est()
        rows.append(
            [
                cell.config.label,
                f"{_cli.rate(best)} ({_cli.rate(med)})",
                f"{_cli.num(sb, '.2f', 'x')} ({_cli.num(sm, '.2f', 'x')})",
                _cli.num(cell.median(lambda r: max(r.cpu())), ".2f"),
                _cli.num(cell.median(lambda r: sum(r.cpu())), ".2f"),
                f"{_cli.rate(est)} ({_cli.num(est / b_est if est and b_est else None, '.2f', 'x')})",
                _cli.num(cell.median(lambda r: r.wall), ".2f"),
                "FAILED" if cell.problems else "",
            ]
        )
    return _cli.render(
        [
            "config",
            "items/s best (med)",
            "speed-up best (med)",
            "CPU s max",
            "CPU s sum",
            "CPU est (x)",
            "wall s",
            "",
        ],
        rows,
    )


def exchange_rows(pipeline: str, cells: list[Cell]) -> list[list[str]]:
    """Headrace's exchange figures for one pipeline: per -p 2 and -w 2.

    >>> out = {"headrace_exchange_items_total:out": 50.0, "headrace_exchange_bytes_total:out": 200.0}
    >>> cells = [Cell(CONFIGS[0], 100, [_fake(1.0, 1.0)]), Cell(CONFIGS[1], 100, [_fake(1.0, 0.6, **out)])]
    >>> exchange_rows("wc", cells)
    [['wc -p 2', '50', '0.50', '4.0', '-0.40', '-8000.00']]
    """
    by = {c.config.label: c for c in cells}
    base = by.get("headrace -p 1")
    rows = []
    for label in ("headrace -p 2", "headrace -w 2"):
        cell = by.get(label)
        if cell is None or base is None or not cell.good() or not base.good():
            continue
        items = cell.median(lambda r: r.metric("headrace_exchange_items_total:out")) or 0.0
        sent = cell.median(lambda r: r.metric("headrace_exchange_bytes_total:out")) or 0.0
        extra = (cell.median(lambda r: sum(r.cpu())) or 0.0) - (base.median(lambda r: sum(r.cpu())) or 0.0)
        per_item = _cli.num(sent / items if items and sent else None, ".1f")
        rows.append(
            [
                f"{pipeline} {label.split()[1]} {label.split()[2]}",
                f"{items:,.0f}",
                f"{items / cell.items:.2f}",
                per_item if label.endswith("-p 2") else "0 (memory)",
                f"{extra:+.2f}",
                _cli.num(extra / items * 1e6 if items else None, ".2f"),
            ]
        )
    return rows


def paired(a: Cell, b: Cell) -> float | None:
    """Median over repeats of b's rate over a's (the same repeat's runs); None if none pair up.

    >>> a = Cell(CONFIGS[0], 10, [_fake(1.0, 1.0), _fake(2.0, 1.0), _fake(1.0, 1.0)])
    >>> b = Cell(CONFIGS[1], 10, [_fake(0.5, 1.0), _fake(1.0, 1.0), _cli.CliRun(1.0, [], "boom")])
    >>> paired(a, b)
    2.0
    """
    ratios = [a.span(ra) / b.span(rb) for ra, rb in zip(a.runs, b.runs, strict=False) if ra.ok and rb.ok]
    return statistics.median(ratios) if ratios else None


def verdict(pipeline: str, by: dict[str, Cell]) -> list[str]:
    """The target check for one pipeline, and how -p 2 compares with the machine's ceiling.

    >>> runs = lambda span: [_fake(span, 1.0)]
    >>> by = {"headrace -p 1": Cell(CONFIGS[0], 10, runs(1.0)),
    ...       "headrace -p 2": Cell(CONFIGS[1], 10, runs(0.6)),
    ...       "2 x -p 1 (split)": Cell(CONFIGS[3], 10, runs(0.55))}
    >>> for line in verdict("wc", by): print(line)  # wordcount's own target is 1.8x
    wc: headrace -p 2 / -p 1 = 1.67x best, 1.67x median, 1.67x paired (target >= 1.6x): ok
    wc: no-exchange ceiling 2 x -p 1 (split) / -p 1 = 1.82x best, 1.82x paired; -p 2 reaches 92% of it

    A miss says whether the machine itself gave two independent processes
    less than the target in that run:

    >>> by["2 x -p 1 (split)"] = Cell(CONFIGS[3], 10, runs(0.7))
    >>> by["headrace -p 2"] = Cell(CONFIGS[1], 10, runs(0.72))
    >>> print(verdict("wc", by)[0].split(": ", 2)[2])
    MISS (the machine's own ceiling in this run: 1.43x) [best of 1 only; --repeat 10 for a verdict]
    """
    p1, p2, ceil = (by.get(k) for k in ("headrace -p 1", "headrace -p 2", "2 x -p 1 (split)"))
    if p1 is None or p2 is None:
        return []
    (b1, m1), (b2, m2) = p1.rates(), p2.rates()
    if not (b1 and b2 and m1 and m2):
        return []
    ratio = b2 / b1
    target = TARGETS.get(pipeline, TARGET)
    pair = paired(p1, p2)
    bc = (ceil.rates()[0] or 0.0) if ceil is not None else 0.0
    outcome = "ok" if ratio >= target else "MISS"
    if ratio < target and bc and bc / b1 < target:
        outcome += f" (the machine's own ceiling in this run: {bc / b1:.2f}x)"
    runs = min(len(p1.runs), len(p2.runs))
    if ratio < target and runs < VERDICT_REPEATS:
        outcome += f" [best of {runs} only; --repeat {VERDICT_REPEATS} for a verdict]"
    lines = [
        f"{pipeline}: headrace -p 2 / -p 1 = {ratio:.2f}x best, {m2 / m1:.2f}x median, "
        f"{_cli.num(pair, '.2f', 'x')} paired (target >= {target}x): {outcome}"
    ]
    if ceil is not None and bc:
        cpair = paired(p1, ceil)
        share = paired(ceil, p2)
        lines.append(
            f"{pipeline}: no-exchange ceiling 2 x -p 1 (split) / -p 1 = {bc / b1:.2f}x best, "
            f"{_cli.num(cpair, '.2f', 'x')} paired; -p 2 reaches "
            f"{_cli.num(share * 100 if share else None, '.0f', '%')} of it"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the tables; 0 unless a run failed.

    >>> main(["--quick", "--engines", "headrace", "--only", "wordcount", "--items", "400"])
    ... # doctest: +ELLIPSIS
    Scaling over processes, best of 1 ...
    wordcount: headrace -p 2 / -p 1 = ...
    0
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, one repeat")
    parser.add_argument("--repeat", type=int, help="runs per config (default 3, --quick 1)")
    parser.add_argument("--only", help="comma-separated pipelines (default: all)")
    parser.add_argument("--engines", default="headrace,bytewax")
    parser.add_argument("--items", type=int, help="input items for every pipeline")
    parser.add_argument("--json", type=Path, help="save raw runs and the tables here")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    try:
        sizes = _cli.select_sizes(QUICK if args.quick else PIPELINES, args.only, args.items)
    except ValueError as exc:
        parser.error(str(exc))
    engines = args.engines.split(",")
    configs = [c for c in CONFIGS if c.engine in engines]
    if not configs:
        parser.error("--engines takes a subset of headrace,bytewax")
    pythons: dict[str, Path | str] = {"headrace": sys.executable}
    if "bytewax" in engines:
        pythons["bytewax"] = _cli.bytewax_python()

    load_before = _cli.load_average()
    started = time.time()
    results = measure(sizes, configs, pythons, repeat)
    elapsed = time.time() - started
    print(
        f"Scaling over processes, best of {repeat} (median in parentheses); "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; took {elapsed:.0f} s; "
        f"load average before {load_before}, after {_cli.load_average()}"
    )
    failed = False
    exchange: list[list[str]] = []
    for pipeline, cells in results.items():
        print(f"\n{pipeline}, {sizes[pipeline]:,} items, {PARTS} source partitions:")
        print(scaling_table(cells))
        exchange += exchange_rows(pipeline, cells)
        for cell in cells:
            for problem in cell.problems:
                failed = True
                print(f"note: {cell.config.label} failed: {problem}")
            for quirk in cell.notes:
                print(f"note: {cell.config.label} {quirk} (Bytewax's own result; timed anyway)")
    if exchange:
        print("\nHeadrace exchange (medians; extra CPU = CPU s sum minus -p 1's, over exchanged items):")
        print(
            _cli.render(
                ["run", "items exchanged", "per input", "bytes/item", "extra CPU s", "us/item"], exchange
            )
        )
    verdicts = []
    for pipeline, cells in results.items():
        verdicts += verdict(pipeline, {c.config.label: c for c in cells})
    for line in verdicts:
        print(line)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "load_before": load_before,
                    "sizes": sizes,
                    "runs": {
                        p: [
                            {"config": c.config.label, "wall": r.wall, "records": r.records, "error": r.error}
                            for c in cells
                            for r in c.runs
                        ]
                        for p, cells in results.items()
                    },
                    "verdicts": verdicts,
                },
                indent=1,
            )
            + "\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
