"""Tests of the engine (`headrace._engine`): planning, fusion, the exchange, order, workers
and processes, recovery stores and fencing, errors, metrics and tracing."""
