#!/usr/bin/env bash
# Builds the image every pod of the end-to-end suite runs, without Docker and
# without an image registry:
#   1. a Debian base (debootstrap minbase + python3, pip, venv) made from
#      Debian's packages, cached as a root file system tarball;
#   2. that tarball imported with buildah as the base image
#      localhost/headrace-e2e/base:<suite> (FROM scratch + ADD);
#   3. the project's Dockerfile (or --dockerfile FILE) built with
#      --build-arg BASE_IMAGE=<that base>, exactly as a user builds it over the
#      public Python image;
#   4. the result written as a docker-archive that containerd imports
#      (`cluster.sh load-image`, or `--load` here when a cluster is up).
#
# Usage: tests/e2e/image.sh [--dockerfile FILE] [--context DIR] [--tag NAME]
#                           [--build-arg K=V]... [--load]
# Prints the archive path on stdout (last line).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=versions.sh
. "$HERE/versions.sh"

log() { printf '[e2e image %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

dockerfile=$ROOT/Dockerfile context=$ROOT tag=localhost/headrace:e2e load=0
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --dockerfile) dockerfile=$2; shift 2 ;;
    --context) context=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --build-arg) extra+=(--build-arg "$2"); shift 2 ;;
    --load) load=1; shift ;;
    *) die "unknown argument $1 (see the usage at the top of $0)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "run as root (debootstrap and buildah need it)"
[ -f "$dockerfile" ] || die "no Dockerfile at $dockerfile"
for c in buildah debootstrap; do command -v $c >/dev/null || die "$c is missing: run tests/e2e/build.sh"; done

B=(buildah --root "$E2E_BUILDAH_ROOT/storage-$E2E_BUILDAH_DRIVER" --runroot "$E2E_BUILDAH_ROOT/run" --storage-driver "$E2E_BUILDAH_DRIVER")
base_dir=$E2E_CACHE/base
rootfs=$base_dir/debian-$DEBIAN_SUITE-python3.tar.gz
base_tag=localhost/headrace-e2e/base:$DEBIAN_SUITE
mkdir -p "$base_dir" "$E2E_CACHE/images"

# The mirror this machine's apt already uses.
mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

start=$SECONDS
# Each rebuild after a source change leaves the previous image's layers
# behind; past a few GB, drop the images nothing refers to any more.
if [ -d "$E2E_BUILDAH_ROOT" ] && [ "$(du -s --block-size=1G "$E2E_BUILDAH_ROOT" | cut -f1)" -gt 6 ]; then
  log "buildah storage over 6 GB: removing unused images"
  "${B[@]}" rmi --prune >/dev/null 2>&1 || true
fi
if [ ! -f "$rootfs" ]; then
  log "debootstrap $DEBIAN_SUITE (minbase + python3) from $mirror"
  work=$(mktemp -d "$base_dir/rootfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    "$DEBIAN_SUITE" "$work/root" "$mirror" > "$base_dir/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $base_dir/debootstrap.log"
  # Like the public python:3.x-slim images: pip may install into the system
  # Python, and no package caches or lists are kept.
  rm -f "$work"/root/usr/lib/python3*/EXTERNALLY-MANAGED
  rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/* "$work"/root/var/log/*
  tar -C "$work/root" --numeric-owner -czf "$work/rootfs.tar.gz" .
  mv "$work/rootfs.tar.gz" "$rootfs"
  rm -rf "$work"
  trap - EXIT
  log "base root file system: $(du -h "$rootfs" | cut -f1) in $((SECONDS - start)) s"
fi

# Certificate authorities this machine added to its own trust store (an
# egress proxy's, a company's) go into the base too, or pip cannot reach PyPI
# from inside the build.
rm -rf "$base_dir/extra-ca" && mkdir -p "$base_dir/extra-ca"
cp /usr/local/share/ca-certificates/*.crt "$base_dir/extra-ca/" 2>/dev/null || true
ca_sum=$(cat "$base_dir"/extra-ca/*.crt 2>/dev/null | sha256sum | cut -c1-16)
if ! "${B[@]}" inspect --type image "$base_tag" >/dev/null 2>&1 || [ "$rootfs" -nt "$base_dir/imported" ] \
    || [ "$(cat "$base_dir/imported" 2>/dev/null)" != "$ca_sum" ]; then
  log "importing the base as $base_tag"
  cat > "$base_dir/Containerfile" <<EOF
FROM scratch
ADD $(basename "$rootfs") /
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV LANG=C.UTF-8
CMD ["python3"]
EOF
  "${B[@]}" bud -q --isolation chroot --pull=never -f "$base_dir/Containerfile" -t "$base_tag" "$base_dir" >/dev/null
  echo "$ca_sum" > "$base_dir/imported"
fi

log "building $tag from $dockerfile over $base_tag"
t=$SECONDS
"${B[@]}" bud --isolation chroot --layers --pull=never --network host \
  --build-arg "BASE_IMAGE=$base_tag" "${extra[@]}" -f "$dockerfile" -t "$tag" "$context" >&2 \
  || die "buildah bud of $dockerfile failed (log above)"
log "built $tag in $((SECONDS - t)) s"

archive=$E2E_CACHE/images/$(echo "$tag" | tr '/:' '__').tar
rm -f "$archive"
"${B[@]}" push -q "$tag" "docker-archive:$archive:$tag" >&2
log "wrote $archive ($(du -h "$archive" | cut -f1)) in $((SECONDS - start)) s total"
if [ $load = 1 ]; then
  python3 "$HERE/cluster.py" load-image "$archive"
fi
echo "$archive"
