"""The Headrace Kubernetes operator (kopf): `Dataflow` resources become worker pods."""
