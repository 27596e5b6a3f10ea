"""(b) Word count: lines of 10 words -> flat_map split -> key_on -> map_value 1 -> reduce_final.

The vocabulary is a fixed 1000 words, so the final output is one count per
word; ``items`` counts input lines (each line is 10 words).

>>> from _common import CountingSink
>>> from _compat import run_main
>>> sink = CountingSink(); run_main(build(2000, sink)); sink.count
1000
"""

from __future__ import annotations

import random
from typing import Any

from _common import CountingSink, GeneratedSource
from _compat import Dataflow, op

DESCRIPTION = "lines of 10 words -> flat_map split -> key_on -> map_value 1 -> reduce_final +"
DEFAULT_ITEMS = 300_000
TARGET = 2.0
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


def build(n: int, sink: CountingSink) -> Any:
    """The dataflow over ``n`` input lines, writing ``(word, count)`` into ``sink``.

    >>> from _common import CountingSink
    >>> type(build(10, CountingSink())).__name__
    'Dataflow'
    """
    flow = Dataflow("wordcount")
    lines = op.input("inp", flow, GeneratedSource(n, _batch))
    words = op.flat_map("split", lines, str.split)
    keyed = op.key_on("key", words, lambda w: w)
    ones = op.map_value("one", keyed, lambda _w: 1)
    counts = op.reduce_final("sum", ones, lambda a, b: a + b)
    op.output("out", counts, sink)
    return flow
