"""Tests of sources and sinks: `headrace.inputs`, `headrace.outputs` and
`headrace.connectors` (files, stdio, demo, Redis Streams, Kafka)."""
