"""Tests of the Kubernetes operator (`headrace_operator`, operator/): spec, plan, status,
manifests, CRD, autoscaler. Not `tests/operators/`, which tests dataflow operators."""
