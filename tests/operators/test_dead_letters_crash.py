"""Dead letters are exactly once across kill -9: a real 2-process run, killed, restarted.

`poisoned_counts` is the crash tests' running word count (tests/support/flows/
recovery_flows.py) with poison: a word ``x<n>`` fails a stateless map, a
word ``bad<n>`` fails the stateful count; both go to the dead letters,
written through a `DirSink` like the counts. Every count line and every
dead-letter line is unique, so a loss or a duplicate shows.
"""

from __future__ import annotations

import collections
import os
import random
import time
from pathlib import Path

import pytest

import headrace.operators as op
from headrace.connectors.files import DirSink, DirSource
from headrace.dataflow import Dataflow
from headrace.errors import DeadLetter
from headrace.recovery import init_db_dir
from tests.support.runs import launch, run_with_kills

ROOT = Path(__file__).resolve().parents[2]
POISONED = "tests.operators.test_dead_letters_crash:poisoned_counts()"


def _slow(batch: list[str]) -> list[str]:
    time.sleep(float(os.environ.get("HR_SLOW", "0")))
    return batch


def _check(word: str) -> str:
    if word.startswith("x"):
        raise ValueError(f"poison {word}")
    return word


def _count(state: int | None, word: str) -> tuple[int, int]:
    if word.startswith("bad"):
        raise KeyError(word)
    n = (state or 0) + 1
    return n, n


def _dead_line(d: DeadLetter) -> tuple[str, str]:
    return (d.item, f"{d.step_id} {d.key} {d.item} {d.exc_type}")


def poisoned_counts() -> Dataflow:
    """The flow the processes run.

    ``python -m headrace.run tests.operators.test_dead_letters_crash:poisoned_counts()``
    """
    flow = Dataflow("dl_crash")
    lines = op.input("lines", flow, DirSource(Path(os.environ["HR_IN"]), batch_size=20))
    lines = op.flat_map_batch("slow", lines, _slow)
    words = op.flat_map("split", lines, str.split)
    words = op.map("check", words, _check, on_error="dead_letter")
    keyed = op.key_on("key", words, lambda w: w)
    counts = op.stateful_map("count", keyed, _count, on_error="dead_letter")
    out = op.map("line", counts, lambda kv: (kv[0], f"{kv[0]} {kv[1]}"))
    op.output("out", out, DirSink(Path(os.environ["HR_OUT"]), 3))
    dead = op.map("dead_line", op.dead_letters("dead_letters", flow), _dead_line)
    op.output("dead_out", dead, DirSink(Path(os.environ["HR_DL"]), 2))
    return flow


def _write_input(d: Path) -> tuple[dict[str, int], set[str]]:
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    counts: collections.Counter[str] = collections.Counter()
    dead: set[str] = set()
    poison = 0
    for f in range(4):
        rows = []
        for i in range(1000):
            words = [f"w{rng.randrange(60)}" for _ in range(rng.randrange(1, 6))]
            counts.update(words)
            if i % 37 == 0:
                poison += 1
                words.append(f"x{poison}")
                dead.add(f"dl_crash.check None x{poison} ValueError")
            if i % 53 == 0:
                poison += 1
                words.insert(0, f"bad{poison}")
                dead.add(f"dl_crash.count bad{poison} bad{poison} KeyError")
            rows.append(" ".join(words))
        (d / f"in-{f}.txt").write_text("\n".join(rows) + "\n")
    return dict(counts), dead


def _read(out_dir: Path) -> list[str]:
    return [line for f in sorted(out_dir.iterdir()) for line in f.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_poison_items_reach_the_dead_letters_exactly_once_across_kill_9(tmp_path: Path, seed: int) -> None:
    counts, dead = _write_input(tmp_path / "in")
    init_db_dir(tmp_path / "state", 3)
    env = dict(os.environ)
    env.update(
        {
            "HR_IN": str(tmp_path / "in"),
            "HR_OUT": str(tmp_path / "out"),
            "HR_DL": str(tmp_path / "dead"),
            "HR_SLOW": "0.03",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "runtime"), env.get("PYTHONPATH", "")]),
        }
    )
    args = ["-p", "2", "-r", str(tmp_path / "state"), "--epoch-interval", "0.1"]
    rng = random.Random(seed)
    assert (
        run_with_kills(lambda: launch(args, env, POISONED), tmp_path / "out", rng, (20, 400), timeout=180)
        >= 1
    )
    seen: dict[str, list[int]] = collections.defaultdict(list)
    for line in _read(tmp_path / "out"):
        word, n = line.split()
        seen[word].append(int(n))
    assert {w: ns for w, ns in seen.items()} == {w: list(range(1, n + 1)) for w, n in counts.items()}
    dead_lines = _read(tmp_path / "dead")
    assert sorted(dead_lines) == sorted(dead)  # each poison item once: none lost, none twice
