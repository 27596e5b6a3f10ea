"""Tests of the public surface: `headrace.dataflow`, the runner and CLI (`headrace.run`),
`headrace.testing`, `headrace.visualize`, the `bytewax` alias and its errors, docstrings,
the docs' and the examples' code."""
