# Pinned versions of everything the end-to-end cluster is built from, and the
# cache layout. Sourced by build.sh, image.sh and cluster.sh; cluster.py reads
# the same values by running `bash -c 'source versions.sh; env'`.
# Bumping a version changes E2E_STAMP, so a new cache directory is built next
# to the old one instead of mixing binaries of two releases.
K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
COREDNS_VERSION=v1.15.0
HELM_VERSION=v3.22.0
# Prometheus' Go module version v0.3XX.Y is Prometheus 3.XX.Y. Debian's
# package is built without Kubernetes service discovery, which the suite needs.
PROMETHEUS_VERSION=v0.316.0
# Debian suite of the base image the project's Dockerfile is built over.
DEBIAN_SUITE=bookworm

E2E_CACHE=${HEADRACE_E2E_CACHE:-$HOME/.cache/headrace-e2e}
E2E_STAMP=k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_coredns-${COREDNS_VERSION}_helm-${HELM_VERSION}_prom-${PROMETHEUS_VERSION}
E2E_DIR=$E2E_CACHE/$E2E_STAMP
E2E_BIN=$E2E_DIR/bin
# Image storage for buildah, shared by image.sh runs so its layer cache works.
# overlay keeps only each layer's changes; vfs (full copies) is the fallback
# for file systems without overlay support.
E2E_BUILDAH_ROOT=$E2E_CACHE/buildah
E2E_BUILDAH_DRIVER=${HEADRACE_E2E_BUILDAH_DRIVER:-overlay}
E2E_PAUSE_IMAGE=localhost/headrace-e2e/pause:1
export K8S_VERSION ETCD_VERSION COREDNS_VERSION HELM_VERSION PROMETHEUS_VERSION DEBIAN_SUITE
export E2E_CACHE E2E_STAMP E2E_DIR E2E_BIN E2E_BUILDAH_ROOT E2E_BUILDAH_DRIVER E2E_PAUSE_IMAGE
