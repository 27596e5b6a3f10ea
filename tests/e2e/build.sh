#!/usr/bin/env bash
# Builds, once per machine, everything the end-to-end cluster runs that Debian
# does not package at a current release: etcd, the Kubernetes control plane and
# node binaries, kubectl, CoreDNS, helm and Prometheus, from their Go modules at the pinned
# versions of versions.sh, with their release versions stamped in (tools read
# them: helm's kubeVersion checks, kubectl's version-skew warning). Also the
# pod sandbox ("pause") image and the Debian packages the node needs.
#
# Idempotent: binaries already in the cache are not rebuilt, so a rerun takes
# seconds. Go builds run at low priority with few parallel jobs, because this
# machine is shared; set E2E_BUILD_JOBS to change the job count.
#
# Usage: tests/e2e/build.sh [PART...]   (packages, chromium and pause need root)
#   PART: packages kubernetes etcd helm coredns prometheus pause chromium (default: all), promtool
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.sh
. "$HERE/versions.sh"

log() { printf '[e2e build %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v go >/dev/null || die "Go is needed (go1.26 or newer) to build the cluster's binaries"

export CGO_ENABLED=0
export GOFLAGS="-p=${E2E_BUILD_JOBS:-2} -buildvcs=false -trimpath"
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
GO="nice -n 15 go"

install_packages() {
  local -a need=()
  local pair cmd pkg
  # "probe:package": a probe is a command name or an absolute path.
  for pair in containerd:containerd runc:runc /usr/lib/cni/bridge:containernetworking-plugins \
      buildah:buildah debootstrap:debootstrap iptables:iptables conntrack:conntrack \
      ip:iproute2 openssl:openssl nsenter:util-linux; do
    cmd=${pair%%:*} pkg=${pair#*:}
    if [[ $cmd == /* ]]; then [ -e "$cmd" ] || need+=("$pkg")
    else command -v "$cmd" >/dev/null || need+=("$pkg"); fi
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing from Debian: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  # The package may start a system containerd; the suite runs its own, on its
  # own socket and state directories, and a second one only wastes memory.
  if pgrep -x containerd >/dev/null && [ -S /run/containerd/containerd.sock ] \
      && ! pgrep -f "containerd --config .*headrace-e2e" >/dev/null; then
    log "note: a system containerd is running; the suite does not use it"
  fi
}

# Chromium (Debian's package), the headless browser the console step drives.
# Its .debs (~80 MB with what it depends on) are kept in the suite's cache, so
# a machine that loses the package reinstalls it without downloading again.
install_chromium() {
  if command -v chromium >/dev/null; then log "chromium: installed"; return; fi
  local debs=$E2E_CACHE/debs
  mkdir -p "$debs/partial"
  log "chromium: installing Debian's package (downloads cached in $debs)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -o APT::Sandbox::User=root \
      -o Dir::Cache::archives="$debs" chromium >/dev/null
}

# Release date of a module version, used as the reproducible build date.
module_time() {
  (cd "$1" && go list -m -json "$2" | sed -n 's/.*"Time": "\(.*\)".*/\1/p' | head -1)
}

build_kubernetes() {
  local -a cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
  local -a missing=()
  local c
  for c in "${cmds[@]}"; do [ -x "$E2E_BIN/$c" ] || missing+=("$c"); done
  [ ${#missing[@]} -gt 0 ] || { log "kubernetes $K8S_VERSION: cached"; return; }
  local src=$E2E_DIR/src/kubernetes staging=v0.${K8S_VERSION#v1.}
  mkdir -p "$src"
  if [ ! -f "$src/go.sum" ]; then
    log "kubernetes $K8S_VERSION: resolving modules (staging modules at $staging)"
    # k8s.io/kubernetes requires its staging modules at v0.0.0 with local
    # replace lines that a consumer does not inherit: point each at its tag.
    local gomod
    gomod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    {
      echo "module headrace.dev/e2e/kubernetes"
      echo
      echo "go $(sed -n 's/^go //p' "$gomod")"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      awk '$2 == "v0.0.0" && $1 ~ /^k8s\.io\// { print "\t" $1 " => " $1 " '"$staging"'" }' "$gomod"
      echo ")"
    } > "$src/go.mod"
    {
      echo "//go:build tools"
      echo
      echo "// Package tools pins the commands this module builds."
      echo "package tools"
      echo
      echo "import ("
      for c in "${cmds[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
      echo ")"
    } > "$src/tools.go"
    (cd "$src" && $GO mod tidy) || { rm -f "$src/go.sum"; die "go mod tidy failed in $src"; }
  fi
  local major=${K8S_VERSION#v} when ldflags="-s -w" p key val
  major=${major%%.*}
  local minor=${K8S_VERSION#v*.}
  minor=${minor%%.*}
  when=$(module_time "$src" k8s.io/kubernetes)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for key in gitVersion=$K8S_VERSION gitMajor=$major gitMinor=$minor gitTreeState=clean buildDate=$when; do
      ldflags+=" -X $p.$key"
    done
  done
  log "kubernetes $K8S_VERSION: building ${missing[*]}"
  local -a pkgs=()
  for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  mkdir -p "$E2E_BIN"
  (cd "$src" && $GO build -ldflags "$ldflags" -o "$E2E_BIN/" "${pkgs[@]}")
}

build_etcd() {
  [ -x "$E2E_BIN/etcd" ] && { log "etcd $ETCD_VERSION: cached"; return; }
  # etcd's own go.mod has replace lines, so `go install pkg@version` refuses
  # it; a scratch module that requires the server module builds it.
  local src=$E2E_DIR/src/etcd
  mkdir -p "$src"
  if [ ! -f "$src/go.sum" ]; then
    log "etcd $ETCD_VERSION: resolving modules"
    printf 'module headrace.dev/e2e/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$src/go.mod"
    printf '//go:build tools\n\n// Package tools pins the commands this module builds.\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > "$src/tools.go"
    (cd "$src" && $GO mod tidy) || { rm -f "$src/go.sum"; die "go mod tidy failed in $src"; }
  fi
  log "etcd $ETCD_VERSION: building"
  (cd "$src" && $GO build -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
      -o "$E2E_BIN/etcd" go.etcd.io/etcd/server/v3)
}

build_helm() {
  [ -x "$E2E_BIN/helm" ] && { log "helm $HELM_VERSION: cached"; return; }
  log "helm $HELM_VERSION: building"
  local src=$E2E_DIR/src/helm kmaj kmin clientgo
  mkdir -p "$src"
  # helm's release build stamps the Kubernetes version of its client-go as the
  # default for .Capabilities.KubeVersion and the chart linter.
  clientgo=$(cd "$src" && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" \
      | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' | xargs awk '$1 == "k8s.io/client-go" { print $2 }')
  kmin=${clientgo#v0.}; kmin=${kmin%%.*}; kmaj=1
  local v=helm.sh/helm/v3/internal/version
  (cd "$src" && GOBIN=$E2E_BIN $GO install -ldflags "-s -w -X $v.version=$HELM_VERSION -X $v.metadata= \
      -X $v.gitTreeState=clean \
      -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$kmaj -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kmin \
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$kmaj -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kmin" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
}

build_coredns() {
  [ -x "$E2E_BIN/coredns" ] && { log "coredns $COREDNS_VERSION: cached"; return; }
  log "coredns $COREDNS_VERSION: building"
  local src=$E2E_DIR/src/coredns
  mkdir -p "$src"
  (cd "$src" && GOBIN=$E2E_BIN $GO install \
      -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
      "github.com/coredns/coredns@$COREDNS_VERSION")
}

# prometheus (the e2e cluster's) and promtool (the unit tests' rule checks;
# not part of the default build): two commands of one module, built alike.
build_prometheus_cmd() {
  local cmd=$1 note=${2:-}
  [ -x "$E2E_BIN/$cmd" ] && { log "$cmd $PROMETHEUS_VERSION: cached"; return; }
  log "$cmd $PROMETHEUS_VERSION: building$note"
  local src=$E2E_DIR/src/prometheus v=github.com/prometheus/common/version rest release
  mkdir -p "$src"
  rest=${PROMETHEUS_VERSION#v0.3}
  release=3.$((10#${rest%%.*})).${rest#*.}
  # The plugin build tags leave out the cloud providers' discovery (and their
  # large SDKs); the web UI's assets are not embedded: the suite uses the API.
  (cd "$src" && GOBIN=$E2E_BIN $GO install -tags remove_all_sd,enable_kubernetes_sd \
      -ldflags "-s -w -X $v.Version=$release -X $v.Revision=$PROMETHEUS_VERSION -X $v.Branch=release" \
      "github.com/prometheus/prometheus/cmd/$cmd@$PROMETHEUS_VERSION")
}

build_prometheus() { build_prometheus_cmd prometheus " (Kubernetes service discovery only)"; }
build_promtool() { build_prometheus_cmd promtool; }

build_pause() {
  [ -f "$E2E_DIR/pause.tar" ] && { log "pause image: cached"; return; }
  log "pause image: building"
  local work
  work=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  (cd "$HERE/pause" && $GO build -ldflags "-s -w" -o "$work/pause" .)
  local b=(buildah --root "$E2E_BUILDAH_ROOT/storage-$E2E_BUILDAH_DRIVER" --runroot "$E2E_BUILDAH_ROOT/run" --storage-driver "$E2E_BUILDAH_DRIVER")
  local ctr
  ctr=$("${b[@]}" from scratch)
  "${b[@]}" copy "$ctr" "$work/pause" /pause >/dev/null
  "${b[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  "${b[@]}" commit -q "$ctr" "$E2E_PAUSE_IMAGE" >/dev/null
  "${b[@]}" rm "$ctr" >/dev/null
  "${b[@]}" push -q "$E2E_PAUSE_IMAGE" "docker-archive:$work/pause.tar:$E2E_PAUSE_IMAGE"
  mv "$work/pause.tar" "$E2E_DIR/pause.tar"
}

start=$SECONDS
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(packages kubernetes etcd helm coredns prometheus pause chromium)
# Only these need root; the unit tests build helm and prometheus here too.
case " ${parts[*]} " in *" packages "*|*" pause "*|*" chromium "*)
  [ "$(id -u)" = 0 ] || die "run as root: it installs packages and builds images for containerd" ;;
esac
mkdir -p "$E2E_BIN"
for part in "${parts[@]}"; do
  case $part in
    packages) install_packages ;;
    chromium) install_chromium ;;
    kubernetes|etcd|helm|coredns|prometheus|promtool|pause) "build_$part" ;;
    *) die "unknown part $part (see the usage at the top of $0)" ;;
  esac
done
log "done in $((SECONDS - start)) s: $E2E_BIN"
"$E2E_BIN/kubectl" version --client 2>/dev/null | head -1 >&2 || true
