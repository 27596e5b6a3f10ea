"""The Python examples in docs/ run (each page's blocks in order, as one script)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
RUNNABLE = ["operators.md"]


@pytest.mark.parametrize("page", RUNNABLE)
def test_doc_examples_run(page: str) -> None:
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{page} has no python example"
    exec(compile("\n".join(blocks), str(DOCS / page), "exec"), {"__name__": "doc_example"})
