"""Tests of the Helm chart (helm/headrace): rendering, RBAC, values, and its dashboards
and alert rules against a real Prometheus."""
