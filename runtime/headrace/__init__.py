"""Headrace: a Kubernetes-operated stream processor with a Bytewax-compatible API.

Write a dataflow with `headrace.dataflow` and `headrace.operators`; run it
with ``python -m headrace.run mod:flow`` or `headrace.testing.run_main`.

>>> import headrace
>>> headrace.__version__
'0.1.0'
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
