#!/usr/bin/env bash
# Runs every installer under hack/setup.d/ in name order. Each one installs one thing the
# tests need (Debian packages, Go-built binaries into ~/.cache/slm-operator/bin, ...) and
# must be idempotent: a second run on a prepared machine does nothing and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
for script in hack/setup.d/*.sh; do
  [ -e "$script" ] || continue
  echo "==> ${script}"
  bash "$script"
done
