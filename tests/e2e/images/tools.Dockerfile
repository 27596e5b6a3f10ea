# Redis and Prometheus for the end-to-end suite, over the same Debian base as
# the Headrace image (no image registry is needed): redis-server from
# Debian's packages, Prometheus as build.sh built it (Debian's package lacks
# Kubernetes service discovery). The build context is assembled by the
# suite's fixtures: this file plus the `prometheus` binary.
# Used as the chart's demo Redis image (redis.image), as the in-cluster
# Prometheus that finds the pods through the API server, and as the pod that
# reads the wordcount output volume.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# policy-rc.d keeps the package's maintainer scripts from starting a daemon
# inside the build (which shares the build host's network).
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /usr/sbin/policy-rc.d \
 && redis-server --version
COPY prometheus /usr/local/bin/prometheus
RUN prometheus --version
USER 65534:65534
