"""(b) Word count: lines of 10 words -> flat_map split -> key_on -> map_value 1 -> reduce_final.

The vocabulary is a fixed 1000 words, so the final output is one count per
word; ``items`` counts input lines (each line is 10 words).

`floor` is the same count without an engine: a plain Python loop over the
same batches calling the same user functions (`_split`, `_key`, `_one`,
`_add`), what any Python implementation costs at least. `run.py` times it
beside the dataflow and checks that both give the same counts.

>>> from _common import CollectingSink, CountingSink
>>> from _compat import run_main
>>> sink = CountingSink(); run_main(build(2000, sink)); sink.count
1000
>>> engine, plain = CollectingSink(), CollectingSink()
>>> run_main(build(150, engine)); floor(150, plain)
>>> sorted(engine.items) == plain.items, len(plain.items), sum(c for _, c in plain.items)
(True, 1000, 1500)
"""

from __future__ import annotations

import random
from typing import Any

from _common import BATCH_SIZE, CountingSink, GeneratedSource
from _compat import Dataflow, op

DESCRIPTION = "lines of 10 words -> flat_map split -> key_on -> map_value 1 -> reduce_final +"
DEFAULT_ITEMS = 300_000
TARGET = 2.0
# Headrace's time at most this many times the plain loop's (`floor`).
FLOOR_TARGET = 1.3
NEEDS_WINDOWING = False

_VOCAB_SIZE = 1000
_WORDS_PER_LINE = 10


def _vocabulary() -> list[str]:
    rng = random.Random(1000)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < _VOCAB_SIZE:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 9))))
    return sorted(words)


def _lines() -> list[str]:
    vocab = _vocabulary()
    # Every word appears in the first 100 lines, so any run of >= 100 lines
    # counts the whole vocabulary and the output size is fixed.
    tail = vocab * 9
    random.Random(10).shuffle(tail)
    words = vocab + tail
    return [" ".join(words[i : i + _WORDS_PER_LINE]) for i in range(0, len(words), _WORDS_PER_LINE)]


_LINES = _lines()


def _batch(start: int, size: int) -> list[str]:
    lines = _LINES
    count = len(lines)
    return [lines[i % count] for i in range(start, start + size)]


# The user functions, shared by the dataflow and the floor.
_split = str.split


def _key(word: str) -> str:
    return word


def _one(_word: str) -> int:
    return 1


def _add(a: int, b: int) -> int:
    return a + b


def build(n: int, sink: CountingSink) -> Any:
    """The dataflow over ``n`` input lines, writing ``(word, count)`` into ``sink``.

    >>> from _common import CountingSink
    >>> type(build(10, CountingSink())).__name__
    'Dataflow'
    """
    flow = Dataflow("wordcount")
    lines = op.input("inp", flow, GeneratedSource(n, _batch))
    words = op.flat_map("split", lines, _split)
    keyed = op.key_on("key", words, _key)
    ones = op.map_value("one", keyed, _one)
    counts = op.reduce_final("sum", ones, _add)
    op.output("out", counts, sink)
    return flow


def floor(n: int, sink: Any) -> None:
    """The same counts without an engine, written to ``sink`` in word order.

    The source's batches, then per word the user functions and one dict
    update: what the dataflow cannot do with less.

    >>> from _common import CollectingSink
    >>> sink = CollectingSink(); floor(100, sink); len(sink.items), sum(c for _, c in sink.items)
    (1000, 1000)
    """
    write = sink.build("out", 0, 1).write_batch
    split, key, one, add = _split, _key, _one, _add
    counts: dict[str, int] = {}
    get = counts.get
    for start in range(0, n, BATCH_SIZE):
        for line in _batch(start, min(BATCH_SIZE, n - start)):
            for word in split(line):
                k = key(word)
                v = one(word)
                old = get(k)
                counts[k] = v if old is None else add(old, v)
    write(sorted(counts.items()))
