"""Tests of the dataflow operators (`headrace.operators`): stateless, stateful, join,
async, state TTL, error policies and dead letters."""
