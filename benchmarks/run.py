"""Benchmark Headrace against Bytewax 0.21.1, side by side, on the same pipelines.

    python benchmarks/run.py [--only NAME,...] [--items N] [--repeat R]
                             [--engines headrace,bytewax,floor] [--long] [--json out.json]

Every pipeline is one module under ``benchmarks/pipelines/`` written against
the Bytewax API; `pipelines/_compat.py` binds it to either engine. Each
measurement is a fresh process (`pipelines/_measure.py`) that times one
single-worker ``run_main`` and reports its peak RSS. Headrace runs in this
interpreter; Bytewax runs in a virtualenv at ``benchmarks/.bytewax-venv``,
created on first use. Engines alternate within each pipeline so slow drift
of a shared machine hits both alike; the table shows the best and median of
the repeats. A pipeline with a ``floor`` function also runs it (engine
``floor``): the same user functions in a plain Python loop, no engine,
checked to write the same items; ``vs floor`` is Headrace's time over the
floor's. See ``benchmarks/README.md``.

>>> [name for name in PIPELINES][:3]
['map_filter_map', 'wordcount', 'running_mean']
>>> _rate(1_234_567), _rate(45_600), _rate(None)
('1.23M', '45.6k', 'n/a')
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PIPELINES_DIR = HERE / "pipelines"
MEASURE = PIPELINES_DIR / "_measure.py"
VENV = HERE / ".bytewax-venv"
BYTEWAX_VERSION = "0.21.1"
ENGINES = ("headrace", "bytewax", "floor")
PIPELINES = ["map_filter_map", "wordcount", "running_mean", "tumbling_fold", "sliding", "session"]
LONG_PIPELINE = "tumbling_fold"
LONG_SIZES = (1_000_000, 10_000_000)
CHILD_TIMEOUT_S = 1800

# The pipeline modules import `_compat`, which must see Headrace in this
# process; and `benchmarks/` must not be on sys.path, or `profile.py` here
# would shadow the standard library module of that name.
os.environ["BENCH_ENGINE"] = "headrace"
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(PIPELINES_DIR))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bytewax_python() -> Path:
    """The venv interpreter with Bytewax 0.21.1, creating the venv if needed.

    >>> bytewax_python().name.startswith("python")
    True
    """
    python = VENV / "bin" / "python"
    probe = (
        "import importlib.metadata as m, bytewax.operators.windowing, bytewax.testing; "
        f"assert m.version('bytewax') == {BYTEWAX_VERSION!r}"
    )
    if python.exists():
        if subprocess.run([python, "-c", probe], capture_output=True).returncode == 0:
            return python
    _log(f"creating {VENV} with bytewax=={BYTEWAX_VERSION} (about a minute)...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"bytewax=={BYTEWAX_VERSION}"], check=True)
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"bytewax=={BYTEWAX_VERSION} does not import in {VENV}:\n{done.stderr}\n"
            f"delete {VENV} and retry, or run with --engines headrace"
        )
    return python


def headrace_has_windowing() -> bool:
    """Whether ``headrace.operators.windowing`` imports (window pipelines need it).

    >>> isinstance(headrace_has_windowing(), bool)
    True
    """
    return importlib.import_module("_compat").win is not None


def measure_once(python: Path | str, engine: str, name: str, items: int) -> dict[str, Any]:
    """Run one measurement in a fresh process; a failure is returned, not raised.

    >>> r = measure_once(sys.executable, "headrace", "map_filter_map", 1000)
    >>> r["engine"], r["out_count"]
    ('headrace', 500)
    """
    env = dict(os.environ, BENCH_ENGINE="headrace" if engine == "floor" else engine)
    cmd = [str(python), str(MEASURE), name, str(items), *(["--floor"] if engine == "floor" else [])]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"engine": engine, "pipeline": name, "items": items, "error": "timed out"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        return {"engine": engine, "pipeline": name, "items": items, "error": tail}
    result: dict[str, Any] = json.loads(lines[-1])
    if result.get("floor_matches") is False:
        result["error"] = "the floor's output differs from the dataflow's"
    return result


@dataclass
class Row:
    """The repeats of one pipeline at one size, both engines.

    >>> row = Row("map_filter_map", 10, 1.5, 1.3)
    >>> row.add({"engine": "headrace", "items_per_s": 3.0, "peak_rss_mb": 20.0, "out_count": 5})
    >>> row.add({"engine": "bytewax", "items_per_s": 2.0, "peak_rss_mb": 25.0, "out_count": 5})
    >>> row.add({"engine": "floor", "items_per_s": 3.6, "peak_rss_mb": 19.0, "out_count": 5})
    >>> row.speed_ratio(best=True), row.rss_ratio(), row.floor_ratio(best=True), row.verdict()
    (1.5, 0.8, 1.2, 'ok')
    """

    pipeline: str
    items: int
    target: float
    # Headrace's time over the floor's at most this (None: no floor target).
    floor_target: float | None = None
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, result: dict[str, Any]) -> None:
        """Record one measurement.

        >>> row = Row("x", 1, 1.0); row.add({"engine": "bytewax", "error": "boom"})
        >>> row.errors()
        ['bytewax: boom']
        """
        self.runs.setdefault(result["engine"], []).append(result)

    def _ok(self, engine: str) -> list[dict[str, Any]]:
        return [r for r in self.runs.get(engine, []) if "error" not in r]

    def rate(self, engine: str, best: bool) -> float | None:
        """Best (max) or median items/s of ``engine``; ``None`` without a good run.

        >>> row = Row("x", 1, 1.0)
        >>> for v in (1.0, 5.0, 2.0): row.add({"engine": "headrace", "items_per_s": v})
        >>> row.rate("headrace", best=True), row.rate("headrace", best=False)
        (5.0, 2.0)
        """
        rates = [r["items_per_s"] for r in self._ok(engine)]
        if not rates:
            return None
        return max(rates) if best else statistics.median(rates)

    def floor_ratio(self, best: bool) -> float | None:
        """Floor items/s over Headrace items/s: how many times the floor's time Headrace takes.

        >>> Row("x", 1, 1.0).floor_ratio(best=True) is None
        True
        """
        hr, fl = self.rate("headrace", best), self.rate("floor", best)
        return fl / hr if hr and fl else None

    def rss(self, engine: str) -> float | None:
        """Median peak RSS (MB) of ``engine``'s runs.

        >>> row = Row("x", 1, 1.0); row.add({"engine": "bytewax", "peak_rss_mb": 30.0})
        >>> row.rss("bytewax"), row.rss("headrace")
        (30.0, None)
        """
        values = [r["peak_rss_mb"] for r in self._ok(engine)]
        return statistics.median(values) if values else None

    def speed_ratio(self, best: bool) -> float | None:
        """Headrace items/s over Bytewax items/s.

        >>> Row("x", 1, 1.0).speed_ratio(best=True) is None
        True
        """
        hr, bw = self.rate("headrace", best), self.rate("bytewax", best)
        return hr / bw if hr and bw else None

    def rss_ratio(self) -> float | None:
        """Headrace peak RSS over Bytewax peak RSS.

        >>> Row("x", 1, 1.0).rss_ratio() is None
        True
        """
        hr, bw = self.rss("headrace"), self.rss("bytewax")
        return hr / bw if hr and bw else None

    def counts(self) -> set[int]:
        """Every output count seen; more than one means the engines disagree.

        >>> row = Row("x", 1, 1.0); row.add({"engine": "headrace", "out_count": 3})
        >>> row.counts()
        {3}
        """
        return {r["out_count"] for runs in self.runs.values() for r in runs if "error" not in r}

    def errors(self) -> list[str]:
        """``engine: message`` for every failed run.

        >>> Row("x", 1, 1.0).errors()
        []
        """
        return [f"{e}: {r['error']}" for e, runs in self.runs.items() for r in runs if "error" in r]

    def verdict(self) -> str:
        """``ok``, or what misses: the speed target (best of runs) or the memory target.

        >>> row = Row("x", 1, 2.0)
        >>> row.add({"engine": "headrace", "items_per_s": 3.0, "peak_rss_mb": 30.0})
        >>> row.add({"engine": "bytewax", "items_per_s": 2.0, "peak_rss_mb": 25.0})
        >>> row.verdict()
        'MISS speed, mem'
        >>> row = Row("x", 1, 2.0, 1.3)
        >>> row.add({"engine": "headrace", "items_per_s": 3.0, "peak_rss_mb": 20.0})
        >>> row.add({"engine": "floor", "items_per_s": 6.0, "peak_rss_mb": 20.0})
        >>> row.verdict()
        'MISS floor'
        """
        if self.errors():
            return "FAILED"
        speed, rss, floor = self.speed_ratio(best=True), self.rss_ratio(), self.floor_ratio(best=True)
        checks = []
        if speed is not None and rss is not None:
            checks += [("speed", speed < self.target), ("mem", rss > 1.0)]
        if floor is not None and self.floor_target is not None:
            checks.append(("floor", floor > self.floor_target))
        if not checks:
            return "n/a"
        misses = [what for what, bad in checks if bad]
        return "MISS " + ", ".join(misses) if misses else "ok"

    def summary(self) -> dict[str, Any]:
        """The row's figures as a dict (what ``--json`` saves).

        >>> Row("x", 1, 1.0).summary()["verdict"]
        'n/a'
        """
        return {
            "pipeline": self.pipeline,
            "items": self.items,
            "target_speed_ratio": self.target,
            "headrace_best_items_per_s": self.rate("headrace", True),
            "headrace_median_items_per_s": self.rate("headrace", False),
            "bytewax_best_items_per_s": self.rate("bytewax", True),
            "bytewax_median_items_per_s": self.rate("bytewax", False),
            "speed_ratio_best": self.speed_ratio(True),
            "speed_ratio_median": self.speed_ratio(False),
            "headrace_peak_rss_mb": self.rss("headrace"),
            "bytewax_peak_rss_mb": self.rss("bytewax"),
            "rss_ratio": self.rss_ratio(),
            "floor_best_items_per_s": self.rate("floor", True),
            "floor_median_items_per_s": self.rate("floor", False),
            "floor_ratio_best": self.floor_ratio(True),
            "floor_ratio_median": self.floor_ratio(False),
            "target_floor_ratio": self.floor_target,
            "out_counts": sorted(self.counts()),
            "verdict": self.verdict(),
        }


def _rate(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.1f}k"


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, fmt) + unit


def render_table(rows: list[Row]) -> str:
    """The comparison table, one line per pipeline (rates are best / median).

    >>> row = Row("map_filter_map", 10, 1.5)
    >>> print(render_table([row]).splitlines()[0].split()[:2])
    ['pipeline', 'items']
    """
    with_floor = any(row.rate("floor", True) is not None for row in rows)
    header = (
        "pipeline",
        "items",
        "headrace/s best (med)",
        "bytewax/s best (med)",
        "ratio best (med)",
        "target",
        "HR MB",
        "BW MB",
        "RSS ratio",
        *(("floor/s best (med)", "vs floor best (med)") if with_floor else ()),
        "verdict",
    )
    lines = [header]
    for row in rows:
        floor_cells = (
            (
                f"{_rate(row.rate('floor', True))} ({_rate(row.rate('floor', False))})",
                f"{_num(row.floor_ratio(True), '.2f', 'x')} ({_num(row.floor_ratio(False), '.2f', 'x')})",
            )
            if with_floor
            else ()
        )
        lines.append(
            (
                row.pipeline,
                f"{row.items:,}",
                f"{_rate(row.rate('headrace', True))} ({_rate(row.rate('headrace', False))})",
                f"{_rate(row.rate('bytewax', True))} ({_rate(row.rate('bytewax', False))})",
                f"{_num(row.speed_ratio(True), '.2f', 'x')} ({_num(row.speed_ratio(False), '.2f', 'x')})",
                f">={row.target:g}x",
                _num(row.rss("headrace"), ".1f"),
                _num(row.rss("bytewax"), ".1f"),
                _num(row.rss_ratio(), ".2f"),
                *floor_cells,
                row.verdict(),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _load(name: str) -> Any:
    if name not in PIPELINES:
        raise SystemExit(f"unknown pipeline {name!r}; choose from {', '.join(PIPELINES)}")
    return importlib.import_module(name)


Plan = list[tuple[str, int, float, tuple[str, ...]]]


def run_rows(
    plan: Plan,
    pythons: dict[str, Path | str],
    repeat: int,
) -> tuple[list[Row], list[dict[str, Any]]]:
    """Measure each ``(pipeline, items, target, engines)`` ``repeat`` times, engines alternating.

    >>> rows, raw = run_rows([("map_filter_map", 1000, 1.5, ("headrace", "floor"))],
    ...                      {"headrace": sys.executable, "floor": sys.executable}, 1)
    >>> rows[0].counts(), len(raw), rows[0].floor_target
    ({500}, 2, 1.3)
    """
    rows: list[Row] = []
    raw: list[dict[str, Any]] = []
    total = sum(len(engines) for *_, engines in plan) * repeat
    done = 0
    for name, items, target, engines in plan:
        row = Row(name, items, target, getattr(_load(name), "FLOOR_TARGET", None))
        rows.append(row)
        for rep in range(repeat):
            order = engines if rep % 2 == 0 else tuple(reversed(engines))
            for engine in order:
                done += 1
                result = measure_once(pythons[engine], engine, name, items)
                result["repeat"] = rep
                row.add(result)
                raw.append(result)
                if "error" in result:
                    _log(f"[{done}/{total}] {engine} {name} {items:,}: FAILED\n{result['error']}")
                else:
                    _log(
                        f"[{done}/{total}] {engine:8} {name} {items:,}: "
                        f"{_rate(result['items_per_s'])} items/s, {result['seconds']:.2f} s, "
                        f"peak {result['peak_rss_mb']:.1f} MB"
                    )
    return rows, raw


def render_long(rows: list[Row]) -> str:
    """The memory-flatness table: peak RSS per engine at each size.

    >>> print(render_long([]))
    engine    sizes -> peak RSS MB (items/s)
    """
    lines = ["engine    sizes -> peak RSS MB (items/s)"]
    for engine in ENGINES:
        cells = []
        for row in rows:
            rss, rate = row.rss(engine), row.rate(engine, True)
            if rss is not None:
                cells.append(f"{row.items:,}: {rss:.1f} MB ({_rate(rate)}/s)")
        if cells:
            growth = [rss for row in rows if (rss := row.rss(engine)) is not None]
            extra = f"   growth {growth[-1] - growth[0]:+.1f} MB" if len(growth) > 1 else ""
            lines.append(f"{engine:9} " + "   ".join(cells) + extra)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmarks, print the table(s); 0 unless a run failed.

    >>> main(["--only", "map_filter_map", "--items", "1000", "--repeat", "1",
    ...       "--engines", "headrace"])  # doctest: +ELLIPSIS
    Headrace vs Bytewax ...
    pipeline ...
    map_filter_map ...
    0
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated pipelines (default: all)")
    parser.add_argument("--items", type=int, help="input items for every pipeline")
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine (default 3)")
    parser.add_argument(
        "--engines",
        default="headrace,bytewax,floor",
        help="comma-separated subset of headrace,bytewax,floor (floor: pipelines that have one)",
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help=f"also measure {LONG_PIPELINE} peak RSS at {LONG_SIZES[0]:,} and {LONG_SIZES[1]:,}",
    )
    parser.add_argument("--json", type=Path, help="save raw results and summaries here")
    args = parser.parse_args(argv)

    engines = tuple(e for e in ENGINES if e in args.engines.split(","))
    unknown = set(args.engines.split(",")) - set(ENGINES)
    if unknown or not engines:
        parser.error(f"--engines takes a subset of {','.join(ENGINES)}; got {args.engines!r}")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    explicit = args.only.split(",") if args.only else []
    names = explicit or PIPELINES
    has_windowing = headrace_has_windowing()

    notes: list[str] = []
    plan: Plan = []
    for name in names:
        module = _load(name)
        run_on = engines if hasattr(module, "floor") else tuple(e for e in engines if e != "floor")
        if module.NEEDS_WINDOWING and not has_windowing:
            if name not in explicit:
                notes.append(f"skipped {name}: headrace.operators.windowing does not import yet")
                continue
            run_on = tuple(e for e in run_on if e not in ("headrace", "floor"))
            notes.append(f"{name}: Bytewax only, headrace.operators.windowing does not import yet")
        if run_on:
            plan.append((name, args.items or module.DEFAULT_ITEMS, module.TARGET, run_on))

    long_plan: Plan = []
    if args.long:
        run_on = tuple(e for e in engines if e != "floor")
        if not has_windowing:
            run_on = tuple(e for e in run_on if e != "headrace")
        if not has_windowing:
            notes.append("--long: Bytewax only, headrace.operators.windowing does not import yet")
        target = _load(LONG_PIPELINE).TARGET
        long_plan = [(LONG_PIPELINE, size, target, run_on) for size in LONG_SIZES if run_on]

    pythons: dict[str, Path | str] = {"headrace": sys.executable, "floor": sys.executable}
    if "bytewax" in engines:
        pythons["bytewax"] = bytewax_python()

    started = time.time()
    rows, raw = run_rows(plan, pythons, args.repeat)
    long_rows, long_raw = run_rows(long_plan, pythons, 1)
    elapsed = time.time() - started

    print(
        f"Headrace vs Bytewax {BYTEWAX_VERSION}, single worker, best of {args.repeat} "
        f"(median in parentheses); {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"took {elapsed:.0f} s"
    )
    print(render_table(rows))
    if long_rows:
        print(f"\nMemory flatness ({LONG_PIPELINE}, one run each):")
        print(render_long(long_rows))
    failed = False
    for row in rows + long_rows:
        if len(row.counts()) > 1:
            notes.append(f"{row.pipeline}: engines disagree on output count {sorted(row.counts())}")
        for err in row.errors():
            failed = True
            notes.append(f"{row.pipeline} failed on {err}")
    for note in notes:
        print(f"note: {note}")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "machine": {
                        "cpus": os.cpu_count(),
                        "platform": platform.platform(),
                        "python": platform.python_version(),
                    },
                    "args": {k: _jsonable(v) for k, v in vars(args).items()},
                    "summary": [row.summary() for row in rows],
                    "long_summary": [row.summary() for row in long_rows],
                    "results": raw + long_raw,
                    "notes": notes,
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
