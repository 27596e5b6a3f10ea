#!/usr/bin/env bash
# One command to bring the end-to-end cluster up, one to tear it down:
#   tests/e2e/cluster.sh up          # prints `export KUBECONFIG=... PATH=...`
#   eval "$(tests/e2e/cluster.sh env)"
#   tests/e2e/cluster.sh load-image ARCHIVE
#   tests/e2e/cluster.sh status
#   tests/e2e/cluster.sh down        # fails if anything is left behind
# Run tests/e2e/build.sh once first. See docs/e2e.md.
set -euo pipefail
exec python3 "$(cd "$(dirname "$0")" && pwd)/cluster.py" "$@"
