"""Count the words of a text file.

    python -m headrace.run examples/wordcount.py:flow

Reads ``WORDCOUNT_INPUT`` (default: ``data/wordcount.txt`` next to this
file) line by line, lowercases each line, splits it into words and counts
each word once the input has ended. Prints ``word: count`` lines, or writes
them to the file ``WORDCOUNT_OUTPUT`` when that is set (that file is
rewritten exactly once, even across a crash and resume).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import headrace.operators as op
from headrace.connectors.files import FileSink, FileSource
from headrace.connectors.stdio import StdOutSink
from headrace.dataflow import Dataflow

INPUT = Path(os.environ.get("WORDCOUNT_INPUT") or Path(__file__).parent / "data" / "wordcount.txt")
OUTPUT = os.environ.get("WORDCOUNT_OUTPUT") or None

# A word is a run of letters, with inner apostrophes ("miller's").
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def tokenize(line: str) -> list[str]:
    """Split a line into words, dropping punctuation and digits."""
    return _WORD.findall(line)


def format_count(word_count: tuple[str, int]) -> tuple[str, str]:
    """Turn ``(word, count)`` into ``(word, "word: count")``, keyed for the file sink."""
    word, count = word_count
    return word, f"{word}: {count}"


flow = Dataflow("wordcount")
lines = op.input("read", flow, FileSource(INPUT))
lowered = op.map("lowercase", lines, str.lower)
words = op.flat_map("tokenize", lowered, tokenize)
counts = op.count_final("count", words, lambda word: word)
formatted = op.map("format", counts, format_count)
if OUTPUT is not None:
    op.output("out", formatted, FileSink(Path(OUTPUT)))
else:
    op.output("out", op.key_rm("unkey", formatted), StdOutSink())
