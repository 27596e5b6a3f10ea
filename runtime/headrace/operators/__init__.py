"""All built-in operators, with the Bytewax 0.21 names and semantics.

Import as ``import headrace.operators as op``. Windowing lives in
`headrace.operators.windowing`; small helpers in `headrace.operators.helpers`.

>>> import headrace.operators as op
>>> from headrace.dataflow import Dataflow
>>> from headrace.testing import TestingSource, TestingSink, run_main
>>> flow = Dataflow("wordcount")
>>> lines = op.input("lines", flow, TestingSource(["a b", "b"]))
>>> words = op.flat_map("split", lines, str.split)
>>> counts = op.count_final("count", words, lambda w: w)
>>> out = []
>>> op.output("out", counts, TestingSink(out))
>>> run_main(flow)
>>> sorted(out)
[('a', 1), ('b', 2)]

`join`'s modes are the ``Literal`` types ``JoinInsertMode`` and ``JoinEmitMode``:

>>> import typing
>>> typing.get_args(op.JoinInsertMode), typing.get_args(op.JoinEmitMode)
(('first', 'last', 'product'), ('complete', 'final', 'running'))
"""

from headrace.dataflow import Dataflow, KeyedStream, Stream, f_repr, operator
from headrace.inputs import Source
from headrace.operators._async import map_async, map_value_async
from headrace.operators._core import (
    BranchOut,
    StatefulBatchLogic,
    _noop,
    branch,
    flat_map_batch,
    input,
    inspect_debug,
    merge,
    output,
    redistribute,
    stateful_batch,
)
from headrace.operators._dead_letters import dead_letters
from headrace.operators._stateful import (
    JoinEmitMode,
    JoinInsertMode,
    StatefulLogic,
    collect,
    count_final,
    fold_final,
    join,
    max_final,
    min_final,
    reduce_final,
    stateful,
    stateful_flat_map,
    stateful_map,
)
from headrace.operators._stateless import (
    TTLCache,
    enrich_cached,
    filter,
    filter_map,
    filter_map_value,
    filter_value,
    flat_map,
    flat_map_value,
    flatten,
    inspect,
    key_on,
    key_rm,
    map,
    map_value,
    raises,
)
from headrace.outputs import DynamicSink, Sink, StatelessSinkPartition

__all__ = [
    "BranchOut",
    "Dataflow",
    "DynamicSink",
    "JoinEmitMode",
    "JoinInsertMode",
    "KeyedStream",
    "Sink",
    "Source",
    "StatefulBatchLogic",
    "StatefulLogic",
    "StatelessSinkPartition",
    "Stream",
    "TTLCache",
    "_noop",
    "branch",
    "collect",
    "count_final",
    "dead_letters",
    "enrich_cached",
    "f_repr",
    "filter",
    "filter_map",
    "filter_map_value",
    "filter_value",
    "flat_map",
    "flat_map_batch",
    "flat_map_value",
    "flatten",
    "fold_final",
    "input",
    "inspect",
    "inspect_debug",
    "join",
    "key_on",
    "key_rm",
    "map",
    "map_async",
    "map_value",
    "map_value_async",
    "max_final",
    "merge",
    "min_final",
    "operator",
    "output",
    "raises",
    "redistribute",
    "reduce_final",
    "stateful",
    "stateful_batch",
    "stateful_flat_map",
    "stateful_map",
]
