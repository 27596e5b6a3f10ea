"""Tests of the windowing operators (`headrace.operators.windowing`): results, the fused
loops against the general engine, property tests, the combiner."""
