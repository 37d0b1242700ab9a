#!/usr/bin/env bash
# What the runtime tests need beyond Python packages: promtool (Debian package prometheus).
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool
