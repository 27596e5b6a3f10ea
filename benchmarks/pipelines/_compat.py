"""Import shim: the same pipeline code runs on Headrace or on Bytewax 0.21.

``BENCH_ENGINE=bytewax|headrace`` (default ``headrace``) picks the package;
every name a pipeline needs is re-exported under its Bytewax name, so a
pipeline module reads like a plain Bytewax program. ``win`` is the
windowing module, or ``None`` when the engine has none.

>>> ENGINE in ("headrace", "bytewax")
True
>>> callable(run_main) and hasattr(op, "map")
True
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

ENGINE = os.environ.get("BENCH_ENGINE", "headrace")
if ENGINE not in ("headrace", "bytewax"):
    msg = f"BENCH_ENGINE must be 'headrace' or 'bytewax'; got {ENGINE!r}"
    raise ValueError(msg)

# importlib (not `import ... as`) so both packages bind the same names
# without redefinition, and the venv running Bytewax never imports Headrace.
op: Any = importlib.import_module(f"{ENGINE}.operators")
_dataflow = importlib.import_module(f"{ENGINE}.dataflow")
_inputs = importlib.import_module(f"{ENGINE}.inputs")
_outputs = importlib.import_module(f"{ENGINE}.outputs")
_testing = importlib.import_module(f"{ENGINE}.testing")

Dataflow: Any = _dataflow.Dataflow
FixedPartitionedSource: Any = _inputs.FixedPartitionedSource
StatefulSourcePartition: Any = _inputs.StatefulSourcePartition
DynamicSource: Any = _inputs.DynamicSource
StatelessSourcePartition: Any = _inputs.StatelessSourcePartition
DynamicSink: Any = _outputs.DynamicSink
StatelessSinkPartition: Any = _outputs.StatelessSinkPartition
run_main: Any = _testing.run_main


def _load_windowing() -> ModuleType | None:
    name = f"{ENGINE}.operators.windowing"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Only a missing module means "no windowing"; a broken one must fail loudly.
        if exc.name != name:
            raise
        return None


win: Any = _load_windowing()

__all__ = [
    "ENGINE",
    "Dataflow",
    "DynamicSink",
    "DynamicSource",
    "FixedPartitionedSource",
    "StatefulSourcePartition",
    "StatelessSinkPartition",
    "StatelessSourcePartition",
    "op",
    "run_main",
    "win",
]
